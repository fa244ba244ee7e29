// 16-byte vector access to bf16 rows and a warp sum, shared by the row-wise kernels
// (layernorm.cu, rmsnorm.cu, swiglu.cu), and how many row splits their fp32 column sums (weight
// gradients) use: enough for two waves of blocks on 132 SMs, each split at least 32 rows.
#pragma once
#include <algorithm>
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda::vec8 {

constexpr int kVec = 8;  // bf16 per 16-byte access

__device__ inline void load8(float out[kVec], const bf16* p) {
  const int4 raw = *reinterpret_cast<const int4*>(p);
  const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec; i++) out[i] = __bfloat162float(v[i]);
}

__device__ inline void store8(bf16* p, const float in[kVec]) {
  int4 raw;
  bf16* v = reinterpret_cast<bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec; i++) v[i] = __float2bfloat16(in[i]);
  *reinterpret_cast<int4*>(p) = raw;
}

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Column-sum blocks: 32 x 8 threads, each thread kVec columns.
constexpr int kColThreadsX = 32, kColThreadsY = 8;
constexpr int kColsPerBlock = kColThreadsX * kVec;
inline int64_t column_splits(int64_t N, int64_t C) {
  return std::clamp<int64_t>(ceil_div(264, ceil_div(C, kColsPerBlock)), 1, std::max<int64_t>(1, N / 32));
}

}  // namespace loom::cuda::vec8
