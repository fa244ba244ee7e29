#include "executor/cpu/swiglu.hpp"

#include <cmath>

namespace loom::cpu {

template <class Real>
void swiglu_forward(Real* out, const Real* gate, const Real* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const Real g = gate[i];
    const Real sig = Real{1} / (Real{1} + std::exp(-g));
    out[i] = g * sig * up[i];
  }
}

template <class Real>
void swiglu_backward(Real* dgate, Real* dup, const Real* dout, const Real* gate, const Real* up,
                     int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const Real g = gate[i];
    const Real sig = Real{1} / (Real{1} + std::exp(-g));
    const Real silu = g * sig;
    const Real dsilu = sig * (Real{1} + g * (Real{1} - sig));  // d/dg [g sigmoid(g)]
    dgate[i] += dout[i] * up[i] * dsilu;
    dup[i] += dout[i] * silu;
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*,
                                      int64_t);

}  // namespace loom::cpu
