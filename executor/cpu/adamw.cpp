#include "executor/cpu/adamw.hpp"

#include <cmath>

namespace loom::cpu {

template <class Real>
void adamw_step(Real* params, const Real* grads, Real* m, Real* v, int64_t n, int64_t step,
                const AdamWConfig& config) {
  const Real b1 = static_cast<Real>(config.beta1);
  const Real b2 = static_cast<Real>(config.beta2);
  const Real lr = static_cast<Real>(config.lr);
  const Real eps = static_cast<Real>(config.eps);
  const Real wd = static_cast<Real>(config.weight_decay);
  const Real correction1 =
      static_cast<Real>(1.0 - std::pow(config.beta1, static_cast<double>(step)));
  const Real correction2 =
      static_cast<Real>(1.0 - std::pow(config.beta2, static_cast<double>(step)));
  for (int64_t i = 0; i < n; i++) {
    const Real g = grads[i];
    m[i] = b1 * m[i] + (Real{1} - b1) * g;
    v[i] = b2 * v[i] + (Real{1} - b2) * g * g;
    const Real m_hat = m[i] / correction1;
    const Real v_hat = v[i] / correction2;
    params[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * params[i]);
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, int64_t,
                                const AdamWConfig&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                 const AdamWConfig&);

}  // namespace loom::cpu
