#include "executor/cuda/calibrate.cuh"

#include <cuda_fp8.h>

namespace loom::cuda {
namespace {

__device__ inline uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_bf16_kernel(bf16* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float u = static_cast<float>(mix(seed ^ static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
    x[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

__global__ void fill_f32_kernel(float* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float u = static_cast<float>(mix(seed ^ static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
    x[i] = (2.0f * u - 1.0f) * scale;
  }
}

template <class Fp8>
__global__ void fill_fp8_kernel(Fp8* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float u = static_cast<float>(mix(seed ^ static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
    x[i] = Fp8((2.0f * u - 1.0f) * scale);
  }
}

__global__ void add_bf16_kernel(int4* out, const int4* a, const int4* b, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n8; i += int64_t{gridDim.x} * blockDim.x) {
    const int4 ra = a[i], rb = b[i];
    int4 r;
    const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&ra);
    const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&rb);
    __nv_bfloat162* pr = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
    for (int k = 0; k < 4; k++) pr[k] = __hadd2(pa[k], pb[k]);
    out[i] = r;
  }
}

__global__ void empty() {}

unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 132 * 16 ? (blocks < 1 ? 1 : blocks) : 132 * 16);
}

}  // namespace

Status fill_random_bf16(bf16* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, seed, scale);
  return check_launch("fill_random_bf16", {{"n", n}});
}

Status fill_random_f32(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, seed, scale);
  return check_launch("fill_random_f32", {{"n", n}});
}

Status fill_random_fp8(void* x, int64_t n, uint64_t seed, float scale, bool e5m2, cudaStream_t stream) {
  if (e5m2)
    fill_fp8_kernel<<<grid_for(n, 256), 256, 0, stream>>>(static_cast<__nv_fp8_e5m2*>(x), n, seed, scale);
  else
    fill_fp8_kernel<<<grid_for(n, 256), 256, 0, stream>>>(static_cast<__nv_fp8_e4m3*>(x), n, seed, scale);
  return check_launch("fill_random_fp8", {{"n", n}});
}

Status add_bf16(bf16* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream) {
  if (n % 8 != 0) return shape_error("add_bf16", {{"n", n}}, "n must be a multiple of 8");
  const int64_t n8 = n / 8;
  // One vector per thread up to 16 waves of 132 SMs x 2048 threads, grid-stride beyond.
  const int64_t blocks = (n8 + 255) / 256;
  const unsigned grid = static_cast<unsigned>(blocks < 132 * 8 * 16 ? (blocks < 1 ? 1 : blocks) : 132 * 8 * 16);
  add_bf16_kernel<<<grid, 256, 0, stream>>>(reinterpret_cast<int4*>(out), reinterpret_cast<const int4*>(a),
                                            reinterpret_cast<const int4*>(b), n8);
  return check_launch("add_bf16", {{"n", n}});
}

Status empty_kernel(cudaStream_t stream) {
  empty<<<1, 32, 0, stream>>>();
  return check_launch("empty", {});
}

}  // namespace loom::cuda
