#include "planner/cli/cuda_backend.hpp"

#include <dlfcn.h>

#include <filesystem>
#include <system_error>
#include <vector>

namespace loom::cli {

namespace {

// Where the module may be, in the order tried: beside the executable, then the install layout.
std::vector<std::filesystem::path> module_candidates() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {kCudaModuleName};  // no /proc: the dynamic loader's own search path
  const auto dir = exe.parent_path();
  return {dir / kCudaModuleName, dir.parent_path() / "lib" / "loom" / kCudaModuleName};
}

}  // namespace

Expected<const LoomCudaBackend*> load_cuda_backend(const std::string& flag) {
  const std::string rule = "the CUDA backend is not available: ";
  std::string why;
  for (const auto& path : module_candidates()) {
    std::error_code ec;
    if (path.has_parent_path() && !std::filesystem::exists(path, ec)) {
      if (why.empty()) why = path.string() + ": no such file";
      continue;
    }
    // RTLD_LOCAL: the module's copies of loom's static libraries stay its own.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = ::dlerror();
      return make_error(flag, rule + (e != nullptr ? e : path.string()));
    }
    void* entry = ::dlsym(handle, LOOM_CUDA_BACKEND_SYMBOL);
    if (entry == nullptr) return make_error(flag, rule + path.string() + " has no " + LOOM_CUDA_BACKEND_SYMBOL);
    const LoomCudaBackend* backend = reinterpret_cast<const LoomCudaBackend* (*)()>(entry)();
    if (backend == nullptr || backend->abi_version != LOOM_CUDA_BACKEND_ABI)
      return make_error(flag, rule + path.string() + " was built for another loom (entry table version " +
                                  std::to_string(backend == nullptr ? 0 : backend->abi_version) + ", want " +
                                  std::to_string(LOOM_CUDA_BACKEND_ABI) + ")");
    return backend;
  }
  return make_error(flag, rule + why + " (a build without nvcc has none)");
}

}  // namespace loom::cli
