#include "executor/cuda/crossentropy.cuh"

#include <cfloat>

namespace loom::cuda {
namespace {
constexpr int kThreads = 1024;

// (max, sum of exp(x - max)) pairs merge associatively: the online softmax of Milakov & Gimelshein.
struct MaxSum {
  float m, s;
};
__device__ inline MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}
}  // namespace

// One block per row; pass 1: max and sum of exp over [0, V); pass 2: write the gradient.
__global__ void __launch_bounds__(kThreads) crossentropy_kernel(float* losses, bf16* logits,
                                                                const int32_t* targets,
                                                                float dloss, int V, int Vp) {
  __shared__ MaxSum warp_part[kThreads / 32];
  __shared__ float row_stats[2];
  const int64_t row = blockIdx.x;
  bf16* x = logits + row * Vp;
  const int target = targets[row];
  const float x_target = __bfloat162float(x[target]);  // read before anyone overwrites the row
  MaxSum acc{-INFINITY, 0.0f};
  for (int c = threadIdx.x * 8; c < Vp; c += kThreads * 8) {
    const int4 raw = *reinterpret_cast<const int4*>(x + c);
    const bf16* v = reinterpret_cast<const bf16*>(&raw);
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (c + i < V) m = fmaxf(m, __bfloat162float(v[i]));
    }
    float s = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (c + i < V) s += __expf(__bfloat162float(v[i]) - m);
    }
    acc = merge(acc, {m, s});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    acc = merge(acc, {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)});
  }
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum r = warp_part[0];
    for (int w = 1; w < kThreads / 32; w++) r = merge(r, warp_part[w]);
    row_stats[0] = r.m;
    row_stats[1] = r.s;
    losses[row] = r.m + logf(r.s) - x_target;
  }
  __syncthreads();
  const float m = row_stats[0], inv_s = 1.0f / row_stats[1];
  for (int c = threadIdx.x * 8; c < Vp; c += kThreads * 8) {
    int4 raw = *reinterpret_cast<const int4*>(x + c);
    bf16* v = reinterpret_cast<bf16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int col = c + i;
      float g = 0;
      if (col < V) g = (__expf(__bfloat162float(v[i]) - m) * inv_s - (col == target ? 1.0f : 0.0f)) * dloss;
      v[i] = __float2bfloat16(g);
    }
    *reinterpret_cast<int4*>(x + c) = raw;
  }
}

Status crossentropy_forward_backward(float* losses, bf16* logits, const int32_t* targets,
                                     float dloss, int64_t N, int64_t V, int64_t Vp,
                                     cudaStream_t stream) {
  const Dims dims{{"N", N}, {"V", V}, {"Vp", Vp}};
  if (N < 1 || V < 1 || Vp < V || Vp % 8 != 0 || N > INT32_MAX) {
    return shape_error("crossentropy", dims, "needs N >= 1, 1 <= V <= Vp and Vp a multiple of 8");
  }
  crossentropy_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
      losses, logits, targets, dloss, static_cast<int>(V), static_cast<int>(Vp));
  return check_launch("crossentropy", dims);
}

__global__ void accumulate_loss_kernel(float* sum, const float* losses, int64_t N, float scale) {
  __shared__ float part[kThreads / 32];
  float s = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) s += losses[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int w = 0; w < kThreads / 32; w++) total += part[w];
    *sum += scale * total;
  }
}

Status accumulate_loss(float* sum, const float* losses, int64_t N, float scale,
                       cudaStream_t stream) {
  accumulate_loss_kernel<<<1, kThreads, 0, stream>>>(sum, losses, N, scale);
  return check_launch("accumulate_loss", {{"N", N}});
}

}  // namespace loom::cuda
