#include "executor/cuda/grad_norm.cuh"

namespace loom::cuda {
namespace {
constexpr int kThreads = 512;

__device__ float block_sum(float s, float* shared) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = s;
  __syncthreads();
  float total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < static_cast<int>(blockDim.x) / 32; w++) total += shared[w];
  }
  return total;  // valid in thread 0
}
}  // namespace

__global__ void grad_norm_partial_kernel(float* partial, const float* g, int64_t n) {
  __shared__ float shared[kThreads / 32];
  float s = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    s += g[i] * g[i];
  }
  const float total = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void grad_norm_finish_kernel(float* out, const float* partial, float max_norm) {
  __shared__ float shared[kGradNormBlocks / 32];
  const float total = block_sum(partial[threadIdx.x], shared);
  if (threadIdx.x == 0) {
    const float norm = sqrtf(total);
    out[0] = norm;
    out[1] = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.0f;
  }
}

Status grad_norm(float* out, float* scratch, const float* grads, int64_t n, float max_norm,
                 cudaStream_t stream) {
  grad_norm_partial_kernel<<<kGradNormBlocks, kThreads, 0, stream>>>(scratch, grads, n);
  LOOM_TRY(check_launch("grad_norm_partial", {{"n", n}}));
  grad_norm_finish_kernel<<<1, kGradNormBlocks, 0, stream>>>(out, scratch, max_norm);
  return check_launch("grad_norm_finish", {{"n", n}});
}

}  // namespace loom::cuda
