#include <cuda_fp8.h>

#include "executor/cuda/calibrate.cuh"
#include "executor/cuda/vec8.cuh"

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

// Row softmax, one warp per row of `cols` (a multiple of 8) bf16 scores: an online max and sum
// over the row, then a second pass (the row is then in L1/L2) writing the probabilities, as
// Megatron's fused scale-mask-softmax computes them (fp32 inside, bf16 out).
__global__ void softmax_rows_kernel(bf16* y, const bf16* x, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t{blockDim.y} + threadIdx.y;
  if (row >= rows) return;
  const bf16* xr = x + row * cols;
  float mx = -INFINITY, sum = 0;
  for (int64_t c = threadIdx.x * vec8::kVec; c < cols; c += 32 * vec8::kVec) {
    float v[vec8::kVec];
    vec8::load8(v, xr + c);
#pragma unroll
    for (int i = 0; i < vec8::kVec; i++) {
      const float m2 = fmaxf(mx, v[i]);
      sum = sum * __expf(mx - m2) + __expf(v[i] - m2);
      mx = m2;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {  // merge the lanes' (max, sum) pairs
    const float m_o = __shfl_xor_sync(0xffffffffu, mx, o), s_o = __shfl_xor_sync(0xffffffffu, sum, o);
    const float m2 = fmaxf(mx, m_o);
    sum = sum * __expf(mx - m2) + s_o * __expf(m_o - m2);
    mx = m2;
  }
  const float inv = 1.0f / sum;
  for (int64_t c = threadIdx.x * vec8::kVec; c < cols; c += 32 * vec8::kVec) {
    float v[vec8::kVec];
    vec8::load8(v, xr + c);
#pragma unroll
    for (int i = 0; i < vec8::kVec; i++) v[i] = __expf(v[i] - mx) * inv;
    vec8::store8(y + row * cols + c, v);
  }
}

// Its backward: dx = y (dy - sum(y dy)) per row.
__global__ void softmax_rows_backward_kernel(bf16* dx, const bf16* y, const bf16* dy, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t{blockDim.y} + threadIdx.y;
  if (row >= rows) return;
  const int64_t base = row * cols;
  float dot = 0;
  for (int64_t c = threadIdx.x * vec8::kVec; c < cols; c += 32 * vec8::kVec) {
    float a[vec8::kVec], g[vec8::kVec];
    vec8::load8(a, y + base + c);
    vec8::load8(g, dy + base + c);
#pragma unroll
    for (int i = 0; i < vec8::kVec; i++) dot += a[i] * g[i];
  }
  dot = vec8::warp_sum(dot);
  for (int64_t c = threadIdx.x * vec8::kVec; c < cols; c += 32 * vec8::kVec) {
    float a[vec8::kVec], g[vec8::kVec];
    vec8::load8(a, y + base + c);
    vec8::load8(g, dy + base + c);
#pragma unroll
    for (int i = 0; i < vec8::kVec; i++) a[i] *= g[i] - dot;
    vec8::store8(dx + base + c, a);
  }
}

// Dropout of probability p: y = x / (1 - p) where kept, else 0, and a one-byte mask (the mask
// Megatron keeps for backward); the keep decision from a counter hash of (seed, index).
__global__ void dropout_kernel(bf16* y, uint8_t* mask, const bf16* x, int64_t n8, float p, uint64_t seed) {
  const float keep_scale = 1.0f / (1.0f - p);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n8; i += int64_t{gridDim.x} * blockDim.x) {
    float v[vec8::kVec];
    vec8::load8(v, x + i * vec8::kVec);
    const uint64_t bits = mix(seed ^ static_cast<uint64_t>(i));
    uint64_t m = 0;
#pragma unroll
    for (int k = 0; k < vec8::kVec; k++) {
      const bool keep = static_cast<float>((bits >> (8 * k)) & 0xff) >= p * 256.0f;
      v[k] = keep ? v[k] * keep_scale : 0.0f;
      m |= static_cast<uint64_t>(keep) << (8 * k);
    }
    vec8::store8(y + i * vec8::kVec, v);
    reinterpret_cast<uint64_t*>(mask)[i] = m;
  }
}

__global__ void dropout_backward_kernel(bf16* dx, const bf16* dy, const uint8_t* mask, int64_t n8, float p) {
  const float keep_scale = 1.0f / (1.0f - p);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n8; i += int64_t{gridDim.x} * blockDim.x) {
    float v[vec8::kVec];
    vec8::load8(v, dy + i * vec8::kVec);
    const uint64_t m = reinterpret_cast<const uint64_t*>(mask)[i];
#pragma unroll
    for (int k = 0; k < vec8::kVec; k++) v[k] = ((m >> (8 * k)) & 1) ? v[k] * keep_scale : 0.0f;
    vec8::store8(dx + i * vec8::kVec, v);
  }
}

// Transformer Engine's cast-transpose: a bf16 (rows, cols) tensor times its scale into E4M3,
// written as is and transposed (cols, rows), through 32 x 32 tiles in shared memory, and the
// tile's amax folded into *amax (non-negative floats order as their bit patterns).
__global__ void fp8_cast_transpose_kernel(__nv_fp8_e4m3* out, __nv_fp8_e4m3* out_t, float* amax, const bf16* in,
                                          int64_t rows, int64_t cols, float scale) {
  __shared__ float tile[32][33];
  const int64_t r0 = blockIdx.y * int64_t{32}, c0 = blockIdx.x * int64_t{32};
  float local = 0;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int64_t r = r0 + k, c = c0 + threadIdx.x;
    float v = 0;
    if (r < rows && c < cols) {
      v = __bfloat162float(in[r * cols + c]);
      out[r * cols + c] = __nv_fp8_e4m3(v * scale);
    }
    tile[k][threadIdx.x] = v;
    local = fmaxf(local, fabsf(v));
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int64_t c = c0 + k, r = r0 + threadIdx.x;
    if (r < rows && c < cols) out_t[c * rows + r] = __nv_fp8_e4m3(tile[threadIdx.x][k] * scale);
  }
  for (int o = 16; o > 0; o >>= 1) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, o));
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<int*>(amax), __float_as_int(local));
}

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

Status softmax_rows(bf16* y, const bf16* x, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (cols % 8 != 0 || rows < 1)
    return shape_error("softmax_rows", {{"rows", rows}, {"cols", cols}}, "cols must be a multiple of 8");
  const dim3 block(32, 8);
  softmax_rows_kernel<<<static_cast<unsigned>((rows + 7) / 8), block, 0, stream>>>(y, x, rows, cols);
  return check_launch("softmax_rows", {{"rows", rows}, {"cols", cols}});
}

Status softmax_rows_backward(bf16* dx, const bf16* y, const bf16* dy, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (cols % 8 != 0 || rows < 1)
    return shape_error("softmax_rows_backward", {{"rows", rows}, {"cols", cols}}, "cols must be a multiple of 8");
  const dim3 block(32, 8);
  softmax_rows_backward_kernel<<<static_cast<unsigned>((rows + 7) / 8), block, 0, stream>>>(dx, y, dy, rows, cols);
  return check_launch("softmax_rows_backward", {{"rows", rows}, {"cols", cols}});
}

Status dropout_forward(bf16* y, uint8_t* mask, const bf16* x, int64_t n, float p, uint64_t seed, cudaStream_t stream) {
  if (n % 8 != 0) return shape_error("dropout_forward", {{"n", n}}, "n must be a multiple of 8");
  dropout_kernel<<<grid_for(n / 8, 256), 256, 0, stream>>>(y, mask, x, n / 8, p, seed);
  return check_launch("dropout_forward", {{"n", n}});
}

Status dropout_backward(bf16* dx, const bf16* dy, const uint8_t* mask, int64_t n, float p, cudaStream_t stream) {
  if (n % 8 != 0) return shape_error("dropout_backward", {{"n", n}}, "n must be a multiple of 8");
  dropout_backward_kernel<<<grid_for(n / 8, 256), 256, 0, stream>>>(dx, dy, mask, n / 8, p);
  return check_launch("dropout_backward", {{"n", n}});
}

Status fp8_cast_transpose(void* out, void* out_t, float* amax, const bf16* in, int64_t rows, int64_t cols, float scale,
                          cudaStream_t stream) {
  if (rows < 1 || cols < 1)
    return shape_error("fp8_cast_transpose", {{"rows", rows}, {"cols", cols}}, "must be positive");
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>((rows + 31) / 32)), block(32, 8);
  fp8_cast_transpose_kernel<<<grid, block, 0, stream>>>(
      static_cast<__nv_fp8_e4m3*>(out), static_cast<__nv_fp8_e4m3*>(out_t), amax, in, rows, cols, scale);
  return check_launch("fp8_cast_transpose", {{"rows", rows}, {"cols", cols}});
}

Status empty_kernel(cudaStream_t stream) {
  empty<<<1, 32, 0, stream>>>();
  return check_launch("empty", {});
}

}  // namespace loom::cuda
