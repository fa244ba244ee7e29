// LayerNorm over the last dimension (GPT family). Rows are flattened (N = B*Real, or a
// sequence-parallel shard of them). Forward stores mean and rstd for backward.
#pragma once
#include <cstdint>

namespace loom::cpu {

// out (N, C) = (inp - mean) * rstd * weight + bias; mean (N), rstd (N) = 1/sqrt(var + eps)
// inp (N, C); weight (C); bias (C) or nullptr
template <class Real>
void layernorm_forward(Real* out, Real* mean, Real* rstd, const Real* inp, const Real* weight,
                       const Real* bias, int64_t N, int64_t C, double eps);

// dinp (N, C) +=, dweight (C) +=, dbias (C) += (skipped when nullptr); dout (N, C)
template <class Real>
void layernorm_backward(Real* dinp, Real* dweight, Real* dbias, const Real* dout, const Real* inp,
                        const Real* weight, const Real* mean, const Real* rstd, int64_t N,
                        int64_t C);

}  // namespace loom::cpu
