// Rotary position embedding (Su et al. 2021) applied in place to q and k inside the fused QKV
// projection's output, in the rotate-half convention of executor/cpu/rope.hpp (Llama 3's
// reference code and Hugging Face): within each head of size d, element i pairs with i + d/2 and
// the pair is rotated by the angle t * theta^(-2i/d), i < d/2, t the token's position in its
// sequence. cos and sin are computed per (t, i) in double and rounded to fp32, as the CPU
// reference's tables; the rotation itself is fp32 on the bf16 values.
//
// Layout: qkv (B, T, NH + 2 NKV, d) bf16 as the fused projection writes it (attention.cuh):
// per token NH q heads, then NKV k heads, then NKV v heads. The first NH + NKV heads (q and k)
// are rotated; v is left alone. Nothing is stored for backward: the rotation is a function of
// the position only.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// q, k of qkv rotated in place: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). d even.
Status rope_forward(bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
                    double theta, cudaStream_t stream);

// The inverse rotation (the transpose of an orthogonal one) in place on the q and k gradients of
// dqkv (same layout): (dy1, dy2) -> (dy1 cos + dy2 sin, dy2 cos - dy1 sin). Unlike the CPU
// reference's rope_backward, which adds into a separate buffer, this overwrites: dqkv holds the
// gradient of the rotated q and k on entry and of the projection's q and k on exit.
Status rope_backward(bf16* dqkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
                     double theta, cudaStream_t stream);

}  // namespace loom::cuda
