// SwiGLU gate (Shazeer 2020, as Llama's MLP): out = silu(gate) * up, silu(x) = x * sigmoid(x).
// gate and up are the outputs of two separate column-parallel linears (N, F), so a tensor
// parallel shard of F works elementwise as is. Elementwise over n = N*F values.
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (n) = silu(gate (n)) * up (n)
template <class Real>
void swiglu_forward(Real* out, const Real* gate, const Real* up, int64_t n);

// dgate (n) +=, dup (n) +=; dout (n)
template <class Real>
void swiglu_backward(Real* dgate, Real* dup, const Real* dout, const Real* gate, const Real* up,
                     int64_t n);

}  // namespace loom::cpu
