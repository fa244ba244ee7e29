#include "executor/cpu/crossentropy.hpp"

#include <cmath>

namespace loom::cpu {

template <class Real>
void crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int32_t* targets,
                          int64_t N, int64_t V, int64_t Vp) {
  for (int64_t n = 0; n < N; n++) {
    const Real* x = logits + n * Vp;  // (Vp)
    Real* p = probs + n * Vp;         // (Vp)
    Real maxval = x[0];
    for (int64_t i = 1; i < V; i++) maxval = x[i] > maxval ? x[i] : maxval;
    Real sum = 0;
    for (int64_t i = 0; i < V; i++) {
      p[i] = std::exp(x[i] - maxval);
      sum += p[i];
    }
    const Real inv = Real{1} / sum;
    for (int64_t i = 0; i < V; i++) p[i] *= inv;
    for (int64_t i = V; i < Vp; i++) p[i] = 0;
    // log-sum-exp form: stays finite where the target's probability underflows to 0
    losses[n] = maxval + std::log(sum) - x[targets[n]];
  }
}

template <class Real>
void crossentropy_backward(Real* dlogits, const Real* dlosses, const Real* probs,
                           const int32_t* targets, int64_t N, int64_t V, int64_t Vp) {
  for (int64_t n = 0; n < N; n++) {
    Real* dx = dlogits + n * Vp;
    const Real* p = probs + n * Vp;
    const Real dl = dlosses[n];
    const int64_t target = targets[n];
    for (int64_t i = 0; i < V; i++) {
      const Real indicator = i == target ? Real{1} : Real{0};
      dx[i] += (p[i] - indicator) * dl;
    }
  }
}

template void crossentropy_forward<float>(float*, float*, const float*, const int32_t*, int64_t,
                                          int64_t, int64_t);
template void crossentropy_forward<double>(double*, double*, const double*, const int32_t*, int64_t,
                                           int64_t, int64_t);
template void crossentropy_backward<float>(float*, const float*, const float*, const int32_t*,
                                           int64_t, int64_t, int64_t);
template void crossentropy_backward<double>(double*, const double*, const double*, const int32_t*,
                                            int64_t, int64_t, int64_t);

}  // namespace loom::cpu
