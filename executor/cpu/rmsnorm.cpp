#include "executor/cpu/rmsnorm.hpp"

#include <cmath>

namespace loom::cpu {

template <class Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* inp, const Real* weight, int64_t N,
                     int64_t C, double eps) {
  for (int64_t n = 0; n < N; n++) {
    const Real* x = inp + n * C;
    Real ss = 0;
    for (int64_t i = 0; i < C; i++) ss += x[i] * x[i];
    const Real s = Real{1} / std::sqrt(ss / static_cast<Real>(C) + static_cast<Real>(eps));
    Real* y = out + n * C;
    for (int64_t i = 0; i < C; i++) y[i] = x[i] * s * weight[i];
    rstd[n] = s;
  }
}

template <class Real>
void rmsnorm_backward(Real* dinp, Real* dweight, const Real* dout, const Real* inp,
                      const Real* weight, const Real* rstd, int64_t N, int64_t C) {
  // y_i = w_i x_i s, s = (mean(x^2) + eps)^-1/2, ds/dx_j = -s^3 x_j / C
  // => dx_j = s w_j dy_j - s^3 x_j / C * sum_i(w_i dy_i x_i)
  for (int64_t n = 0; n < N; n++) {
    const Real* dy = dout + n * C;
    const Real* x = inp + n * C;
    Real* dx = dinp + n * C;
    const Real s = rstd[n];
    Real dot = 0;
    for (int64_t i = 0; i < C; i++) dot += weight[i] * dy[i] * x[i];
    const Real k = s * s * s * dot / static_cast<Real>(C);
    for (int64_t i = 0; i < C; i++) {
      dweight[i] += dy[i] * x[i] * s;
      dx[i] += s * weight[i] * dy[i] - k * x[i];
    }
  }
}

#define LOOM_INSTANTIATE(Real)                                                                  \
  template void rmsnorm_forward<Real>(Real*, Real*, const Real*, const Real*, int64_t, int64_t, \
                                      double);                                                  \
  template void rmsnorm_backward<Real>(Real*, Real*, const Real*, const Real*, const Real*,     \
                                       const Real*, int64_t, int64_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
