#include "executor/cuda/rmsnorm.cuh"
#include "executor/cuda/vec8.cuh"

#include <algorithm>

namespace loom::cuda {
namespace {

using namespace vec8;
constexpr int kRowsPerBlock = 8;  // one warp per row


Status check_shapes(const char* op, int64_t N, int64_t C) {
  if (N < 1 || C < kVec || C % kVec != 0) {
    return shape_error(op, {{"N", N}, {"C", C}}, "needs N >= 1 and C a positive multiple of 8");
  }
  if (N > INT32_MAX / kRowsPerBlock || C > INT32_MAX) {
    return shape_error(op, {{"N", N}, {"C", C}}, "N and C must fit the kernel's int indices");
  }
  return ok_status();
}

}  // namespace

// One warp per row: pass 1 forms x (and stores the residual) and sums its squares, pass 2
// normalizes, reading x back from where it is stored (the row stays in L1). Same arithmetic as
// executor/cpu/rmsnorm.cpp: y = x * s * w, s = 1/sqrt(sum(x^2)/C + eps).
__global__ void rmsnorm_forward_kernel(bf16* residual, bf16* out, float* rstd_out, const bf16* a,
                                       const bf16* b, const bf16* w, int N, int C, float eps) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t base = static_cast<int64_t>(row) * C;
  const bf16* x = b ? residual + base : a + base;
  float ss = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float va[kVec];
    load8(va, a + base + c);
    if (b) {
      float vb[kVec];
      load8(vb, b + base + c);
#pragma unroll
      for (int i = 0; i < kVec; i++) va[i] = __bfloat162float(__float2bfloat16(va[i] + vb[i]));
      store8(residual + base + c, va);
    }
#pragma unroll
    for (int i = 0; i < kVec; i++) ss += va[i] * va[i];
  }
  const float rstd = rsqrtf(warp_sum(ss) / C + eps);
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float v[kVec], vw[kVec];
    load8(v, x + c);
    load8(vw, w + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) v[i] = v[i] * rstd * vw[i];
    store8(out + base + c, v);
  }
  if (lane == 0) rstd_out[row] = rstd;
}

Status rmsnorm_forward(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b,
                       const bf16* weight, int64_t N, int64_t C, double eps, cudaStream_t stream) {
  LOOM_TRY(check_shapes("rmsnorm_forward", N, C));
  rmsnorm_forward_kernel<<<static_cast<unsigned>(ceil_div(N, kRowsPerBlock)), 32 * kRowsPerBlock, 0,
                           stream>>>(residual, out, rstd, a, b, weight, static_cast<int>(N),
                                     static_cast<int>(C), static_cast<float>(eps));
  return check_launch("rmsnorm_forward", {{"N", N}, {"C", C}});
}

// y_i = w_i x_i s, s = (mean(x^2) + eps)^-1/2, ds/dx_j = -s^3 x_j / C, so
// dx_j += s w_j dy_j - s^3 x_j / C * sum_i(w_i dy_i x_i) (executor/cpu/rmsnorm.cpp).
__global__ void rmsnorm_backward_input_kernel(bf16* dinp, const bf16* dout, const bf16* inp,
                                              const bf16* w, const float* rstd_in, int N, int C) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t base = static_cast<int64_t>(row) * C;
  const float s = rstd_in[row];
  float dot = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float x[kVec], d[kVec], vw[kVec];
    load8(x, inp + base + c);
    load8(d, dout + base + c);
    load8(vw, w + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) dot += vw[i] * d[i] * x[i];
  }
  const float k = s * s * s * warp_sum(dot) / C;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float x[kVec], d[kVec], vw[kVec], di[kVec];
    load8(x, inp + base + c);
    load8(d, dout + base + c);
    load8(vw, w + c);
    load8(di, dinp + base + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) di[i] += s * vw[i] * d[i] - k * x[i];
    store8(dinp + base + c, di);
  }
}

// Partial sums of dout * x * rstd (the weight gradient) over one row split.
__global__ void rmsnorm_backward_weight_kernel(float* partial, const bf16* dout, const bf16* inp,
                                               const float* rstd_in, int N, int C,
                                               int rows_per_split) {
  __shared__ float sums[kColThreadsY][kColsPerBlock];
  const int c0 = (blockIdx.x * kColThreadsX + threadIdx.x) * kVec;
  const int r0 = blockIdx.y * rows_per_split;
  const int r1 = min(N, r0 + rows_per_split);
  float dw[kVec] = {};
  if (c0 < C) {
    for (int r = r0 + threadIdx.y; r < r1; r += kColThreadsY) {
      float x[kVec], d[kVec];
      load8(x, inp + static_cast<int64_t>(r) * C + c0);
      load8(d, dout + static_cast<int64_t>(r) * C + c0);
      const float s = rstd_in[r];
#pragma unroll
      for (int i = 0; i < kVec; i++) dw[i] += d[i] * x[i] * s;
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; i++) sums[threadIdx.y][threadIdx.x * kVec + i] = dw[i];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < C) {
#pragma unroll
    for (int i = 0; i < kVec; i++) {
      float s = 0;
      for (int y = 0; y < kColThreadsY; y++) s += sums[y][threadIdx.x * kVec + i];
      partial[static_cast<int64_t>(blockIdx.y) * C + c0 + i] = s;
    }
  }
}

__global__ void rmsnorm_backward_finish_kernel(float* dweight, const float* partial, int splits,
                                               int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0;
  for (int y = 0; y < splits; y++) s += partial[static_cast<int64_t>(y) * C + c];
  dweight[c] += s;
}

int64_t rmsnorm_scratch_floats(int64_t N, int64_t C) { return column_splits(N, C) * C; }

Status rmsnorm_backward(bf16* dinp, float* dweight, float* scratch, const bf16* dout,
                        const bf16* inp, const bf16* weight, const float* rstd, int64_t N,
                        int64_t C, cudaStream_t stream) {
  LOOM_TRY(check_shapes("rmsnorm_backward", N, C));
  const Dims dims{{"N", N}, {"C", C}};
  rmsnorm_backward_input_kernel<<<static_cast<unsigned>(ceil_div(N, kRowsPerBlock)),
                                  32 * kRowsPerBlock, 0, stream>>>(
      dinp, dout, inp, weight, rstd, static_cast<int>(N), static_cast<int>(C));
  LOOM_TRY(check_launch("rmsnorm_backward_input", dims));
  const int64_t splits = column_splits(N, C);
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kColsPerBlock)), static_cast<unsigned>(splits));
  rmsnorm_backward_weight_kernel<<<grid, dim3(kColThreadsX, kColThreadsY), 0, stream>>>(
      scratch, dout, inp, rstd, static_cast<int>(N), static_cast<int>(C),
      static_cast<int>(ceil_div(N, splits)));
  LOOM_TRY(check_launch("rmsnorm_backward_weight", dims));
  rmsnorm_backward_finish_kernel<<<static_cast<unsigned>(ceil_div(C, 256)), 256, 0, stream>>>(
      dweight, scratch, static_cast<int>(splits), static_cast<int>(C));
  return check_launch("rmsnorm_backward_finish", dims);
}

}  // namespace loom::cuda
