// The small kernels the CUDA compute backend (compute_cuda.cpp) adds around loom's GEMMs and
// fused kernels: casts between the trainer's fp32 buffers and the bf16 working copies, the fp32
// residual stream's adds, the vocab-parallel embedding and cross-entropy (Megatron's
// VocabParallelEmbedding and _VocabParallelCrossEntropy, as executor/stage.cpp runs them on the
// CPU), and the optimizer on fp32 ranges (the same formulas as executor/cpu/adamw.cpp and
// grad_norm.cpp). Host-only declarations (common.cuh): compute_cuda.cpp compiles without nvcc.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// dst (n) = bf16(src (n)), round to nearest even.
Status cast_to_bf16(bf16* dst, const float* src, int64_t n, cudaStream_t stream);
// dst (n) = float(src (n)) (exact).
Status cast_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t stream);
// dst (n) += float(src (n)).
Status add_bf16_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t stream);
// dst (n) += src (n), fp32.
Status add_f32(float* dst, const float* src, int64_t n, cudaStream_t stream);
// out (rows, C) = x + r + bias (bias (C) may be nullptr), fp32; out_bf16 (rows, C) = bf16(out)
// when not nullptr (the next norm's input).
Status residual_add(float* out, bf16* out_bf16, const float* x, const float* r, const float* bias, int64_t rows,
                    int64_t C, cudaStream_t stream);
// g (C) += column sums of d (rows, C), fp32, each column summed in row order (deterministic).
Status column_sum_f32(float* g, const float* d, int64_t rows, int64_t C, cudaStream_t stream);

// Vocab-parallel embedding. part (N, C) = wte rows tokens[n] - v0 when in [0, Vr), else 0.
Status embed_gather(float* part, const float* wte, const int32_t* tokens, int64_t N, int64_t C, int64_t v0,
                    int64_t Vr, cudaStream_t stream);
// x (rows, C) = r + wpe[(row0 + i) % T] (wpe may be nullptr: x = r).
Status add_positions(float* x, const float* r, const float* wpe, int64_t rows, int64_t C, int64_t row0, int64_t T,
                     cudaStream_t stream);
// dwte[tokens[n] - v0] += d[n] for the tokens in [0, Vr); dwpe[(row0 + i) % T] += dx[i] over
// `rows` rows (dwpe may be nullptr). fp32 atomics: rows that share a token or a position are
// summed in an unspecified order.
Status embed_scatter(float* dwte, const float* d, const int32_t* tokens, int64_t N, int64_t C, int64_t v0, int64_t Vr,
                     cudaStream_t stream);
Status position_scatter(float* dwpe, const float* dx, int64_t rows, int64_t C, int64_t row0, int64_t T,
                        cudaStream_t stream);

// Cross-entropy over vocab shards, in three passes around the tp all-reduces (stage.cpp's
// head_forward): logits (N, ld) fp32, valid columns [0, valid).
// mx (N) = max over valid columns.
Status row_max(float* mx, const float* logits, int64_t N, int64_t ld, int64_t valid, cudaStream_t stream);
// logits -> exp(logits - mx) in place (0 past valid); sum (N) = their sums; tgt (N) = the target's
// logit when it is in this shard ([v0, v0 + valid)), else 0.
Status exp_and_sum(float* logits, float* sum, float* tgt, const float* mx, const int32_t* targets, int64_t N,
                   int64_t ld, int64_t valid, int64_t v0, cudaStream_t stream);
// probs /= sum (in place); loss (N) = log(sum) + mx - tgt.
Status normalize_and_loss(float* probs, float* loss, const float* sum, const float* mx, const float* tgt, int64_t N,
                          int64_t ld, int64_t valid, cudaStream_t stream);
// dlogits (N, ld) bf16 = (probs - onehot(targets - v0)) * w for valid columns, 0 past them.
Status crossentropy_grad(bf16* dlogits, const float* probs, const int32_t* targets, int64_t N, int64_t ld,
                         int64_t valid, int64_t v0, float w, cudaStream_t stream);

// partial (kSumSquaresBlocks) = per-block sums of squares of g (n), in double, fixed split.
constexpr int kSumSquaresBlocks = 256;
Status sum_squares_partial(double* partial, const float* g, int64_t n, cudaStream_t stream);
// g (n) *= s
Status scale_f32(float* g, int64_t n, float s, cudaStream_t stream);
// AdamW on fp32 ranges (executor/cpu/adamw.cpp's formula, fp32 arithmetic, the bias
// corrections computed on the host in double as there).
struct AdamWRange {
  float lr, beta1, beta2, eps, weight_decay, correction1, correction2;
};
Status adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWRange& h, cudaStream_t stream);

}  // namespace loom::cuda
