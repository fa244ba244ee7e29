// GELU, tanh approximation as GPT-2 (Hendrycks & Gimpel 2016, eq. for the fast approximation):
// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Elementwise over n values.
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (n) = gelu(inp (n))
template <class Real>
void gelu_forward(Real* out, const Real* inp, int64_t n);

// dinp (n) += gelu'(inp) * dout
template <class Real>
void gelu_backward(Real* dinp, const Real* inp, const Real* dout, int64_t n);

}  // namespace loom::cpu
