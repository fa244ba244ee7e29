// The executor: trains a plan's model on ranks under MPI with exactly the plan's parallelism (DP
// with bucketed all-reduce, ZeRO-1/2/3, Megatron TP and SP, PP with the shared schedule tables,
// recompute none/selective/full) on a compute backend (compute.hpp: the fp32 CPU reference, or a
// GPU backend), and measures what it did in the cost model's vocabulary: bytes by category from
// its own allocator (ledger.hpp), GEMM FLOPs (cpu::FlopCounter) and bytes sent per collective
// per group (comm.hpp).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "executor/checkpoint.hpp"
#include "executor/comm.hpp"
#include "executor/run_checks.hpp"
#include "executor/compute.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::exec {

struct ExecOptions {
  int64_t steps = 1;            // train until this global step (a resumed run continues to it)
  double lr = 1e-3;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  uint64_t seed = 1337;         // weights (cpu::Gpt init) and the synthetic token stream
  std::string save_dir;         // write a checkpoint here after the last step (executor/checkpoint.hpp)
  std::string resume_dir;       // start from the checkpoint here (steps must lie beyond its step)
  std::string weights_out;      // rank 0 writes the full model (cpu::Gpt layout, raw fp32)
  std::string trace_path;       // rank 0 writes the last step of every rank as a Chrome trace
  bool emulated = false;        // one rank of a larger plan (make_emulated_comm): it reports itself
  // Fault injection for the reliability tests.
  int64_t die_at_step = -1, die_rank = -1;  // that rank kills itself (SIGKILL) at that step
  bool stall = false;                       // ... or stops (SIGSTOP): a hung peer, not a dead one
  int64_t nan_at_step = -1;                 // poison a weight so the loss becomes NaN
  SaveFault save_fault;                     // a rank killing itself part-way through --save
};

// How a run that failed should end the job.
enum class Ending {
  abort,     // a peer died or stalled: ranks may be blocked, end the whole job
  together,  // every rank stopped at the same point (a NaN loss, a save that failed)
  refused,   // before the first step every rank refused the same input (a checkpoint that does
             // not resume): the same one-line error on every rank, exit 2
};

// check_cpu_plan: what the CPU executor cannot run (executor/run_checks.hpp).

// Runs on every rank. Returns the measured report on rank 0 (other ranks: an empty object; an
// emulated rank reports itself).
// Errors (a peer that died, a NaN loss) come back as values naming the rank and step; `ending`
// (if given) says how the job should end.
Expected<nlohmann::json> execute_cpu(const Plan& plan, Comm& comm, const ExecOptions& options,
                                     Ending* ending = nullptr);
// The same on the compute backend `compute` builds for each rank (the plan's limits for that
// backend are the caller's to check first). `comm` carries the training traffic on the backend's
// buffers; `host`, when given, the host-memory traffic (loss and norm sums, report, trace,
// weights, checkpoint agreement) for a comm that moves device buffers only (NCCL).
Expected<nlohmann::json> execute_plan(const Plan& plan, Comm& comm, const ExecOptions& options,
                                      const ComputeFactory& compute, Ending* ending = nullptr,
                                      Comm* host = nullptr);

}  // namespace loom::exec
