// What the CUDA path runs, as one rule per field, checked before anything is loaded or
// allocated: by `loom execute --device cuda` (planner/cli/cmd_execute.cpp) before it loads the
// module, and again by the module itself (cuda_execute.cpp) for callers that reach it directly.
// Header-only (sim/plan.hpp alone), so the CPU-only `loom` checks the same rules.
#pragma once
#include <string>

#include "executor/trainer_plan_rules.hpp"
#include "sim/plan.hpp"

namespace loom::cuda {

// The trainer's limits (the same on both devices) and the CUDA kernels': bf16 compute, the
// fused attention kernel (head size 64 or 128, seq a multiple of 64), 16-byte GEMM rows per tp
// shard. Every dp x tp x pp grid the trainer runs is allowed.
inline Status check_cuda_plan(const Plan& plan) {
  const ParallelConfig& p = plan.parallel;
  const TrainSpec& t = plan.train;
  const ModelSpec& m = plan.model;
  auto got = [](int64_t v) { return " (got " + std::to_string(v) + ")"; };
  if (t.fp8)
    return make_error("train.dtype", "the CUDA backend runs bf16 GEMMs, not FP8 (Transformer Engine's): must be bf16 (got fp8)");
  if (t.dtype != Dtype::bf16)
    return make_error("train.dtype", "the CUDA backend computes in bf16 with fp32 master weights: must be bf16 (got fp32)");
  if (t.attention != Attention::fused)
    return make_error("train.attention", "the CUDA backend runs the fused attention kernel: must be fused (got unfused)");
  if (m.dropout) return make_error("model.dropout", "the CUDA backend has no dropout: must be false");
  const std::pair<bool, const char*> features[] = {{m.qkv_bias, "model.qkv_bias"}, {m.qk_norm, "model.qk_norm"},
                                                   {m.post_norms, "model.post_norms"}, {m.gated_gelu, "model.gated_gelu"},
                                                   {m.experts > 0, "model.experts"}, {m.is_mla(), "model.kv_lora_rank"}};
  for (const auto& [on, field] : features)
    if (on) return make_error(field, "the CUDA compute backend does not run it yet: must be off (false or 0)");
  if (auto st = exec::check_trainer_plan(plan, "the trainer"); !st) return st;
  if (p.cp > 1)
    return make_error("parallel.cp", "the CUDA backend has no ring attention (context parallelism) yet: must be 1" + got(p.cp));
  if (p.schedule == Schedule::zb_h1) return make_error("parallel.schedule", "the CUDA backend does not split the backward that zb-h1 needs yet (got zb-h1)");
  if (p.schedule == Schedule::zb_v) return make_error("parallel.schedule", "the CUDA backend does not split the backward that zb-v needs yet (got zb-v)");
  if (p.micro_batch < 1 || t.global_batch % (p.micro_batch * p.dp) != 0)
    return make_error("train.global_batch", "must be a multiple of parallel.micro_batch x parallel.dp" + got(t.global_batch));
  if (m.head_dim() != 64 && m.head_dim() != 128)
    return make_error("model.head_dim", "the CUDA attention kernel runs head size 64 or 128" + got(m.head_dim()));
  if (t.seq < 64 || t.seq % 64 != 0)
    return make_error("train.seq", "the CUDA attention kernel needs a positive multiple of 64" + got(t.seq));
  if (m.hidden % 8 != 0) return make_error("model.hidden", "the CUDA GEMMs need 16-byte rows: a multiple of 8" + got(m.hidden));
  if (m.ffn_hidden % (8 * p.tp) != 0)
    return make_error("model.ffn_hidden", "per tp rank, the CUDA GEMMs need a multiple of 8" + got(m.ffn_hidden));
  return ok_status();
}

}  // namespace loom::cuda
