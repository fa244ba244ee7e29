// `loom` links neither Open MPI nor CUDA: `execute` loads the trainer it runs as a module
// (libloom_cpu.so, libloom_cuda.so) beside the binary, so `make plan` builds `loom` on a machine
// without them. Where the module is missing, `execute` says which and how to build it.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "run_loom.hpp"

namespace {

namespace fs = std::filesystem;

// A fresh folder under the temporary folder, for this process.
fs::path scratch(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("loom_modules_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Runs `exe args`, capturing the exit code, stdout and stderr.
LoomRun run_at(const fs::path& exe, const std::string& args) {
  const fs::path dir = exe.parent_path();
  const std::string cmd = exe.string() + " " + args + " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
  const int status = std::system(cmd.c_str());
  LoomRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp((dir / "out").string());
  r.err = slurp((dir / "err").string());
  return r;
}

size_t count_lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST_CASE("loom links no MPI: the CPU executor is a module, and without it execute says how to build it",
          "[cli][cli-modules]") {
  const fs::path dir = scratch("needed");
  REQUIRE(std::system(("readelf -d " + std::string(LOOM_BIN) + " > " + (dir / "d").string()).c_str()) == 0);
  const std::string needed = slurp((dir / "d").string());
  CHECK(needed.find("NEEDED") != std::string::npos);
  CHECK(needed.find("libmpi") == std::string::npos);
  CHECK(needed.find("libopen-") == std::string::npos);  // libopen-pal, libopen-rte

  // A CPU plan the trainer runs (fp32, unfused attention), and a copy of `loom` with no module
  // beside it: `make plan`'s build, where nothing built libloom_cpu.so.
  const fs::path alone = scratch("alone");
  const std::string plan = (alone / "tiny.json").string();
  REQUIRE(run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/executor/data/tiny-gpt.json "
                   "--cluster cpu-mpi --gpus 1 --global-batch 8 --tp 1 --pp 1 --dtype fp32 --grad-dtype fp32 "
                   "--attention unfused -o " + plan).code == 0);
  fs::copy_file(LOOM_BIN, alone / "loom");
  const LoomRun r = run_at(alone / "loom", "execute " + plan + " --steps 1");
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.rfind("loom: --device: the CPU executor is not available: " + (alone / "libloom_cpu.so").string() +
                        ": no such file",
                    0) == 0);
  CHECK(r.err.find("--target loom_cpu") != std::string::npos);
  CHECK(r.err.find("make test") != std::string::npos);
  CHECK(r.out.empty());
  // The checks `loom` makes before it loads a module still come first, with their own lines.
  const LoomRun steps = run_at(alone / "loom", "execute " + plan + " --steps 0");
  CHECK(steps.code == 2);
  CHECK(steps.err == "loom: --steps: must be >= 1 (got 0)\n");
  const LoomRun missing = run_at(alone / "loom", "execute " + (alone / "none.json").string());
  CHECK(missing.code == 2);
  CHECK(missing.err.find("libloom_cpu.so") == std::string::npos);
  // So do the CPU executor's plan rules (executor/run_checks.hpp check_cpu_plan): a bf16 plan,
  // and ZeRO-3 priced as DeepSpeed 0.3 gathered it, are refused before any module is looked for.
  const std::string bf16 = (alone / "bf16.json").string(), z3 = (alone / "z3.json").string();
  REQUIRE(run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/executor/data/tiny-gpt.json "
                   "--cluster cpu-mpi --gpus 1 --global-batch 8 --tp 1 --pp 1 --attention unfused -o " + bf16).code == 0);
  const LoomRun dtype = run_at(alone / "loom", "execute " + bf16 + " --steps 1");
  CHECK(dtype.code == 2);
  CHECK(dtype.err == "loom: train.dtype: the CPU executor runs fp32: dtype and grad_dtype must be fp32\n");
  REQUIRE(run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/executor/data/tiny-gpt.json "
                   "--cluster cpu-mpi --gpus 2 --global-batch 8 --dp 2 --tp 1 --pp 1 --zero 3 --zero3-gather tensor "
                   "--dtype fp32 --grad-dtype fp32 --attention unfused -o " + z3).code == 0);
  const LoomRun gather = run_at(alone / "loom", "execute " + z3 + " --steps 1");
  CHECK(gather.code == 2);
  CHECK(gather.err == "loom: parallel.zero3_gather: the CPU executor gathers ZeRO-3 weights layer by layer: must be "
                      "layer (got tensor)\n");
  fs::remove_all(alone.parent_path());
}

TEST_CASE("libloom_cpu.so exports its entry table alone and runs a plan's rank without mpirun", "[cli][cli-modules]") {
  const fs::path module = fs::path(LOOM_BIN).parent_path() / "libloom_cpu.so";
  if (!fs::exists(module)) {
    WARN("no " << module.string() << " (a build without Open MPI): nothing to check");
    return;
  }
  const fs::path dir = scratch("exports");
  // Defined dynamic symbols: the entry function, and nothing of loom's or of the static libraries
  // it carries (--exclude-libs). libstdc++ declares namespace std with default visibility, so the
  // typeinfo and function-local statics of std templates the entry instantiates stay (weak).
  const std::string cmd = "nm -D --defined-only " + module.string() + " > " + (dir / "syms").string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::istringstream syms(slurp((dir / "syms").string()));
  std::string address, type, name;
  std::vector<std::string> functions, others;
  while (syms >> address >> type >> name) {
    if (type == "T") functions.push_back(name);
    else if (name.rfind("_ZTISt", 0) != 0 && name.rfind("_ZTSSt", 0) != 0 && name.rfind("_ZTVSt", 0) != 0 &&
             name.rfind("_ZZNSt", 0) != 0)
      others.push_back(name);
  }
  CHECK(functions == std::vector<std::string>{"loom_cpu_backend"});
  CHECK(others.empty());
  // One rank of a 2-rank plan, alone: the module's trainer without MPI starting.
  const std::string plan = (dir / "p2.json").string();
  REQUIRE(run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/executor/data/tiny-gpt.json "
                   "--cluster cpu-mpi --gpus 2 --global-batch 8 --tp 1 --pp 2 --micro-batch 1 --dtype fp32 "
                   "--grad-dtype fp32 --attention unfused -o " + plan).code == 0);
  const LoomRun r = run_loom("execute " + plan + " --emulate-rank 1 --steps 1");
  INFO("stderr: " << r.err);
  CHECK(r.code == 0);
  CHECK(r.err.empty());
  CHECK(r.out.rfind("rank 1 of 2 (emulated): ", 0) == 0);
  fs::remove_all(dir.parent_path());
}
