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

// Loads the module (once per process; it stays loaded) and returns its entry table, checked to be
// of this loom's LOOM_BACKEND_ABI. A missing module, one that does not load (no driver, no
// libcudart) or one of another version is an error naming `flag`.
Expected<const LoomCpuBackend*> load_cpu_backend(const std::string& flag);
Expected<const LoomCudaBackend*> load_cuda_backend(const std::string& flag);

}  // namespace loom::cli
