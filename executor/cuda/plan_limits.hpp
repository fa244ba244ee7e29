// What the CUDA path runs today, as one rule per field, checked before anything is loaded or
// allocated: by `loom execute --device cuda` (planner/cli/cmd_execute.cpp) before it loads the
// module, and again by the module itself (cuda_executor.cpp) for callers that reach it directly.
// Header-only (sim/plan.hpp alone), so the CPU-only `loom` checks the same rule.
#pragma once
#include <string>

#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::cuda {

// One GPU trains the whole model (cuda::Gpt): no data, tensor or pipeline parallelism until the
// CUDA compute backend joins the parallel trainer (executor/compute.hpp); bf16 compute.
inline Status check_cuda_plan(const Plan& plan) {
  const ParallelConfig& p = plan.parallel;
  const std::pair<const char*, int64_t> dims[] = {{"parallel.dp", p.dp}, {"parallel.tp", p.tp}, {"parallel.pp", p.pp}};
  for (const auto& [field, n] : dims)
    if (n != 1)
      return make_error(field, "the CUDA backend runs one GPU (dp = tp = pp = 1) until its compute backend joins "
                               "the parallel trainer; run this plan with --device cpu (got " + std::to_string(n) + ")");
  if (plan.train.dtype != Dtype::bf16)
    return make_error("train.dtype", "the CUDA backend trains in bf16 (fp32 master weights): must be bf16");
  if (p.micro_batch < 1 || plan.train.global_batch % p.micro_batch != 0)
    return make_error("train.global_batch", "must be a multiple of parallel.micro_batch");
  return ok_status();
}

}  // namespace loom::cuda
