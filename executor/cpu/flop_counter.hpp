// GEMM FLOP accounting for the CPU executor, the check on the cost model's FLOPs (equal to the
// FLOP for every plan of tests/executor/test_parallel.cpp's matrix):
// every matrix product adds 2*M*N*K to a counter the caller passes in, so the executor's count
// can be compared to the cost model's to the FLOP. No global state: one counter per run/rank.
#pragma once
#include <cstdint>

namespace loom::cpu {

struct FlopCounter {
  // matmul_forward / matmul_backward: 2*M*N*K per product (forward: out; backward: dinp and
  // dweight, each counted only when requested). Bias adds are not GEMM work and are not counted.
  int64_t matmul_flops = 0;
  // attention_forward / attention_backward: the batched products QK^T and PV (forward) and their
  // four gradients (backward), counted as dense (T x T) per head as a batched GEMM computes them,
  // even though the causal reference skips the masked half. This is the 4*B*s^2*h forward term of
  // Narayanan et al. (arXiv 2104.04473, appendix).
  int64_t attention_flops = 0;

  int64_t total_flops() const { return matmul_flops + attention_flops; }
};

}  // namespace loom::cpu
