#include "executor/cpu/layernorm.hpp"

#include <cmath>

namespace loom::cpu {

template <class Real>
void layernorm_forward(Real* out, Real* mean, Real* rstd, const Real* inp, const Real* weight,
                       const Real* bias, int64_t N, int64_t C, double eps) {
  for (int64_t n = 0; n < N; n++) {
    const Real* x = inp + n * C;  // (C)
    Real m = 0;
    for (int64_t i = 0; i < C; i++) m += x[i];
    m /= static_cast<Real>(C);
    Real v = 0;  // two-pass variance: no cancellation from E[x^2] - E[x]^2
    for (int64_t i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
    v /= static_cast<Real>(C);
    const Real s = Real{1} / std::sqrt(v + static_cast<Real>(eps));
    Real* y = out + n * C;  // (C)
    for (int64_t i = 0; i < C; i++) {
      y[i] = (x[i] - m) * s * weight[i] + (bias != nullptr ? bias[i] : Real{0});
    }
    mean[n] = m;
    rstd[n] = s;
  }
}

template <class Real>
void layernorm_backward(Real* dinp, Real* dweight, Real* dbias, const Real* dout, const Real* inp,
                        const Real* weight, const Real* mean, const Real* rstd, int64_t N,
                        int64_t C) {
  // dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dy * weight
  for (int64_t n = 0; n < N; n++) {
    const Real* dy = dout + n * C;
    const Real* x = inp + n * C;
    Real* dx = dinp + n * C;
    const Real m = mean[n];
    const Real s = rstd[n];
    Real dnorm_mean = 0;
    Real dnorm_norm_mean = 0;
    for (int64_t i = 0; i < C; i++) {
      const Real norm = (x[i] - m) * s;
      const Real dnorm = weight[i] * dy[i];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= static_cast<Real>(C);
    dnorm_norm_mean /= static_cast<Real>(C);
    for (int64_t i = 0; i < C; i++) {
      const Real norm = (x[i] - m) * s;
      const Real dnorm = weight[i] * dy[i];
      if (dbias != nullptr) dbias[i] += dy[i];
      dweight[i] += norm * dy[i];
      dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

#define LOOM_INSTANTIATE(Real)                                                          \
  template void layernorm_forward<Real>(Real*, Real*, Real*, const Real*, const Real*,  \
                                        const Real*, int64_t, int64_t, double);         \
  template void layernorm_backward<Real>(Real*, Real*, Real*, const Real*, const Real*, \
                                         const Real*, const Real*, const Real*, int64_t, int64_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
