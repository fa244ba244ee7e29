// LayerNorm over the last dimension (GPT family), bf16 in and out, statistics in fp32; the
// residual add that precedes every LayerNorm of a pre-LN transformer is fused into the forward
// (llm.c's fused_residual_forward), so the residual stream is read once.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// residual (N, C) = a + b (when b != nullptr; else residual is not written and a is normalized)
// out (N, C) = (x - mean) * rstd * weight + bias, x = a + b (rounded to bf16 as stored) or a
// mean, rstd (N) fp32, saved for backward. C a multiple of 8.
Status layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                         const bf16* b, const bf16* weight, const bf16* bias, int64_t N, int64_t C,
                         double eps, cudaStream_t stream);

// dinp (N, C) += the input gradient (bf16, read-modify-write: the residual-stream gradient);
// dweight, dbias (C) += fp32, deterministic (fixed row splits summed in order) through
// `scratch` of layernorm_scratch_floats(N, C) floats. dout, inp (N, C); mean, rstd from forward.
Status layernorm_backward(bf16* dinp, float* dweight, float* dbias, float* scratch,
                          const bf16* dout, const bf16* inp, const bf16* weight, const float* mean,
                          const float* rstd, int64_t N, int64_t C, cudaStream_t stream);
int64_t layernorm_scratch_floats(int64_t N, int64_t C);

}  // namespace loom::cuda
