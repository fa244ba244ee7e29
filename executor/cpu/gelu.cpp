#include "executor/cpu/gelu.hpp"

#include <cmath>

namespace loom::cpu {
namespace {
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)
constexpr double kCubic = 0.044715;
}  // namespace

template <class Real>
void gelu_forward(Real* out, const Real* inp, int64_t n) {
  const Real s = static_cast<Real>(kSqrt2OverPi);
  const Real c = static_cast<Real>(kCubic);
  for (int64_t i = 0; i < n; i++) {
    const Real x = inp[i];
    out[i] = Real{0.5} * x * (Real{1} + std::tanh(s * (x + c * x * x * x)));
  }
}

template <class Real>
void gelu_backward(Real* dinp, const Real* inp, const Real* dout, int64_t n) {
  const Real s = static_cast<Real>(kSqrt2OverPi);
  const Real c = static_cast<Real>(kCubic);
  for (int64_t i = 0; i < n; i++) {
    const Real x = inp[i];
    const Real th = std::tanh(s * (x + c * x * x * x));
    const Real sech2 = Real{1} - th * th;
    const Real local =
        Real{0.5} * (Real{1} + th) + Real{0.5} * x * sech2 * s * (Real{1} + Real{3} * c * x * x);
    dinp[i] += local * dout[i];
  }
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t);
template void gelu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace loom::cpu
