// RMSNorm over the last dimension (Llama family; Zhang & Sennrich 2019), bf16 in and out, the
// reciprocal RMS in fp32 kept for backward, the same formulas as executor/cpu/rmsnorm.hpp. As
// layernorm.cuh, the residual add that precedes every norm of a pre-norm transformer is fused
// into the forward (llm.c's fused_residual_forward), so the residual stream is read once.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// residual (N, C) = a + b (when b != nullptr; else residual is not written and a is normalized)
// out (N, C) = x * rstd * weight, x = a + b (rounded to bf16 as stored) or a;
// rstd (N) = 1 / sqrt(mean(x^2) + eps), fp32, saved for backward. C a multiple of 8.
Status rmsnorm_forward(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b,
                       const bf16* weight, int64_t N, int64_t C, double eps, cudaStream_t stream);

// dinp (N, C) += the input gradient (bf16, read-modify-write: the residual-stream gradient);
// dweight (C) += sum over rows of dout * x * rstd, fp32, deterministic (fixed row splits summed
// in order) through `scratch` of rmsnorm_scratch_floats(N, C) floats. dout, inp (N, C); rstd
// from forward.
Status rmsnorm_backward(bf16* dinp, float* dweight, float* scratch, const bf16* dout,
                        const bf16* inp, const bf16* weight, const float* rstd, int64_t N,
                        int64_t C, cudaStream_t stream);
int64_t rmsnorm_scratch_floats(int64_t N, int64_t C);

}  // namespace loom::cuda
