#include "executor/cpu/attention.hpp"

#include <cmath>
#include <vector>

namespace loom::cpu {
namespace {
constexpr int64_t kParallelMinWork = 1 << 15;
}  // namespace

template <class Real>
void attention_forward(Real* out, Real* att, const Real* q, const Real* k, const Real* v, int64_t B,
                       int64_t T, int64_t n_heads, int64_t n_kv_heads, int64_t d,
                       FlopCounter& flops) {
  const int64_t group = n_heads / n_kv_heads;  // q heads per kv head
  const Real scale = Real{1} / std::sqrt(static_cast<Real>(d));
  const bool parallel = B * n_heads * T * T * d >= kParallelMinWork;
  (void)parallel;
  // Each (b, h) writes only its own rows of out and att: parallel and deterministic.
#if defined(_OPENMP)
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
#endif
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < n_heads; h++) {
      const int64_t hk = h / group;
      for (int64_t t = 0; t < T; t++) {
        const Real* q_t = q + ((b * T + t) * n_heads + h) * d;  // (d)
        Real* att_t = att + ((b * n_heads + h) * T + t) * T;    // (T)
        Real maxval = -INFINITY;
        for (int64_t t2 = 0; t2 <= t; t2++) {
          const Real* k_t2 = k + ((b * T + t2) * n_kv_heads + hk) * d;
          Real dot = 0;
          for (int64_t i = 0; i < d; i++) dot += q_t[i] * k_t2[i];
          att_t[t2] = dot * scale;
          if (att_t[t2] > maxval) maxval = att_t[t2];
        }
        Real sum = 0;
        for (int64_t t2 = 0; t2 <= t; t2++) {
          att_t[t2] = std::exp(att_t[t2] - maxval);
          sum += att_t[t2];
        }
        const Real inv = Real{1} / sum;
        for (int64_t t2 = 0; t2 <= t; t2++) att_t[t2] *= inv;
        for (int64_t t2 = t + 1; t2 < T; t2++) att_t[t2] = 0;
        Real* out_t = out + ((b * T + t) * n_heads + h) * d;  // (d)
        for (int64_t i = 0; i < d; i++) out_t[i] = 0;
        for (int64_t t2 = 0; t2 <= t; t2++) {
          const Real* v_t2 = v + ((b * T + t2) * n_kv_heads + hk) * d;
          const Real a = att_t[t2];
          for (int64_t i = 0; i < d; i++) out_t[i] += a * v_t2[i];
        }
      }
    }
  }
  flops.attention_flops += 2 * (2 * B * n_heads * T * T * d);  // q k^T and att v
}

template <class Real>
void attention_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* att,
                        const Real* q, const Real* k, const Real* v, int64_t B, int64_t T,
                        int64_t n_heads, int64_t n_kv_heads, int64_t d, FlopCounter& flops) {
  const int64_t group = n_heads / n_kv_heads;
  const Real scale = Real{1} / std::sqrt(static_cast<Real>(d));
  const bool parallel = B * n_heads * T * T * d >= kParallelMinWork;
  (void)parallel;
  // Parallel over (b, kv head): the q heads of one group add into the same dk/dv rows, so they run
  // in order inside one iteration, which keeps the summation order fixed.
#if defined(_OPENMP)
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
#endif
  for (int64_t b = 0; b < B; b++) {
    for (int64_t hk = 0; hk < n_kv_heads; hk++) {
      std::vector<Real> datt(static_cast<size_t>(T));     // d loss / d att row
      std::vector<Real> dpreatt(static_cast<size_t>(T));  // d loss / d (scaled scores) row
      for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
        for (int64_t t = 0; t < T; t++) {
          const Real* att_t = att + ((b * n_heads + h) * T + t) * T;
          const Real* dout_t = dout + ((b * T + t) * n_heads + h) * d;
          const Real* q_t = q + ((b * T + t) * n_heads + h) * d;
          Real* dq_t = dq + ((b * T + t) * n_heads + h) * d;
          // out_t = sum_t2 att[t2] v[t2]  =>  datt[t2] = dout_t . v[t2], dv[t2] += att[t2] dout_t
          for (int64_t t2 = 0; t2 <= t; t2++) {
            const Real* v_t2 = v + ((b * T + t2) * n_kv_heads + hk) * d;
            Real* dv_t2 = dv + ((b * T + t2) * n_kv_heads + hk) * d;
            Real dot = 0;
            for (int64_t i = 0; i < d; i++) {
              dot += dout_t[i] * v_t2[i];
              dv_t2[i] += att_t[t2] * dout_t[i];
            }
            datt[t2] = dot;
          }
          // softmax backward: dpre = att * (datt - sum(att * datt))
          Real att_datt = 0;
          for (int64_t t2 = 0; t2 <= t; t2++) att_datt += att_t[t2] * datt[t2];
          for (int64_t t2 = 0; t2 <= t; t2++) dpreatt[t2] = att_t[t2] * (datt[t2] - att_datt);
          // pre = scale q_t . k[t2]
          for (int64_t t2 = 0; t2 <= t; t2++) {
            const Real* k_t2 = k + ((b * T + t2) * n_kv_heads + hk) * d;
            Real* dk_t2 = dk + ((b * T + t2) * n_kv_heads + hk) * d;
            const Real g = dpreatt[t2] * scale;
            for (int64_t i = 0; i < d; i++) {
              dq_t[i] += g * k_t2[i];
              dk_t2[i] += g * q_t[i];
            }
          }
        }
      }
    }
  }
  // d att = dout v^T, dv = att^T dout, dq = dpre k, dk = dpre^T q
  flops.attention_flops += 4 * (2 * B * n_heads * T * T * d);
}

#define LOOM_INSTANTIATE(Real)                                                                    \
  template void attention_forward<Real>(Real*, Real*, const Real*, const Real*, const Real*,      \
                                        int64_t, int64_t, int64_t, int64_t, int64_t,              \
                                        FlopCounter&);                                            \
  template void attention_backward<Real>(Real*, Real*, Real*, const Real*, const Real*,           \
                                         const Real*, const Real*, const Real*, int64_t, int64_t, \
                                         int64_t, int64_t, int64_t, FlopCounter&);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
