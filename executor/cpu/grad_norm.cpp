#include "executor/cpu/grad_norm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace loom::cpu {
namespace {
constexpr int64_t kChunk = 1 << 14;  // fixed, so the summation tree never depends on threads
}  // namespace

template <class Real>
double grad_norm_squared(const Real* grads, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (chunks > 1)
#endif
  for (int64_t c = 0; c < chunks; c++) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; i++) s += static_cast<double>(grads[i]) * grads[i];
    partial[c] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

double clip_scale(double norm, double max_norm) {
  return norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

template <class Real>
void scale_grads(Real* grads, int64_t n, double scale) {
  const Real s = static_cast<Real>(scale);
  for (int64_t i = 0; i < n; i++) grads[i] *= s;
}

template <class Real>
double clip_grad_norm(Real* grads, int64_t n, double max_norm) {
  const double norm = std::sqrt(grad_norm_squared(grads, n));
  const double scale = clip_scale(norm, max_norm);
  if (scale != 1.0) scale_grads(grads, n, scale);
  return norm;
}

template double grad_norm_squared<float>(const float*, int64_t);
template double grad_norm_squared<double>(const double*, int64_t);
template void scale_grads<float>(float*, int64_t, double);
template void scale_grads<double>(double*, int64_t, double);
template double clip_grad_norm<float>(float*, int64_t, double);
template double clip_grad_norm<double>(double*, int64_t, double);

}  // namespace loom::cpu
