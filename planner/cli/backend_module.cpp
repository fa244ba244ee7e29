#include "planner/cli/backend_module.hpp"

#include <dlfcn.h>

#include <filesystem>
#include <system_error>
#include <vector>

namespace loom::cli {

namespace {

namespace fs = std::filesystem;

// Where a module is looked up: beside the running executable (/proc/self/exe: the build tree),
// then in ../lib/loom/ from it (an install prefix: bin/loom, lib/loom/libloom_cpu.so).
struct BackendModule {
  const char* file;     // "libloom_cpu.so"
  const char* symbol;   // the one C function it exports, returning its entry table
  const char* what;     // "the CPU executor", in "<flag>: <what> is not available: <why>"
  const char* target;   // its CMake target, for the line that says how to build it
  const char* needs;    // what the configure must find to define that target (when it did not)
  bool configured;      // whether this build's configure found it (then the target exists)
};

// LOOM_CPU_MODULE_CONFIGURED, LOOM_CUDA_MODULE_CONFIGURED: set on this file by planner/CMakeLists.txt.
constexpr BackendModule kCpuModule{"libloom_cpu.so", LOOM_CPU_BACKEND_SYMBOL, "the CPU executor", "loom_cpu",
                                   "Open MPI (libopenmpi-dev)", LOOM_CPU_MODULE_CONFIGURED != 0};
constexpr BackendModule kCudaModule{"libloom_cuda.so", LOOM_CUDA_BACKEND_SYMBOL, "the CUDA backend", "loom_cuda",
                                    "nvcc or Open MPI", LOOM_CUDA_MODULE_CONFIGURED != 0};

// The folder of the running executable; empty without /proc.
fs::path exe_dir() {
  std::error_code ec;
  const auto exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

// Where the module may be, in the order tried: beside the executable, then the install layout.
std::vector<fs::path> module_candidates(const BackendModule& m) {
  const fs::path dir = exe_dir();
  if (dir.empty()) return {m.file};  // no /proc: the dynamic loader's own search path
  return {dir / m.file, dir.parent_path() / "lib" / "loom" / m.file};
}

// How to get the module: the target to build, and first a configure that finds what it needs
// where this build's did not (`make test` does both). In a build tree (a CMakeCache.txt beside
// loom) the commands name its folder.
std::string how_to_build(const BackendModule& m) {
  const fs::path dir = exe_dir();
  std::error_code ec;
  const std::string d = !dir.empty() && fs::exists(dir / "CMakeCache.txt", ec) ? dir.string() : "<build folder>";
  const std::string build = std::string("cmake --build ") + d + " --target " + m.target;
  if (m.configured) return " (build it: " + build + ", or make test)";
  return std::string(" (this build was configured without ") + m.needs + ": install it, configure again (cmake " + d +
         "), then " + build + "; or make test)";
}

// The module's entry function (the symbol's address) and the file it came from.
struct Entry {
  void* function = nullptr;
  std::string path;
};

Expected<Entry> find_entry(const BackendModule& m, const std::string& flag) {
  const std::string rule = std::string(m.what) + " is not available: ";
  std::string why;
  for (const auto& path : module_candidates(m)) {
    std::error_code ec;
    if (path.has_parent_path() && !fs::exists(path, ec)) {
      if (why.empty()) why = path.string() + ": no such file";
      continue;
    }
    // RTLD_LOCAL: the module's copies of loom's static libraries stay its own (Open MPI's
    // components need libmpi global: executor/comm_mpi.cpp promotes it before MPI_Init).
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = ::dlerror();
      return make_error(flag, rule + (e != nullptr ? e : path.string()));
    }
    void* entry = ::dlsym(handle, m.symbol);
    if (entry == nullptr) return make_error(flag, rule + path.string() + " has no " + m.symbol);
    return Entry{entry, path.string()};
  }
  return make_error(flag, rule + why + how_to_build(m));
}

// Calls the entry and checks the table's version (every table starts with abi_version).
template <class Table>
Expected<const Table*> load_table(const BackendModule& m, const std::string& flag) {
  auto entry = find_entry(m, flag);
  if (!entry) return entry.error();
  const Table* table = reinterpret_cast<const Table* (*)()>(entry->function)();
  if (table == nullptr || table->abi_version != LOOM_BACKEND_ABI)
    return make_error(flag, std::string(m.what) + " is not available: " + entry->path +
                                " was built for another loom (entry table version " +
                                std::to_string(table == nullptr ? 0 : table->abi_version) + ", want " +
                                std::to_string(LOOM_BACKEND_ABI) + ")");
  return table;
}

}  // namespace

Expected<const LoomCpuBackend*> load_cpu_backend(const std::string& flag) {
  return load_table<LoomCpuBackend>(kCpuModule, flag);
}

Expected<const LoomCudaBackend*> load_cuda_backend(const std::string& flag) {
  return load_table<LoomCudaBackend>(kCudaModule, flag);
}

}  // namespace loom::cli
