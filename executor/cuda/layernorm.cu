#include "executor/cuda/layernorm.cuh"
#include "executor/cuda/vec8.cuh"

#include <algorithm>

namespace loom::cuda {
namespace {

using namespace vec8;
constexpr int kRowsPerBlock = 8;  // one warp per row


}  // namespace

// One warp per row: pass 1 forms x (and stores the residual), pass 2 the variance around the
// mean (two-pass, as the fp32 reference), pass 3 normalizes. The row stays in L1 between passes.
__global__ void layernorm_forward_kernel(bf16* residual, bf16* out, float* mean_out,
                                         float* rstd_out, const bf16* a, const bf16* b,
                                         const bf16* w, const bf16* bias, int N, int C, float eps) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t base = static_cast<int64_t>(row) * C;
  const bf16* x = b ? residual + base : a + base;
  float sum = 0;
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
    for (int i = 0; i < kVec; i++) sum += va[i];
  }
  const float mean = warp_sum(sum) / C;
  float var = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float v[kVec];
    load8(v, x + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) var += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(var) / C + eps);
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float v[kVec], vw[kVec], vb[kVec];
    load8(v, x + c);
    load8(vw, w + c);
    if (bias) {
      load8(vb, bias + c);
    } else {
#pragma unroll
      for (int i = 0; i < kVec; i++) vb[i] = 0;
    }
#pragma unroll
    for (int i = 0; i < kVec; i++) v[i] = (v[i] - mean) * rstd * vw[i] + vb[i];
    store8(out + base + c, v);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

Status layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                         const bf16* b, const bf16* weight, const bf16* bias, int64_t N, int64_t C,
                         double eps, cudaStream_t stream) {
  const Dims dims{{"N", N}, {"C", C}};
  if (N < 1 || C < kVec || C % kVec != 0) {
    return shape_error("layernorm_forward", dims, "needs N >= 1 and C a positive multiple of 8");
  }
  layernorm_forward_kernel<<<static_cast<unsigned>(ceil_div(N, kRowsPerBlock)), 32 * kRowsPerBlock,
                             0, stream>>>(residual, out, mean, rstd, a, b, weight, bias,
                                          static_cast<int>(N), static_cast<int>(C),
                                          static_cast<float>(eps));
  return check_launch("layernorm_forward", dims);
}

// dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight,
// norm = (x - mean) * rstd (llm.c's layernorm_backward; the CPU reference's formula).
__global__ void layernorm_backward_input_kernel(bf16* dinp, const bf16* dout, const bf16* inp,
                                                const bf16* w, const float* mean_in,
                                                const float* rstd_in, int N, int C) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t base = static_cast<int64_t>(row) * C;
  const float mean = mean_in[row], rstd = rstd_in[row];
  float s_dnorm = 0, s_dnorm_norm = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float x[kVec], d[kVec], vw[kVec];
    load8(x, inp + base + c);
    load8(d, dout + base + c);
    load8(vw, w + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) {
      const float dn = d[i] * vw[i];
      s_dnorm += dn;
      s_dnorm_norm += dn * (x[i] - mean) * rstd;
    }
  }
  const float m_dnorm = warp_sum(s_dnorm) / C, m_dnorm_norm = warp_sum(s_dnorm_norm) / C;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    float x[kVec], d[kVec], vw[kVec], di[kVec];
    load8(x, inp + base + c);
    load8(d, dout + base + c);
    load8(vw, w + c);
    load8(di, dinp + base + c);
#pragma unroll
    for (int i = 0; i < kVec; i++) {
      const float norm = (x[i] - mean) * rstd;
      di[i] += rstd * (d[i] * vw[i] - m_dnorm - norm * m_dnorm_norm);
    }
    store8(dinp + base + c, di);
  }
}

// Partial sums of dout * norm (weight gradient) and dout (bias gradient) over one row split.
__global__ void layernorm_backward_params_kernel(float* partial, const bf16* dout, const bf16* inp,
                                                 const float* mean_in, const float* rstd_in, int N,
                                                 int C, int rows_per_split) {
  __shared__ float sums[2][kColThreadsY][kColsPerBlock];
  const int c0 = (blockIdx.x * kColThreadsX + threadIdx.x) * kVec;
  const int r0 = blockIdx.y * rows_per_split;
  const int r1 = min(N, r0 + rows_per_split);
  float dw[kVec] = {}, db[kVec] = {};
  if (c0 < C) {
    for (int r = r0 + threadIdx.y; r < r1; r += kColThreadsY) {
      float x[kVec], d[kVec];
      load8(x, inp + static_cast<int64_t>(r) * C + c0);
      load8(d, dout + static_cast<int64_t>(r) * C + c0);
      const float mean = mean_in[r], rstd = rstd_in[r];
#pragma unroll
      for (int i = 0; i < kVec; i++) {
        dw[i] += d[i] * (x[i] - mean) * rstd;
        db[i] += d[i];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    sums[0][threadIdx.y][threadIdx.x * kVec + i] = dw[i];
    sums[1][threadIdx.y][threadIdx.x * kVec + i] = db[i];
  }
  __syncthreads();
  if (threadIdx.y < 2 && c0 < C) {
    const int which = threadIdx.y;  // y = 0 sums the weight gradient, y = 1 the bias gradient
#pragma unroll
    for (int i = 0; i < kVec; i++) {
      float s = 0;
      for (int y = 0; y < kColThreadsY; y++) s += sums[which][y][threadIdx.x * kVec + i];
      partial[(static_cast<int64_t>(which) * gridDim.y + blockIdx.y) * C + c0 + i] = s;
    }
  }
}

__global__ void layernorm_backward_finish_kernel(float* dweight, float* dbias, const float* partial,
                                                 int splits, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0, sb = 0;
  for (int y = 0; y < splits; y++) {
    sw += partial[static_cast<int64_t>(y) * C + c];
    sb += partial[static_cast<int64_t>(splits + y) * C + c];
  }
  dweight[c] += sw;
  if (dbias) dbias[c] += sb;
}

int64_t layernorm_scratch_floats(int64_t N, int64_t C) { return 2 * column_splits(N, C) * C; }

Status layernorm_backward(bf16* dinp, float* dweight, float* dbias, float* scratch,
                          const bf16* dout, const bf16* inp, const bf16* weight, const float* mean,
                          const float* rstd, int64_t N, int64_t C, cudaStream_t stream) {
  const Dims dims{{"N", N}, {"C", C}};
  if (N < 1 || C < kVec || C % kVec != 0) {
    return shape_error("layernorm_backward", dims, "needs N >= 1 and C a positive multiple of 8");
  }
  layernorm_backward_input_kernel<<<static_cast<unsigned>(ceil_div(N, kRowsPerBlock)),
                                    32 * kRowsPerBlock, 0, stream>>>(
      dinp, dout, inp, weight, mean, rstd, static_cast<int>(N), static_cast<int>(C));
  LOOM_TRY(check_launch("layernorm_backward_input", dims));
  const int64_t splits = column_splits(N, C);
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kColsPerBlock)), static_cast<unsigned>(splits));
  layernorm_backward_params_kernel<<<grid, dim3(kColThreadsX, kColThreadsY), 0, stream>>>(
      scratch, dout, inp, mean, rstd, static_cast<int>(N), static_cast<int>(C),
      static_cast<int>(ceil_div(N, splits)));
  LOOM_TRY(check_launch("layernorm_backward_params", dims));
  layernorm_backward_finish_kernel<<<static_cast<unsigned>(ceil_div(C, 256)), 256, 0, stream>>>(
      dweight, dbias, scratch, static_cast<int>(splits), static_cast<int>(C));
  return check_launch("layernorm_backward_finish", dims);
}

}  // namespace loom::cuda
