#include "sim/model_math.hpp"

#include <algorithm>

#include "sim/mla.hpp"
#include "sim/moe.hpp"

namespace loom {

LayerParams layer_params(const ModelSpec& m) {
  const int64_t h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden;
  LayerParams p;
  if (m.family == Family::gpt) {
    p.sharded = h * (h + 2 * kv) + (h + 2 * kv)  // QKV weight and bias (column-parallel)
                + h * h                          // attention output weight (row-parallel)
                + h * f + f                      // fc1 weight and bias (column-parallel)
                + f * h;                         // fc2 weight (row-parallel)
    p.replicated = 2 * h + 2 * h                 // LN1, LN2 (gain and bias)
                   + h + h;                      // row-parallel biases of proj and fc2
  } else if (m.is_mla()) {  // DeepSeek's latent attention (sim/mla.hpp) and a SwiGLU MLP
    const LayerParams a = mla_attention_params(m);
    p.sharded = a.sharded + 3 * h * f;
    p.replicated = a.replicated + h + h;         // with the two RMSNorm gains
  } else {
    const int64_t q = m.q_dim();                 // heads x head size (h unless set apart)
    p.sharded = h * q + 2 * h * kv + q * h       // q, k, v, o
                + 3 * h * f;                     // gate, up (column), down (row)
    // Qwen2 (transformers Qwen2Attention): q_proj, k_proj, v_proj carry biases, o_proj does not.
    if (m.qkv_bias) p.sharded += q + 2 * kv;
    p.replicated = h + h;                        // two RMSNorm gains
    // Gemma 2 (transformers Gemma2DecoderLayer): post_attention_layernorm and
    // post_feedforward_layernorm beside the two pre-norms.
    if (m.post_norms) p.replicated += h + h;
    // Qwen3 (transformers Qwen3Attention): q_norm and k_norm, RMSNorms over head_dim shared by
    // every head.
    if (m.qk_norm) p.replicated += 2 * m.head_dim();
  }
  return p;
}

int64_t embedding_params(const ModelSpec& m) {
  return m.vocab * m.hidden + (m.family == Family::gpt ? m.seq_len * m.hidden : 0);
}

int64_t final_norm_params(const ModelSpec& m) { return m.family == Family::gpt ? 2 * m.hidden : m.hidden; }

int64_t output_params(const ModelSpec& m) { return m.tied_embeddings ? 0 : m.vocab * m.hidden; }

int64_t total_params(const ModelSpec& m) {
  // MoE layers hold their router and experts in place of the dense MLP (sim/moe.hpp).
  return m.layers * layer_params(m).total() + embedding_params(m) + final_norm_params(m) + output_params(m) +
         moe_params_delta(m);
}

LayerFlops layer_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq, AttentionFlops conv) {
  const FlopCount t = FlopCount(batch) * seq;  // tokens
  const FlopCount h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden, q = m.q_dim();
  const FlopCount mlp_matrices = m.family == Family::gpt ? 2 : 3;  // fc1, fc2 | gate, up, down
  LayerFlops out;
  out.gemm = 2 * t * h * (q + 2 * kv)  // QKV (q = h unless the head size is set apart)
             + 2 * t * q * h           // output projection
             + 2 * t * h * f * mlp_matrices;
  out.attention = 2 * (2 * t * seq * q);  // QK^T and softmax*V, every head, the full s x s
  if (m.is_mla()) {  // latent attention in place of q, k, v, o (sim/mla.hpp)
    const LayerFlops a = mla_forward_flops(m, batch, seq);
    out.gemm = a.gemm + 2 * t * h * f * mlp_matrices;
    out.attention = a.attention;
  }
  if (conv == AttentionFlops::causal) out.attention /= 2;  // the half on and below the diagonal
  return out;
}

FlopCount logits_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq) {
  return 2 * FlopCount(batch) * seq * m.hidden * m.vocab;
}

FlopCount model_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, AttentionFlops conv) {
  // MoE layers: router and the k routed and the shared experts in place of the dense MLP, at
  // the mean load (every token's k experts; sim/moe.hpp).
  const FlopCount moe = moe_layer_total(m) * moe_forward_flops_delta(m, global_batch * seq);
  return 3 * (m.layers * layer_forward_flops(m, global_batch, seq, conv).total() +
              logits_forward_flops(m, global_batch, seq) + moe);
}

FlopCount hardware_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, Recompute r, AttentionFlops conv) {
  const LayerFlops lf = layer_forward_flops(m, global_batch, seq, conv);
  FlopCount extra = 0;
  if (r == Recompute::full)  // one more forward per layer
    extra = m.layers * lf.total() + moe_layer_total(m) * moe_forward_flops_delta(m, global_batch * seq);
  if (r == Recompute::selective) extra = m.layers * lf.attention;    // the attention core only
  if (r == Recompute::op) {  // torchtitan's per-op checkpointing: the k, o and up projections again
    const FlopCount t = FlopCount(global_batch) * seq, h = m.hidden;
    extra = m.layers * 2 * t * h * (m.kv_dim() + m.q_dim() + m.ffn_hidden);
  }
  return model_flops(m, global_batch, seq, conv) + extra;
}

std::vector<int64_t> divisors(int64_t n) {
  if (n < 1) return {};
  std::vector<int64_t> out{1};
  // Multiplies every divisor found so far by q, q^2, ..., q^k (all <= n: no overflow).
  auto add_prime_power = [&out](int64_t q, int k) {
    const size_t base = out.size();
    int64_t qe = 1;
    for (int e = 1; e <= k; ++e) {
      qe *= q;
      for (size_t i = 0; i < base; ++i) out.push_back(out[i] * qe);
    }
  };
  int64_t rest = n;
  for (int64_t q = 2; q <= rest / q; ++q) {  // q * q <= rest, written so that it cannot overflow
    int k = 0;
    for (; rest % q == 0; ++k) rest /= q;
    if (k > 0) add_prime_power(q, k);
  }
  if (rest > 1) add_prime_power(rest, 1);  // what is left is prime
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace loom
