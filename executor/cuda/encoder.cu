#include "executor/cuda/encoder.cuh"

namespace loom::cuda {

__global__ void encoder_forward_kernel(bf16* out, const int32_t* tokens, const bf16* wte,
                                       const bf16* wpe, int B, int T, int C) {
  const int64_t idx = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (idx >= static_cast<int64_t>(B) * T * C) return;
  const int64_t bt = idx / C;
  const int c = idx % C;
  const int t = bt % T;
  const int4 a = *reinterpret_cast<const int4*>(wte + static_cast<int64_t>(tokens[bt]) * C + c);
  const int4 p = *reinterpret_cast<const int4*>(wpe + static_cast<int64_t>(t) * C + c);
  int4 r;
  const bf16* va = reinterpret_cast<const bf16*>(&a);
  const bf16* vp = reinterpret_cast<const bf16*>(&p);
  bf16* vr = reinterpret_cast<bf16*>(&r);
#pragma unroll
  for (int i = 0; i < 8; i++) vr[i] = __float2bfloat16(__bfloat162float(va[i]) + __bfloat162float(vp[i]));
  *reinterpret_cast<int4*>(out + idx) = r;
}

Status encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe,
                       int64_t B, int64_t T, int64_t C, cudaStream_t stream) {
  const Dims dims{{"B", B}, {"T", T}, {"C", C}};
  if (B < 1 || T < 1 || C < 8 || C % 8 != 0) {
    return shape_error("encoder_forward", dims, "needs B, T >= 1 and C a positive multiple of 8");
  }
  encoder_forward_kernel<<<static_cast<unsigned>(ceil_div(B * T * C / 8, 256)), 256, 0, stream>>>(
      out, tokens, wte, wpe, static_cast<int>(B), static_cast<int>(T), static_cast<int>(C));
  return check_launch("encoder_forward", dims);
}

__global__ void encoder_backward_wpe_kernel(float* dwpe, const bf16* dout, int B, int T, int C) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (t, c)
  if (idx >= static_cast<int64_t>(T) * C) return;
  float s = 0;
  for (int b = 0; b < B; b++) s += __bfloat162float(dout[static_cast<int64_t>(b) * T * C + idx]);
  dwpe[idx] += s;
}

__global__ void encoder_backward_wte_kernel(float* dwte, const bf16* dout, const int32_t* tokens,
                                            int64_t n, int C) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, t, c)
  if (idx >= n) return;
  const int64_t bt = idx / C;
  atomicAdd(dwte + static_cast<int64_t>(tokens[bt]) * C + idx % C, __bfloat162float(dout[idx]));
}

Status encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens,
                        int64_t B, int64_t T, int64_t C, cudaStream_t stream) {
  const Dims dims{{"B", B}, {"T", T}, {"C", C}};
  if (B < 1 || T < 1 || C < 1) return shape_error("encoder_backward", dims, "needs B, T, C >= 1");
  if (dwpe) {
    encoder_backward_wpe_kernel<<<static_cast<unsigned>(ceil_div(T * C, 256)), 256, 0, stream>>>(
        dwpe, dout, static_cast<int>(B), static_cast<int>(T), static_cast<int>(C));
    LOOM_TRY(check_launch("encoder_backward_wpe", dims));
  }
  const int64_t n = B * T * C;
  encoder_backward_wte_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, stream>>>(
      dwte, dout, tokens, n, static_cast<int>(C));
  return check_launch("encoder_backward_wte", dims);
}

}  // namespace loom::cuda
