// The CPU executor's plan rules (check_cpu_plan, executor/run_checks.hpp): pure checks over the
// plan, in the library `loom` links (loom_executor_checks), so that `loom execute --device cpu`
// refuses a plan the trainer cannot run before it loads the trainer's module.
#include <algorithm>
#include <string>

#include "executor/run_checks.hpp"
#include "executor/trainer_plan_rules.hpp"
#include "sim/schedule.hpp"
#include "sim/spec_json.hpp"

namespace loom::exec {

namespace {

std::string got(int64_t v) { return " (got " + std::to_string(v) + ")"; }

// What the CPU executor runs with cp > 1: the ring or its all-gathered variant (fused
// attention: a log-sum-exp per head and token is kept, not the probabilities), on dense models, one pipeline stage, without selective
// recompute (it would rerun the whole ring) or a split backward, and the rules that involve the
// data-parallel size applied to dp x cp, over which the gradients are reduced.
Status check_cpu_cp(const Plan& plan) {
  const auto& p = plan.parallel;
  const auto& t = plan.train;
  if (p.cp < 1) return make_error("parallel.cp", "must be at least 1" + got(p.cp));
  if (p.cp == 1) return ok_status();
  if (t.attention != Attention::fused)
    return make_error("train.attention", "the CPU executor runs cp > 1 as a ring of flash-attention blocks: must be fused");
  if (t.seq % (2 * p.cp) != 0)
    return make_error("train.seq", "must split into 2 x cp equal chunks (Megatron's load-balanced split)" + got(t.seq));
  if (p.sp && (t.seq / p.cp * p.micro_batch) % p.tp != 0)
    return make_error("parallel.sp", "needs tp to divide a cp rank's tokens, micro_batch x seq / cp" + got(p.tp));
  if (plan.model.is_moe()) return make_error("parallel.cp", "the CPU executor runs cp > 1 on dense models only" + got(p.cp));
  if (p.pp > 1) return make_error("parallel.cp", "the CPU executor runs cp > 1 with pp = 1 only" + got(p.cp));
  if (p.recompute == Recompute::selective)
    return make_error("parallel.recompute", "the CPU executor runs cp > 1 with recompute none or full (got selective)");
  if (splits_backward(p.schedule))
    return make_error("parallel.schedule", "the CPU executor runs cp > 1 without a split backward");
  if (p.zero >= 2 && (plan.model.tied_embeddings || p.sp))
    return make_error("parallel.zero", "the CPU executor runs cp > 1 with tied embeddings or sp at zero < 2 only" +
                                           got(p.zero));
  return ok_status();
}

// The rules for MoE plans (the layers are trainer_moe.cpp's), as one line naming the field.
Status check_cpu_moe(const Plan& plan) {
  const auto& m = plan.model;
  const auto& p = plan.parallel;
  if (!m.is_moe()) {
    if (p.ep != 1 || p.etp != 1)
      return make_error("parallel.ep", "ep and etp need a MoE model (experts > 0): must be 1" + got(p.ep * p.etp));
    return ok_status();
  }
  if (m.shared_expert_gate)
    return make_error("model.shared_expert_gate", "the CPU executor's shared experts have no gate (Qwen2-MoE): must be false");
  if (p.ep < 1 || m.experts % p.ep != 0)
    return make_error("parallel.ep", "must divide the experts (" + std::to_string(m.experts) + ")" + got(p.ep));
  if (p.etp < 1 || (p.tp * p.dp) % (p.ep * p.etp) != 0)
    return make_error("parallel.ep", "ep x etp must divide tp x dp (" + std::to_string(p.tp * p.dp) + ")" +
                                         got(p.ep * p.etp));
  if (m.expert_ffn_hidden % p.etp != 0)
    return make_error("parallel.etp", "must divide expert_ffn_hidden (" + std::to_string(m.expert_ffn_hidden) + ")" +
                                          got(p.etp));
  // Megatron-LM's rule: with tp > 1 the MoE layer routes the sequence-parallel shard, so each
  // token is routed by one rank.
  if (p.tp > 1 && !p.sp) return make_error("parallel.sp", "MoE layers with tp > 1 need sequence parallelism (got off)");
  if (p.zero != 0 && p.dp > 1)
    return make_error("parallel.zero", "the CPU executor runs MoE models with zero 0" + got(p.zero));
  return ok_status();
}

}  // namespace

// check_cpu_plan (run_checks.hpp).
Status check_cpu_plan(const Plan& plan) {
  const auto& m = plan.model;
  const auto& t = plan.train;
  const auto& p = plan.parallel;
  if (t.fp8) return make_error("train.dtype", "the CPU executor runs fp32 GEMMs, not FP8: must be fp32 (got fp8)");
  if (t.dtype != Dtype::fp32 || t.grad_dtype != Dtype::fp32)
    return make_error("train.dtype", "the CPU executor runs fp32: dtype and grad_dtype must be fp32");
  if (p.cp == 1 && t.attention != Attention::unfused)
    return make_error("train.attention", "the CPU executor stores softmax probabilities: attention must be unfused");
  if (auto st = check_cpu_cp(plan); !st) return st;  // cp > 1: the ring (check_cpu_cp above; the ring is trainer_cp.cpp)
  if (m.dropout) return make_error("model.dropout", "the CPU executor has no dropout: must be false");
  if (m.head_size > 0 && m.head_size * m.heads != m.hidden)
    return make_error("model.head_size", "the CPU executor runs heads of hidden / heads only: must be " +
                                             std::to_string(m.hidden / std::max<int64_t>(1, m.heads)) + " or unset");
  if (m.qk_norm) return make_error("model.qk_norm", "the CPU executor has no q/k norms: must be false");
  if (m.post_norms) return make_error("model.post_norms", "the CPU executor has no post-norms: must be false");
  if (m.is_mla())
    return make_error("model.kv_lora_rank", "the CPU executor has no multi-head latent attention: must be 0 (got " +
                                                std::to_string(m.kv_lora_rank) + ")");
  if (m.gated_gelu) return make_error("model.gated_gelu", "the CPU executor's gated MLP is SwiGLU: must be false");
  if (auto st = check_trainer_plan(plan, "the CPU executor"); !st) return st;
  if (auto st = check_cpu_moe(plan); !st) return st;
  // A split backward keeps each layer's stash for its W and adds a micro-batch's gradients in
  // two passes: full recompute keeps no stash, ZeRO-2/3 reduce each micro-batch's at once.
  if (splits_backward(p.schedule) && p.recompute == Recompute::full)
    return make_error("parallel.recompute", "the CPU executor runs " + to_string(p.schedule) + " without full recompute (got full)");
  if (splits_backward(p.schedule) && p.zero >= 2 && p.dp > 1)
    return make_error("parallel.zero", "the CPU executor runs " + to_string(p.schedule) + " with zero < 2 (got " + std::to_string(p.zero) + ")");
  if (splits_backward(p.schedule) && m.is_moe())  // the split covers the dense layer's GEMMs
    return make_error("parallel.schedule", "the CPU executor runs " + to_string(p.schedule) + " on dense models only (got a MoE model)");
  return ok_status();
}

}  // namespace loom::exec
