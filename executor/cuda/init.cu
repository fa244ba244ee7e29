#include "executor/cuda/init.cuh"

namespace loom::cuda {
namespace {
// The generator of executor/cpu/rng.hpp, on the device.
__device__ inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
// Rng::next_u64 call n (from 0) of a stream seeded s returns splitmix64(s + n * golden).
__device__ inline double uniform(uint64_t s, uint64_t n) {
  return static_cast<double>(splitmix64(s + n * 0x9e3779b97f4a7c15ULL) >> 11) * 0x1.0p-53;
}
}  // namespace

__global__ void init_kernel(float* dst, int64_t count, uint64_t seed, int64_t first, double std) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  if (std == 0) {
    dst[i] = 0.0f;
  } else if (std < 0) {
    dst[i] = 1.0f;
  } else {
    const uint64_t j = static_cast<uint64_t>(first + i);
    const double u1 = 1.0 - uniform(seed, 2 * j);  // Rng::normal: two uniforms per normal
    const double u2 = uniform(seed, 2 * j + 1);
    dst[i] = static_cast<float>(std * (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)));
  }
}

Status init_tensor(float* dst, int64_t count, uint64_t stream_seed, int64_t first, double std,
                   cudaStream_t stream) {
  if (count < 1) return ok_status();
  init_kernel<<<static_cast<unsigned>(ceil_div(count, 256)), 256, 0, stream>>>(dst, count,
                                                                              stream_seed, first, std);
  return check_launch("init_tensor", {{"count", count}});
}

}  // namespace loom::cuda
