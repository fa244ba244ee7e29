#include "executor/cuda/rope.cuh"

namespace loom::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per token

Status check_shapes(const char* op, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
                    double theta) {
  const Dims dims{{"B", B}, {"T", T}, {"NH", NH}, {"NKV", NKV}, {"d", d}};
  if (B < 1 || T < 1 || NH < 1 || NKV < 1 || d < 2 || d % 2 != 0) {
    return shape_error(op, dims, "needs B, T, NH, NKV >= 1 and an even head size d");
  }
  if (!(theta > 0)) return shape_error(op, dims, "needs rope theta > 0");
  if (B * T > INT32_MAX / kRowsPerBlock || (NH + 2 * NKV) * d > INT32_MAX) {
    return shape_error(op, dims, "B*T and (NH + 2 NKV) * d must fit the kernel's int indices");
  }
  return ok_status();
}

}  // namespace

// grid: one warp per token (b, t); lane l owns the frequencies i = l, l + 32, ... < d/2, forms
// their cos and sin once (double, as executor/cpu/rope.cpp's tables, rounded to fp32) and
// rotates pair (i, i + d/2) of each of the `heads` q and k heads. A warp's two loads per head
// cover the head's 2d contiguous bytes.
template <bool kInverse>
__global__ void rope_kernel(bf16* qkv, int rows, int T, int heads, int d, int row_stride,
                            double theta) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int t = row % T;
  const int half = d / 2;
  bf16* x = qkv + static_cast<int64_t>(row) * row_stride;
  for (int i = lane; i < half; i += 32) {
    const double freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    double sd, cd;
    sincos(static_cast<double>(t) * freq, &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    for (int h = 0; h < heads; h++) {
      bf16* p = x + h * d + i;
      const float x1 = __bfloat162float(p[0]);
      const float x2 = __bfloat162float(p[half]);
      if (kInverse) {
        p[0] = __float2bfloat16(x1 * c + x2 * s);
        p[half] = __float2bfloat16(x2 * c - x1 * s);
      } else {
        p[0] = __float2bfloat16(x1 * c - x2 * s);
        p[half] = __float2bfloat16(x2 * c + x1 * s);
      }
    }
  }
}

namespace {
template <bool kInverse>
Status launch(const char* op, bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
              double theta, cudaStream_t stream) {
  LOOM_TRY(check_shapes(op, B, T, NH, NKV, d, theta));
  const int64_t rows = B * T;
  rope_kernel<kInverse><<<static_cast<unsigned>(ceil_div(rows, kRowsPerBlock)), 32 * kRowsPerBlock,
                          0, stream>>>(qkv, static_cast<int>(rows), static_cast<int>(T),
                                       static_cast<int>(NH + NKV), static_cast<int>(d),
                                       static_cast<int>((NH + 2 * NKV) * d), theta);
  return check_launch(op, {{"B", B}, {"T", T}, {"NH", NH}, {"NKV", NKV}, {"d", d}});
}
}  // namespace

Status rope_forward(bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
                    double theta, cudaStream_t stream) {
  return launch<false>("rope_forward", qkv, B, T, NH, NKV, d, theta, stream);
}

Status rope_backward(bf16* dqkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t d,
                     double theta, cudaStream_t stream) {
  return launch<true>("rope_backward", dqkv, B, T, NH, NKV, d, theta, stream);
}

}  // namespace loom::cuda
