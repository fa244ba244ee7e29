// Token (+ learned position) embedding. Forward overwrites `out`; backward adds into dwte/dwpe
// (every backward in executor/cpu accumulates with +=, so tied embeddings and gradient
// accumulation over micro-batches need no special case).
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (B, Real, C) = wte[tokens[b, t]] + wpe[t]
// tokens (B, Real) in [0, rows of wte); wte (Vp, C); wpe (>= Real, C) or nullptr (llama: no
// positions)
template <class Real>
void encoder_forward(Real* out, const int32_t* tokens, const Real* wte, const Real* wpe, int64_t B,
                     int64_t T, int64_t C);

// dwte (Vp, C) +=, dwpe (>= Real, C) += (skipped when nullptr); dout (B, Real, C)
template <class Real>
void encoder_backward(Real* dwte, Real* dwpe, const Real* dout, const int32_t* tokens, int64_t B,
                      int64_t T, int64_t C);

}  // namespace loom::cpu
