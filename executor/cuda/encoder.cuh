// Token + learned position embedding (GPT family), bf16 activations, fp32 gradients.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// out (B, T, C) = wte[tokens[b, t]] + wpe[t]; tokens (B, T) in [0, rows of wte); C % 8 == 0.
Status encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe,
                       int64_t B, int64_t T, int64_t C, cudaStream_t stream);

// dwpe (T, C) += sum over b of dout (deterministic: one thread per element, b in order);
// dwte[tokens[b, t]] += dout[b, t] with fp32 atomics: rows hit by several positions are summed
// in an unspecified order (the only non-deterministic sum of a step).
Status encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens,
                        int64_t B, int64_t T, int64_t C, cudaStream_t stream);

}  // namespace loom::cuda
