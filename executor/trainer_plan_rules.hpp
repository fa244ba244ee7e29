// The trainer's own limits (executor/trainer*.cpp), the same on both devices, so one list:
// checked by the CPU executor's rules (cpu_plan_checks.cpp) and the CUDA path's
// (cuda/plan_limits.hpp), each naming itself as `who` in the message. Header-only (sim/plan.hpp
// alone), so the CPU-only `loom` checks them before it loads either module.
#pragma once
#include <string>

#include "sim/plan.hpp"

namespace loom::exec {

inline Status check_trainer_plan(const Plan& plan, const std::string& who) {
  const ParallelConfig& p = plan.parallel;
  if (plan.model.tied_embeddings && (p.pp > 1 || (p.zero >= 2 && p.dp > 1)))
    return make_error("model.tied_embeddings",
                      who + " ties embeddings only with pp = 1 and zero < 2 (untie them in the model file)");
  if (p.dp_comm != DpComm::ring) return make_error("parallel.dp_comm", who + " runs the ring only");
  if (p.zero3_gather != Zero3Gather::layer)
    return make_error("parallel.zero3_gather", who + " gathers ZeRO-3 weights layer by layer: must be layer (got tensor)");
  if (p.grad_compression != 1) return make_error("parallel.grad_compression", who + " does not compress");
  // torchtitan's per-op checkpointing keeps a save list the trainer's layer stash does not have.
  if (p.recompute == Recompute::op)
    return make_error("parallel.recompute", who + " runs recompute none, selective or full (got op: torchtitan's "
                                                  "per-op checkpointing is priced, not run)");
  if (p.sp && p.zero >= 2 && p.dp > 1)
    return make_error("parallel.sp", who + " runs sequence parallelism with zero < 2 only");
  return ok_status();
}

}  // namespace loom::exec
