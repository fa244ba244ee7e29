// The executors, loaded only when a command runs one: libloom_cpu.so (the CPU reference trainer,
// which links Open MPI: `execute --device cpu`) and libloom_cuda.so (which maps the CUDA runtime
// and cuBLASLt: `execute --device cuda`, `calibrate`). `loom` itself links neither, so `plan`,
// `predict` and the rest build on a machine without them (`make plan`) and start without mapping
// them. Entry tables: executor/backend_entry.h, executor/cuda/backend_entry.h.
#pragma once
#include <string>

#include "executor/backend_entry.h"
#include "executor/cuda/backend_entry.h"
#include "sim/expected.hpp"

namespace loom::cli {

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

// LOOM_CPU_MODULE_CONFIGURED, LOOM_CUDA_MODULE_CONFIGURED: set by planner/CMakeLists.txt.
inline constexpr BackendModule kCpuModule{"libloom_cpu.so", LOOM_CPU_BACKEND_SYMBOL, "the CPU executor", "loom_cpu",
                                          "Open MPI (libopenmpi-dev)", LOOM_CPU_MODULE_CONFIGURED != 0};
inline constexpr BackendModule kCudaModule{"libloom_cuda.so", LOOM_CUDA_BACKEND_SYMBOL, "the CUDA backend", "loom_cuda",
                                           "nvcc or Open MPI", LOOM_CUDA_MODULE_CONFIGURED != 0};

// Loads the module (once per process; it stays loaded) and returns its entry table, checked to be
// of this loom's LOOM_BACKEND_ABI. A missing module, one that does not load (no driver, no
// libcudart) or one of another version is an error naming `flag`.
Expected<const LoomCpuBackend*> load_cpu_backend(const std::string& flag);
Expected<const LoomCudaBackend*> load_cuda_backend(const std::string& flag);

}  // namespace loom::cli
