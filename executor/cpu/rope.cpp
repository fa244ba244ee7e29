#include "executor/cpu/rope.hpp"

#include <cmath>
#include <vector>

namespace loom::cpu {
namespace {

// cos and sin of every (t, i) angle, (T, d/2) each, computed in double once per call.
template <class Real>
void rope_tables(std::vector<Real>& cos_t, std::vector<Real>& sin_t, int64_t T, int64_t d,
                 double theta, int64_t pos0) {
  const int64_t half = d / 2;
  cos_t.resize(static_cast<size_t>(T * half));
  sin_t.resize(static_cast<size_t>(T * half));
  for (int64_t t = 0; t < T; t++) {
    for (int64_t i = 0; i < half; i++) {
      const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const double angle = static_cast<double>(pos0 + t) * freq;
      cos_t[t * half + i] = static_cast<Real>(std::cos(angle));
      sin_t[t * half + i] = static_cast<Real>(std::sin(angle));
    }
  }
}

}  // namespace

template <class Real>
void rope_forward(Real* out, const Real* inp, int64_t B, int64_t T, int64_t n_heads, int64_t d,
                  double theta, int64_t pos0) {
  std::vector<Real> cos_t, sin_t;
  rope_tables(cos_t, sin_t, T, d, theta, pos0);
  const int64_t half = d / 2;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const Real* c = cos_t.data() + t * half;
      const Real* s = sin_t.data() + t * half;
      for (int64_t h = 0; h < n_heads; h++) {
        const int64_t off = ((b * T + t) * n_heads + h) * d;
        for (int64_t i = 0; i < half; i++) {
          const Real x1 = inp[off + i];
          const Real x2 = inp[off + half + i];
          out[off + i] = x1 * c[i] - x2 * s[i];
          out[off + half + i] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }
}

template <class Real>
void rope_backward(Real* dinp, const Real* dout, int64_t B, int64_t T, int64_t n_heads, int64_t d,
                   double theta, int64_t pos0) {
  std::vector<Real> cos_t, sin_t;
  rope_tables(cos_t, sin_t, T, d, theta, pos0);
  const int64_t half = d / 2;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const Real* c = cos_t.data() + t * half;
      const Real* s = sin_t.data() + t * half;
      for (int64_t h = 0; h < n_heads; h++) {
        const int64_t off = ((b * T + t) * n_heads + h) * d;
        for (int64_t i = 0; i < half; i++) {
          const Real dy1 = dout[off + i];
          const Real dy2 = dout[off + half + i];
          dinp[off + i] += dy1 * c[i] + dy2 * s[i];
          dinp[off + half + i] += dy2 * c[i] - dy1 * s[i];
        }
      }
    }
  }
}

template void rope_forward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, double,
                                  int64_t);
template void rope_forward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t,
                                   double, int64_t);
template void rope_backward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, double,
                                   int64_t);
template void rope_backward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t,
                                    double, int64_t);

}  // namespace loom::cpu
