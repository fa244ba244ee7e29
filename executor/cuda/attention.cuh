// Causal self-attention, a fused flash-style kernel (Dao 2023, FlashAttention-2's loop order) on
// the tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), head size HS = 64 or 128
// (GPT-3 175B, Llama 3 and Mistral use 128), causal, T any multiple of 64 (8192 and beyond: the
// memory is linear in T).
//
// It reads q, k, v straight from the fused QKV projection, laid out (B, T, NH + 2 NKV, HS) as
// the GEMM writes it: per token NH q heads, then NKV k heads, then NKV v heads (no permute
// kernels); with NKV == NH that is llm.c's (B, T, 3, NH, HS). Grouped-query attention (Ainslie et
// al. 2023): q head h reads kv head h / (NH / NKV), Llama's repeat_kv and the CPU reference's
// (executor/cpu/attention.hpp) convention. It writes out (B, T, NH, HS), which the output
// projection reads as is. The T x T score matrix never reaches memory: forward keeps a running
// max and sum per query row and stores, for backward, only the output and the log-sum-exp per
// (b, head, query) (4 bytes each); backward recomputes the probabilities tile by tile. What
// backward needs is therefore q, k, v (the projection output), the attention output and the
// B x NH x T fp32 log-sum-exp: no T x T tensor at any sequence length.
//
// The head size is a template parameter of every kernel: score tiles stay 64 x 64; Q K^T
// contracts over HS / 16 chunks and the P V, dQ, dK, dV accumulators are HS / 8 tiles wide.
// Each kernel's five 64 x HS tiles are dynamic shared memory (46 KB at 64, 87 KB at 128). At HS
// 128 the backward kv kernel holds dK and dV (16 x 128 fp32 each) per warp in registers and may
// spill; FlashAttention-2 moves to 128-row blocks there, a tuning left to a GPU.
//
// K/V (and, in backward, Q/dO) tiles are double-buffered through cp.async, so the next tile's
// copy overlaps the current tile's tensor-core work.
//
// Backward is two kernels with no atomics, so it is deterministic: one pass over key blocks
// computes dK and dV (each thread block owns 64 keys of one kv head and walks, for each of the
// NH / NKV q heads that share it in turn, the query blocks at or after them, so the group's sum
// stays in registers in a fixed order), one pass over query blocks computes dQ (each owns 64
// queries of one q head and walks the key blocks at or before them). That recomputes QK^T and
// dO V^T twice (7 products per tile instead of 5) in exchange for no dQ atomics and no fp32 dQ
// buffer.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

constexpr int64_t kAttentionHeadSize = 64;  // the GPT-2 family's; 128 is the other supported
constexpr int64_t kAttentionBlock = 64;  // T must be a multiple of this

// out (B, T, NH, HS) bf16; lse (B, NH, T) fp32: log2-sum-exp2 of the scaled scores
// (log2(e) / sqrt(HS) * q.k), the softmax normalizer backward needs.
// qkv (B, T, NH + 2 NKV, HS) bf16; NKV divides NH.
Status attention_forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, cudaStream_t stream);
inline Status attention_forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T, int64_t NH,
                                int64_t NKV, cudaStream_t stream) {
  return attention_forward(out, lse, qkv, B, T, NH, NKV, kAttentionHeadSize, stream);
}

// dqkv (B, T, NH + 2 NKV, HS) overwritten with the gradients of q, k and v (each kv head's
// gradient summed over the NH / NKV q heads that read it). dout (B, T, NH, HS); out, lse from
// attention_forward; delta: scratch of B*NH*T floats (rowsum(dout * out)).
Status attention_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv,
                          const bf16* out, const float* lse, int64_t B, int64_t T, int64_t NH,
                          int64_t NKV, int64_t HS, cudaStream_t stream);
inline Status attention_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv,
                                 const bf16* out, const float* lse, int64_t B, int64_t T, int64_t NH,
                                 int64_t NKV, cudaStream_t stream) {
  return attention_backward(dqkv, delta, dout, qkv, out, lse, B, T, NH, NKV, kAttentionHeadSize, stream);
}

// Multi-head attention (NKV == NH, the GPT family): qkv (B, T, 3, NH, HS).
inline Status attention_forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T,
                                int64_t NH, cudaStream_t stream) {
  return attention_forward(out, lse, qkv, B, T, NH, NH, stream);
}
inline Status attention_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv,
                                 const bf16* out, const float* lse, int64_t B, int64_t T,
                                 int64_t NH, cudaStream_t stream) {
  return attention_backward(dqkv, delta, dout, qkv, out, lse, B, T, NH, NH, stream);
}

}  // namespace loom::cuda
