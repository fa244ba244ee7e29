// SwiGLU (Shazeer 2020, Llama's MLP), out = silu(gate) * up, silu(x) = x * sigmoid(x), bf16 in
// and out with fp32 arithmetic (executor/cpu/swiglu.hpp). gate and up come from one fused GEMM
// of the (2F, C) weight [gate rows; up rows], so each row of its output is [gate (F) | up (F)]
// (the same concatenation Megatron-core's fused linear_fc1 uses with gated linear units).
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// out (N, F) = silu(gateup[:, :F]) * gateup[:, F:]; gateup (N, 2F). F a multiple of 8.
Status swiglu_forward(bf16* out, const bf16* gateup, int64_t N, int64_t F, cudaStream_t stream);

// dgateup (N, 2F) = [dout * up * silu'(gate) | dout * silu(gate)], overwritten (not added to);
// dout (N, F), gateup (N, 2F) from forward. dgateup may be gateup itself (in place: each thread
// reads its gate and up elements before it writes their gradients), which is how cuda::Gpt uses
// it: the layer's gate|up activation is not read again once its gradient exists.
Status swiglu_backward(bf16* dgateup, const bf16* dout, const bf16* gateup, int64_t N, int64_t F,
                       cudaStream_t stream);

}  // namespace loom::cuda
