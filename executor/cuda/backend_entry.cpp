// libloom_cuda.so's entry table (executor/cuda/backend_entry.h): the CUDA executor and the
// calibration, behind plain C calls. No C++ exception crosses the boundary (backend_guard.hpp).
#include "executor/cuda/backend_entry.h"

#include "executor/backend_guard.hpp"
#include "executor/cuda/calibrate.cuh"
#include "executor/cuda/cuda_execute.hpp"

namespace {

// `loom execute --device cuda`: the one trainer on the CUDA compute backend (cuda_execute.hpp).
// It reads the plan file itself (a->plan_path); a->plan_json is the CPU module's.
int execute_entry(const LoomExecuteArgs* a) {
  return loom::exec::guarded_entry("execute --device cuda", [a] {
    loom::cuda::ParallelRunArgs r;
    r.plan_path = a->plan_path;
    r.report_path = a->report_path;
    r.exec.trace_path = a->trace_path;
    r.exec.save_dir = a->save_dir;
    r.exec.resume_dir = a->resume_dir;
    r.exec.weights_out = a->weights_out;
    r.exec.steps = a->steps;
    r.exec.seed = a->seed;
    r.exec.lr = a->lr > 0 ? a->lr : 3e-4;  // the CUDA default (`loom execute --help`)
    r.exec.die_at_step = a->die_at_step;
    r.exec.die_rank = a->die_rank;
    r.exec.nan_at_step = a->nan_at_step;
    r.exec.stall = a->stall != 0;
    r.exec.save_fault.rank = a->save_fault_rank;
    r.exec.save_fault.bytes = a->save_fault_bytes;
    r.exec.save_fault.point = a->save_fault_point;
    r.timeout_s = a->timeout_s;
    r.emulate_rank = a->emulate_rank;
    r.progress = a->progress != 0;
    return loom::cuda::execute_parallel_command(r);
  });
}

int calibrate_entry(const LoomCudaCalibrateArgs* a) {
  return loom::exec::guarded_entry("calibrate", [a] {
    loom::cuda::CalibrateOptions c;
    c.out = a->out;
    c.name = a->name;
    c.quick = a->quick != 0;
    c.progress = a->progress != 0;
    return loom::cuda::calibrate_command(c);
  });
}

constexpr LoomCudaBackend kBackend{LOOM_BACKEND_ABI, execute_entry, calibrate_entry};

}  // namespace

extern "C" __attribute__((visibility("default"))) const LoomCudaBackend* loom_cuda_backend(void) { return &kBackend; }
