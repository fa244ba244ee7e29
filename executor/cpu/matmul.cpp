#include "executor/cpu/matmul.hpp"

#include <algorithm>
#include <vector>

namespace loom::cpu {
namespace {

// Register tile: MR rows of c by NR columns, accumulated over the whole K in registers.
constexpr int64_t kMR = 4;
constexpr int64_t kNR = 16;
// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMinWork = 1 << 15;

// c[m0:m0+MR, n0:n0+nr] += a[m0:m0+MR, :] @ panel, panel (K, kNR) zero-padded past nr.
template <class Real, int64_t MR>
void micro_tile(int64_t K, const Real* a, int64_t a_rs, int64_t a_cs, const Real* panel, Real* c,
                int64_t ldc, int64_t nr) {
  Real acc[MR][kNR] = {};
  for (int64_t i = 0; i < MR; i++) {
    for (int64_t j = 0; j < nr; j++) acc[i][j] = c[i * ldc + j];
  }
  for (int64_t k = 0; k < K; k++) {
    const Real* bk = panel + k * kNR;  // (kNR)
    for (int64_t i = 0; i < MR; i++) {
      const Real aik = a[i * a_rs + k * a_cs];
      for (int64_t j = 0; j < kNR; j++) acc[i][j] += aik * bk[j];
    }
  }
  for (int64_t i = 0; i < MR; i++) {
    for (int64_t j = 0; j < nr; j++) c[i * ldc + j] = acc[i][j];
  }
}

}  // namespace

template <class Real>
void gemm_accumulate(int64_t M, int64_t Nc, int64_t K, const Real* a, int64_t a_rs, int64_t a_cs,
                     const Real* b, int64_t b_rs, int64_t b_cs, Real* c, int64_t ldc) {
  if (M <= 0 || Nc <= 0 || K <= 0) return;
  const int64_t n_blocks = (Nc + kNR - 1) / kNR;
  const int64_t m_blocks = (M + kMR - 1) / kMR;
  const bool parallel = M * Nc * K >= kParallelMinWork;
  (void)parallel;  // unused without OpenMP
  // Pack b into contiguous (n_blocks, K, kNR) panels so the inner loop reads unit stride
  // whatever b's layout (weight^T, weight, or activations).
  std::vector<Real> packed(static_cast<size_t>(n_blocks * K * kNR), Real{0});
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (int64_t nb = 0; nb < n_blocks; nb++) {
    const int64_t n0 = nb * kNR;
    const int64_t nr = std::min(kNR, Nc - n0);
    Real* panel = packed.data() + nb * K * kNR;
    for (int64_t k = 0; k < K; k++) {
      for (int64_t j = 0; j < nr; j++) panel[k * kNR + j] = b[k * b_rs + (n0 + j) * b_cs];
    }
  }
#if defined(_OPENMP)
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
#endif
  for (int64_t mb = 0; mb < m_blocks; mb++) {
    for (int64_t nb = 0; nb < n_blocks; nb++) {
      const int64_t m0 = mb * kMR;
      const int64_t n0 = nb * kNR;
      const int64_t nr = std::min(kNR, Nc - n0);
      const Real* panel = packed.data() + nb * K * kNR;
      if (m0 + kMR <= M) {
        micro_tile<Real, kMR>(K, a + m0 * a_rs, a_rs, a_cs, panel, c + m0 * ldc + n0, ldc, nr);
      } else {
        for (int64_t m = m0; m < M; m++) {
          micro_tile<Real, 1>(K, a + m * a_rs, a_rs, a_cs, panel, c + m * ldc + n0, ldc, nr);
        }
      }
    }
  }
}

template <class Real>
void matmul_forward(Real* out, const Real* inp, const Real* weight, const Real* bias, int64_t N,
                    int64_t C, int64_t OC, FlopCounter& flops) {
  for (int64_t n = 0; n < N; n++) {
    Real* out_n = out + n * OC;  // (OC)
    for (int64_t o = 0; o < OC; o++) out_n[o] = bias != nullptr ? bias[o] : Real{0};
  }
  // out (N, OC) += inp (N, C) @ weight^T (C, OC): b(k, n) = weight[n*C + k]
  gemm_accumulate(N, OC, C, inp, C, 1, weight, 1, C, out, OC);
  flops.matmul_flops += 2 * N * OC * C;
}

template <class Real>
void matmul_backward(Real* dinp, Real* dweight, Real* dbias, const Real* dout, const Real* inp,
                     const Real* weight, int64_t N, int64_t C, int64_t OC, FlopCounter& flops) {
  if (dinp != nullptr) {
    // dinp (N, C) += dout (N, OC) @ weight (OC, C)
    gemm_accumulate(N, C, OC, dout, OC, 1, weight, C, 1, dinp, C);
    flops.matmul_flops += 2 * N * OC * C;
  }
  if (dweight != nullptr) {
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C): a(m, k) = dout[k*OC + m]
    gemm_accumulate(OC, C, N, dout, 1, OC, inp, C, 1, dweight, C);
    flops.matmul_flops += 2 * N * OC * C;
  }
  if (dbias != nullptr) {
    for (int64_t n = 0; n < N; n++) {
      const Real* dout_n = dout + n * OC;
      for (int64_t o = 0; o < OC; o++) dbias[o] += dout_n[o];
    }
  }
}

#define LOOM_INSTANTIATE(Real)                                                                    \
  template void gemm_accumulate<Real>(int64_t, int64_t, int64_t, const Real*, int64_t, int64_t,   \
                                      const Real*, int64_t, int64_t, Real*, int64_t);             \
  template void matmul_forward<Real>(Real*, const Real*, const Real*, const Real*, int64_t,       \
                                     int64_t, int64_t, FlopCounter&);                             \
  template void matmul_backward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*, \
                                      int64_t, int64_t, int64_t, FlopCounter&);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
