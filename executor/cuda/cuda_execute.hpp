// `loom execute plan.json --device cuda` (under `mpirun -np N`, or alone with --emulate-rank):
// the one trainer (executor/trainer.hpp, execute_plan) on the CUDA compute backend
// (compute_cuda.hpp), with the comm the ranks' devices allow:
// - NCCL (nccl_comm.hpp) when every rank has a GPU of its own,
// - the staged comm (staged_comm.hpp: device to host copies over the MPI ring) when several
//   ranks share one GPU (ranks per device > 1; NCCL refuses them), or when NCCL was not built,
// - device copies (emulated_device_comm.hpp) for --emulate-rank.
// Bad input (world size, memory, a plan the kernels or the GPU cannot take) is one line naming
// the field and the rule, exit 2, checked before any device buffer is allocated.
#pragma once
#include <string>

#include "executor/trainer.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::cuda {

struct ParallelRunArgs {
  std::string plan_path, report_path;
  exec::ExecOptions exec;  // steps, lr, seed, save/resume, trace, faults
  double timeout_s = 60;
  int64_t emulate_rank = -1;
  bool progress = true;
};

// What a CUDA run of `plan` needs that the plan itself does not guarantee: the kernels' shapes
// (head size 64 or 128, seq a multiple of 64 up to 8192, 16-byte rows per tp shard), bf16
// compute, and a plan that fits (its prediction re-evaluated). One line naming the field.
Status check_parallel_plan(const Plan& plan);

// `ranks_per_device` ranks each needing `peak_bytes` (the cost model's per-rank peak) on a GPU
// of `device_bytes`: refused when they cannot all fit.
Status check_ranks_fit(int64_t ranks_per_device, int64_t peak_bytes, int64_t device_bytes, int device);

// Runs on every rank; returns the exit code (0 done, 2 bad input, 3 a failure during the run).
int execute_parallel_command(const ParallelRunArgs& args);

}  // namespace loom::cuda
