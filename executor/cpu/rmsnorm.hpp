// RMSNorm over the last dimension (Llama family; Zhang & Sennrich 2019): no mean subtraction,
// no bias. Forward stores rstd for backward.
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (N, C) = inp * rstd * weight; rstd (N) = 1/sqrt(mean(inp^2) + eps); inp (N, C); weight (C)
template <class Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* inp, const Real* weight, int64_t N,
                     int64_t C, double eps);

// dinp (N, C) +=, dweight (C) +=; dout (N, C)
template <class Real>
void rmsnorm_backward(Real* dinp, Real* dweight, const Real* dout, const Real* inp,
                      const Real* weight, const Real* rstd, int64_t N, int64_t C);

}  // namespace loom::cpu
