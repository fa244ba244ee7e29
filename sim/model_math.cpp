#include "sim/model_math.hpp"

#include <algorithm>

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
  } else {
    p.sharded = h * h + 2 * h * kv + h * h       // q, k, v, o
                + 3 * h * f;                     // gate, up (column), down (row)
    // Qwen2 (transformers Qwen2Attention): q_proj, k_proj, v_proj carry biases, o_proj does not.
    if (m.qkv_bias) p.sharded += h + 2 * kv;
    p.replicated = h + h;                        // two RMSNorm gains
  }
  return p;
}

int64_t embedding_params(const ModelSpec& m) {
  return m.vocab * m.hidden + (m.family == Family::gpt ? m.seq_len * m.hidden : 0);
}

int64_t final_norm_params(const ModelSpec& m) { return m.family == Family::gpt ? 2 * m.hidden : m.hidden; }

int64_t output_params(const ModelSpec& m) { return m.tied_embeddings ? 0 : m.vocab * m.hidden; }

int64_t total_params(const ModelSpec& m) {
  return m.layers * layer_params(m).total() + embedding_params(m) + final_norm_params(m) + output_params(m);
}

LayerFlops layer_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq, AttentionFlops conv) {
  const FlopCount t = FlopCount(batch) * seq;  // tokens
  const FlopCount h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden;
  const FlopCount mlp_matrices = m.family == Family::gpt ? 2 : 3;  // fc1, fc2 | gate, up, down
  LayerFlops out;
  out.gemm = 2 * t * h * (h + 2 * kv)  // QKV
             + 2 * t * h * h           // output projection
             + 2 * t * h * f * mlp_matrices;
  out.attention = 2 * (2 * t * seq * h);  // QK^T and softmax*V, every head, the full s x s
  if (conv == AttentionFlops::causal) out.attention /= 2;  // the half on and below the diagonal
  return out;
}

FlopCount logits_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq) {
  return 2 * FlopCount(batch) * seq * m.hidden * m.vocab;
}

FlopCount model_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, AttentionFlops conv) {
  return 3 * (m.layers * layer_forward_flops(m, global_batch, seq, conv).total() +
              logits_forward_flops(m, global_batch, seq));
}

FlopCount hardware_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, Recompute r, AttentionFlops conv) {
  const LayerFlops lf = layer_forward_flops(m, global_batch, seq, conv);
  FlopCount extra = 0;
  if (r == Recompute::full) extra = m.layers * lf.total();           // one more forward per layer
  if (r == Recompute::selective) extra = m.layers * lf.attention;    // the attention core only
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
