// Residual connection: out = a + b, elementwise over n values.
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (n) = a (n) + b (n)
template <class Real>
void residual_forward(Real* out, const Real* a, const Real* b, int64_t n);

// da (n) += dout, db (n) += dout
template <class Real>
void residual_backward(Real* da, Real* db, const Real* dout, int64_t n);

}  // namespace loom::cpu
