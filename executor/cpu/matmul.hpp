// Linear layer: out = inp @ weight^T + bias, weight stored (OC, C) as nn.Linear. Shapes are
// explicit so tensor parallelism can call it on a column shard (OC/tp rows of weight) or a row
// shard (C/tp columns of weight, inp sharded alike) without any change.
//
// Determinism: every output element is summed by one thread in increasing k order (starting
// from its current value), so results are bit-identical run to run and for any thread count.
#pragma once
#include <cstdint>

#include "executor/cpu/flop_counter.hpp"

namespace loom::cpu {

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC); bias may be nullptr.
// Adds 2*N*OC*C to flops.matmul_flops.
template <class Real>
void matmul_forward(Real* out, const Real* inp, const Real* weight, const Real* bias, int64_t N,
                    int64_t C, int64_t OC, FlopCounter& flops);

// dinp (N, C) += dout @ weight; dweight (OC, C) += dout^T @ inp; dbias (OC) += sum_n dout.
// Any of dinp, dweight, dbias may be nullptr (not computed, not counted).
// Adds 2*N*OC*C to flops.matmul_flops for each of dinp and dweight computed.
template <class Real>
void matmul_backward(Real* dinp, Real* dweight, Real* dbias, const Real* dout, const Real* inp,
                     const Real* weight, int64_t N, int64_t C, int64_t OC, FlopCounter& flops);

// The kernel behind both: c (M, Nc) += a (M, K) @ b (K, Nc), any strides:
// a(m, k) = a[m*a_rs + k*a_cs], b(k, n) = b[k*b_rs + n*b_cs], c(m, n) = c[m*ldc + n].
// Each c(m, n) adds its K products in increasing k onto its current value. Counts nothing.
template <class Real>
void gemm_accumulate(int64_t M, int64_t Nc, int64_t K, const Real* a, int64_t a_rs, int64_t a_cs,
                     const Real* b, int64_t b_rs, int64_t b_cs, Real* c, int64_t ldc);

}  // namespace loom::cpu
