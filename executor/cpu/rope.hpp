// Rotary position embedding (Su et al. 2021) in the rotate-half convention of Llama 3's
// reference code and Hugging Face: within each head of dim d, element i pairs with i + d/2 and the
// pair is rotated by angle pos * theta^(-2i/d), i < d/2. (Llama 3.1's long-context frequency
// rescaling is not applied.) Applied to q (n_heads = heads) and k (n_heads = kv_heads) alike.
#pragma once
#include <cstdint>

namespace loom::cpu {

constexpr double kRopeThetaLlama3 = 500000.0;
constexpr double kRopeThetaDefault = 10000.0;

// out (B, T, n_heads, d) = rotate(inp (B, T, n_heads, d)); position of (b, t) is pos0 + t.
// d must be even. out and inp may alias (in-place).
template <class Real>
void rope_forward(Real* out, const Real* inp, int64_t B, int64_t T, int64_t n_heads, int64_t d,
                  double theta, int64_t pos0 = 0);

// dinp (B, T, n_heads, d) += rotate^T(dout); the rotation is orthogonal so its transpose is the
// rotation by -angle.
template <class Real>
void rope_backward(Real* dinp, const Real* dout, int64_t B, int64_t T, int64_t n_heads, int64_t d,
                   double theta, int64_t pos0 = 0);

}  // namespace loom::cpu
