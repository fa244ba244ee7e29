// libloom_cuda.so's entry table (executor/cuda/backend_entry.h): the CUDA executor and the
// calibration, behind plain C calls. No C++ exception crosses the boundary.
#include "executor/cuda/backend_entry.h"

#include <cstdio>
#include <exception>

#include "executor/cuda/calibrate.cuh"
#include "executor/cuda/cuda_executor.hpp"

namespace {

// Any exception that would cross into `loom` is a bug: one line and a distinct exit code.
template <class F>
int guarded(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom: %s: internal error: %s\n", what, e.what());
  } catch (...) {
    std::fprintf(stderr, "loom: %s: internal error\n", what);
  }
  return 4;
}

int execute_entry(const LoomCudaExecuteArgs* a) {
  return guarded("execute --device cuda", [a] {
    loom::cuda::CudaOptions c;
    c.steps = a->steps;
    c.seed = a->seed;
    c.progress = a->progress != 0;
    if (a->lr > 0) c.lr = a->lr;
    return loom::cuda::execute_cuda_command(a->plan_path, c, a->report_path, a->trace_path);
  });
}

int calibrate_entry(const LoomCudaCalibrateArgs* a) {
  return guarded("calibrate", [a] {
    loom::cuda::CalibrateOptions c;
    c.out = a->out;
    c.name = a->name;
    c.quick = a->quick != 0;
    c.progress = a->progress != 0;
    return loom::cuda::calibrate_command(c);
  });
}

constexpr LoomCudaBackend kBackend{LOOM_CUDA_BACKEND_ABI, execute_entry, calibrate_entry};

}  // namespace

extern "C" __attribute__((visibility("default"))) const LoomCudaBackend* loom_cuda_backend(void) { return &kBackend; }
