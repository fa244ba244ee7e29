// Causal self-attention with grouped-query attention (Ainslie et al. 2023): q head h reads kv head
// h / (n_heads / n_kv_heads), as Llama's repeat_kv. This is the "unfused" reference: it stores
// the softmax probabilities (B, n_heads, T, T) for backward (masked entries are 0). With tensor
// parallelism each rank calls it with its own n_heads/tp and n_kv_heads/tp.
#pragma once
#include <cstdint>

#include "executor/cpu/flop_counter.hpp"

namespace loom::cpu {

// out (B, T, n_heads, d) = softmax(q k^T / sqrt(d) + causal mask) v
// att (B, n_heads, T, T): the softmax probabilities, row t has t+1 non-zeros
// q (B, T, n_heads, d), k (B, T, n_kv_heads, d), v (B, T, n_kv_heads, d)
// n_kv_heads must divide n_heads. Adds 4*B*n_heads*T*T*d to flops.attention_flops.
template <class Real>
void attention_forward(Real* out, Real* att, const Real* q, const Real* k, const Real* v, int64_t B,
                       int64_t T, int64_t n_heads, int64_t n_kv_heads, int64_t d,
                       FlopCounter& flops);

// dq (B, T, n_heads, d) +=, dk, dv (B, T, n_kv_heads, d) +=; dout (B, T, n_heads, d);
// att from attention_forward. Adds 8*B*n_heads*T*T*d to flops.attention_flops.
template <class Real>
void attention_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* att,
                        const Real* q, const Real* k, const Real* v, int64_t B, int64_t T,
                        int64_t n_heads, int64_t n_kv_heads, int64_t d, FlopCounter& flops);

}  // namespace loom::cpu
