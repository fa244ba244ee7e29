// The CUDA backend, loaded only when a command needs a GPU (`execute --device cuda`,
// `calibrate`): libloom_cuda.so (built from executor/cuda) maps the CUDA runtime and cuBLASLt,
// hundreds of MB that `plan`, `predict` and the rest never call and would otherwise pay for at
// every start.
#pragma once
#include <string>

#include "executor/cuda/backend_entry.h"
#include "sim/expected.hpp"

namespace loom::cli {

// The module's file name, looked up next to the running executable (/proc/self/exe: the build
// tree), then in ../lib/loom/ from it (an install prefix: bin/loom, lib/loom/libloom_cuda.so).
inline constexpr const char* kCudaModuleName = "libloom_cuda.so";

// Loads the module (once per process; it stays loaded) and returns its entry table. A build
// without CUDA, a missing module or one that does not load (no driver, no libcudart) is an
// error naming `flag`: "<flag>: the CUDA backend is not available: <why>".
Expected<const LoomCudaBackend*> load_cuda_backend(const std::string& flag);

}  // namespace loom::cli
