#include "sim/mla.hpp"

#include <string>

#include "sim/tp_overlap.hpp"

namespace loom {

namespace {

// The sizes of the header's formulas.
struct Mla {
  int64_t h, H, cq, ckv, dn, dr, dv;
  int64_t qk() const { return dn + dr; }
};
Mla shape(const ModelSpec& m) {
  return {m.hidden, m.heads, m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim};
}

std::string mla_str(int64_t v) { return std::to_string(v); }

const char* const kMlaKeys[] = {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"};

}  // namespace

// DeepseekV2Attention's modules (header); biases off (attention_bias false, the DeepSeek configs').
// DeepSeek-V2-Lite (h 2048, H 16, cq 0, ckv 512, dn 128, dr 64, dv 128): q 6,291,456, kv down
// 1,179,648, kv norm 512, kv up 2,097,152, o 4,194,304.
LayerParams mla_attention_params(const ModelSpec& m) {
  const Mla a = shape(m);
  LayerParams p;
  p.sharded = (a.cq > 0 ? a.cq : a.h) * a.H * a.qk()  // q_b_proj, or q_proj
              + a.ckv * a.H * (a.dn + a.dv)            // kv_b_proj
              + a.H * a.dv * a.h;                      // o_proj
  p.replicated = a.h * (a.ckv + a.dr) + a.ckv          // kv_a_proj_with_mqa, kv_a_layernorm
                 + (a.cq > 0 ? a.h * a.cq + a.cq : 0);  // q_a_proj, q_a_layernorm
  return p;
}

LayerFlops mla_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq) {
  const Mla a = shape(m);
  const FlopCount T = FlopCount(batch) * seq;
  LayerFlops f;
  const FlopCount q = a.cq > 0 ? FlopCount(a.h) * a.cq + FlopCount(a.cq) * a.H * a.qk() : FlopCount(a.h) * a.H * a.qk();
  f.gemm = 2 * T * (q + FlopCount(a.h) * (a.ckv + a.dr) + FlopCount(a.ckv) * a.H * (a.dn + a.dv) + FlopCount(a.H) * a.dv * a.h);
  f.attention = 2 * T * seq * a.H * (a.qk() + a.dv);
  return f;
}

FlopCount mla_core_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq, int64_t tp) {
  const Mla a = shape(m);
  return 2 * FlopCount(batch) * seq * seq * (a.H / tp) * (a.qk() + a.dv);
}

double mla_core_head_size(const ModelSpec& m) {
  const Mla a = shape(m);
  return static_cast<double>(a.qk() + a.dv) / 2;
}

// The tp collectives tp-comm overlap pairs with (sim/tp_overlap.hpp), as Megatron-Core builds
// MLA with Transformer Engine (gpt_layer_specs.py; multi_latent_attention.py, MLASelfAttention):
// the down-projections are TELinear in "duplicated" mode (no tp collective), linear_q_proj,
// linear_q_up_proj and linear_kv_up_proj are column-parallel, linear_proj row-parallel. The
// all-gather of the sequence-parallel layer input is linear_q_proj's (no q-LoRA, as
// DeepSeek-V2-Lite; it gathers the b s h input itself) or, with q-LoRA, that of
// linear_q_up_proj, the first column-parallel GEMM; linear_proj takes the reduce-scatter.
// Megatron-Core names the q projections' userbuffers "q_proj" and "q_up_proj", which
// Transformer Engine does not set up (only qkv, proj, fc1 and fc2), and its TELinear then turns
// the overlap off (transformer_engine.py: "The user buffer name ... is not supported"); loom
// prices the gather overlapped, as async TP's collective matmul runs any all-gather beside the
// GEMM that reads it.
void mla_gemms(std::vector<Op>& ops, const ModelSpec& m, int64_t T, int64_t t, Pass pass, int64_t L) {
  const Mla a = shape(m);
  if (a.cq > 0) {
    ops.push_back(gemm("mla q down", pass, T, a.cq, a.h, L));
    ops.push_back(beside_tp_collective(gemm("mla q up", pass, T, a.H * a.qk() / t, a.cq, L), TpOverlapSlot::qkv));
  } else {
    ops.push_back(beside_tp_collective(gemm("mla q", pass, T, a.H * a.qk() / t, a.h, L), TpOverlapSlot::qkv));
  }
  ops.push_back(gemm("mla kv down", pass, T, a.ckv + a.dr, a.h, L));
  ops.push_back(gemm("mla kv up", pass, T, a.H * (a.dn + a.dv) / t, a.ckv, L));
  ops.push_back(beside_tp_collective(gemm("attention projection", pass, T, a.h, a.H * a.dv / t, L), TpOverlapSlot::proj));
}

void mla_elementwise(std::vector<Op>& ops, const ModelSpec& m, int64_t T, int64_t t, int64_t e, Pass pass, int64_t L,
                     double scale) {
  const Mla a = shape(m);
  const double E = static_cast<double>(e), N = static_cast<double>(T);
  ops.push_back(memory_op("rope", MemKind::rotary, pass,
                          rotary_bytes(N * static_cast<double>(a.H / t * a.dr + a.dr), E), L, scale));
  ops.push_back(memory_op("mla latent norms", MemKind::norm, pass, norm_bytes(N * static_cast<double>(a.ckv + a.cq), E),
                          L, scale));
  ops.push_back(memory_op("mla q/k assembly", MemKind::copy, pass,
                          2 * E * N * static_cast<double>(2 * a.H / t * a.qk()), L, scale));
}

MlaActivationBytes mla_activation_bytes(const ModelSpec& m, int64_t T, int64_t t, int64_t e) {
  const Mla a = shape(m);
  MlaActivationBytes out;
  out.heads = e * T * (a.H / t) * (2 * a.qk() + 2 * a.dv);
  out.latents = e * T * (2 * a.ckv + 2 * a.cq);
  out.stats = 4 * T * (1 + (a.cq > 0 ? 1 : 0));
  return out;
}

int64_t mla_scratch_elements_delta(const ModelSpec& m, int64_t N, int64_t t, int64_t h, int64_t kv) {
  const Mla a = shape(m);
  const int64_t mla = N * (a.H / t) * (2 * a.qk() + (a.dn + a.dv) + a.dv) + N * (2 * a.ckv + a.dr + 2 * a.cq);
  return mla - N * (4 * (h / t) + 3 * (kv / t));
}

void mla_messages(std::vector<Message>& v, const ModelSpec& m, const ParallelConfig& p, int64_t layers, int64_t g) {
  if (!m.is_mla() || p.tp <= 1 || p.sp || layers <= 0) return;
  v.push_back(message("tp mla down-projection gradients", Group::tp, MessageKind::all_reduce, Pass::step,
                      Cadence::step, g * layers * mla_attention_params(m).replicated, 1));
}

long double mla_elements_per_token(const ModelSpec& m) {
  using L = long double;
  const Mla a = shape(m);
  // Saved tensors and their gradients (scratch) together, fp32 statistics as one element each.
  return 2 * (L(a.H) * (2 * a.qk() + 2 * a.dv + a.dn) + 3 * L(a.ckv) + a.dr + 2 * L(a.cq)) + 2 + L(a.H);
}

long double mla_forward_flops_per_token(const ModelSpec& m, int64_t seq) {
  using L = long double;
  const Mla a = shape(m);
  return 2 * (L(a.h) * (a.cq + a.ckv + a.dr) + L(a.cq + a.h) * a.H * a.qk() + L(a.ckv) * a.H * (a.dn + a.dv) +
              L(a.H) * a.dv * a.h) +
         2 * L(seq) * a.H * (a.qk() + a.dv);
}

Status check_mla_model(const ModelSpec& m, const FieldNamer& name) {
  const std::pair<const char*, int64_t> fields[] = {{"q_lora_rank", m.q_lora_rank},
                                                    {"kv_lora_rank", m.kv_lora_rank},
                                                    {"qk_nope_head_dim", m.qk_nope_head_dim},
                                                    {"qk_rope_head_dim", m.qk_rope_head_dim},
                                                    {"v_head_dim", m.v_head_dim}};
  for (auto [field, v] : fields) {
    if (v < 0) return Error{name(field) + ": must be >= 0 (got " + mla_str(v) + ")"};
    if (v > limits::kHidden) return Error{name(field) + ": must be <= " + mla_str(limits::kHidden) + " (got " + mla_str(v) + ")"};
    if (!m.is_mla() && v != 0)
      return Error{name(field) + ": needs kv_lora_rank > 0 (multi-head latent attention) (got " + mla_str(v) + ")"};
  }
  if (!m.is_mla()) return ok_status();
  for (auto [field, v] : fields)
    if (v < 1 && std::string(field) != "q_lora_rank")
      return Error{name(field) + ": must be >= 1 with multi-head latent attention (got " + mla_str(v) + ")"};
  if (m.family != Family::llama)
    return Error{name("kv_lora_rank") + ": multi-head latent attention is modelled for the llama family (RMSNorm, RoPE)"};
  const int64_t qk = m.heads * (m.qk_nope_head_dim + m.qk_rope_head_dim), v = m.heads * m.v_head_dim;
  if (qk > limits::kFfnHidden)
    return Error{name("qk_nope_head_dim") + ": heads x (qk_nope_head_dim + qk_rope_head_dim) must be <= " +
                 mla_str(limits::kFfnHidden) + " (got " + mla_str(qk) + ")"};
  if (v > limits::kFfnHidden)
    return Error{name("v_head_dim") + ": heads x v_head_dim must be <= " + mla_str(limits::kFfnHidden) + " (got " + mla_str(v) + ")"};
  return ok_status();
}

void read_mla_keys(ObjectReader& r, ModelSpec& m) {
  r.opt_integer("q_lora_rank", m.q_lora_rank, 0, limits::kHidden);
  r.opt_integer("kv_lora_rank", m.kv_lora_rank, 0, limits::kHidden);
  r.opt_integer("qk_nope_head_dim", m.qk_nope_head_dim, 0, limits::kHidden);
  r.opt_integer("qk_rope_head_dim", m.qk_rope_head_dim, 0, limits::kHidden);
  r.opt_integer("v_head_dim", m.v_head_dim, 0, limits::kHidden);
}

void mla_keys_to_json(nlohmann::json& j, const ModelSpec& m) {
  if (!m.is_mla()) return;
  j["q_lora_rank"] = m.q_lora_rank;
  j["kv_lora_rank"] = m.kv_lora_rank;
  j["qk_nope_head_dim"] = m.qk_nope_head_dim;
  j["qk_rope_head_dim"] = m.qk_rope_head_dim;
  j["v_head_dim"] = m.v_head_dim;
}

void read_hf_mla(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type) {
  auto present = [&j](const char* k) { return j.contains(k) && !j.at(k).is_null(); };
  if (type != "deepseek_v2" && type != "deepseek_v3") {
    for (const char* k : kMlaKeys)
      if (present(k))
        return r.fail(k, "multi-head latent attention is read for model_type deepseek_v2 and deepseek_v3 only (got "
                         "model_type " + type + ")");
    return;
  }
  // DeepseekV2Attention: q_lora_rank None builds q_proj directly.
  if (present("q_lora_rank")) r.integer("q_lora_rank", m.q_lora_rank, 1, limits::kHidden);
  else r.skip("q_lora_rank");
  r.integer("kv_lora_rank", m.kv_lora_rank, 1, limits::kHidden);
  r.integer("qk_nope_head_dim", m.qk_nope_head_dim, 1, limits::kHidden);
  r.integer("qk_rope_head_dim", m.qk_rope_head_dim, 1, limits::kHidden);
  r.integer("v_head_dim", m.v_head_dim, 1, limits::kHidden);
  // num_key_value_heads is not a shape of MLA: after kv_b_proj every query head has its own key
  // and value head.
  m.kv_heads = m.heads;
}

}  // namespace loom
