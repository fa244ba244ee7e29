#include "executor/cpu/encoder.hpp"

namespace loom::cpu {

template <class Real>
void encoder_forward(Real* out, const int32_t* tokens, const Real* wte, const Real* wpe, int64_t B,
                     int64_t T, int64_t C) {
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      Real* out_bt = out + (b * T + t) * C;                       // (C)
      const Real* wte_ix = wte + int64_t{tokens[b * T + t]} * C;  // (C)
      for (int64_t i = 0; i < C; i++) out_bt[i] = wte_ix[i];
      if (wpe != nullptr) {
        const Real* wpe_t = wpe + t * C;  // (C)
        for (int64_t i = 0; i < C; i++) out_bt[i] += wpe_t[i];
      }
    }
  }
}

template <class Real>
void encoder_backward(Real* dwte, Real* dwpe, const Real* dout, const int32_t* tokens, int64_t B,
                      int64_t T, int64_t C) {
  // Sequential over (b, t): a token repeated in the batch adds into the same row in a fixed order.
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const Real* dout_bt = dout + (b * T + t) * C;
      Real* dwte_ix = dwte + int64_t{tokens[b * T + t]} * C;
      for (int64_t i = 0; i < C; i++) dwte_ix[i] += dout_bt[i];
      if (dwpe != nullptr) {
        Real* dwpe_t = dwpe + t * C;
        for (int64_t i = 0; i < C; i++) dwpe_t[i] += dout_bt[i];
      }
    }
  }
}

#define LOOM_INSTANTIATE(Real)                                                                  \
  template void encoder_forward<Real>(Real*, const int32_t*, const Real*, const Real*, int64_t, \
                                      int64_t, int64_t);                                        \
  template void encoder_backward<Real>(Real*, Real*, const Real*, const int32_t*, int64_t,      \
                                       int64_t, int64_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
