#include "executor/cuda/swiglu.cuh"
#include "executor/cuda/vec8.cuh"

namespace loom::cuda {
namespace {

using namespace vec8;
constexpr int kThreads = 256;

// sigmoid in fp32 with expf (not the fast-math __expf): the CPU reference's 1 / (1 + exp(-g)).
__device__ inline float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

Status check_shapes(const char* op, int64_t N, int64_t F) {
  if (N < 1 || F < kVec || F % kVec != 0) {
    return shape_error(op, {{"N", N}, {"F", F}}, "needs N >= 1 and F a positive multiple of 8");
  }
  return ok_status();
}

}  // namespace

// One thread per 8 consecutive elements of one row's F outputs.
__global__ void swiglu_forward_kernel(bf16* out, const bf16* gateup, int64_t vectors, int F) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const int64_t n = v / (F / kVec);
  const int j = static_cast<int>(v % (F / kVec)) * kVec;
  const bf16* row = gateup + n * 2 * F;
  float g[kVec], u[kVec], y[kVec];
  load8(g, row + j);
  load8(u, row + F + j);
#pragma unroll
  for (int i = 0; i < kVec; i++) y[i] = g[i] * sigmoid(g[i]) * u[i];
  store8(out + n * F + j, y);
}

Status swiglu_forward(bf16* out, const bf16* gateup, int64_t N, int64_t F, cudaStream_t stream) {
  LOOM_TRY(check_shapes("swiglu_forward", N, F));
  const int64_t vectors = N * F / kVec;
  swiglu_forward_kernel<<<static_cast<unsigned>(ceil_div(vectors, kThreads)), kThreads, 0, stream>>>(
      out, gateup, vectors, static_cast<int>(F));
  return check_launch("swiglu_forward", {{"N", N}, {"F", F}});
}

// d/dg [g sigmoid(g)] = sigmoid(g) (1 + g (1 - sigmoid(g))) (executor/cpu/swiglu.cpp).
// Not __restrict__: dgateup may alias gateup; each thread reads all its inputs before writing.
__global__ void swiglu_backward_kernel(bf16* dgateup, const bf16* dout, const bf16* gateup,
                                       int64_t vectors, int F) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const int64_t n = v / (F / kVec);
  const int j = static_cast<int>(v % (F / kVec)) * kVec;
  const bf16* row = gateup + n * 2 * F;
  float g[kVec], u[kVec], d[kVec], dg[kVec], du[kVec];
  load8(g, row + j);
  load8(u, row + F + j);
  load8(d, dout + n * F + j);
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const float sig = sigmoid(g[i]);
    const float silu = g[i] * sig;
    const float dsilu = sig * (1.0f + g[i] * (1.0f - sig));
    dg[i] = d[i] * u[i] * dsilu;
    du[i] = d[i] * silu;
  }
  bf16* drow = dgateup + n * 2 * F;
  store8(drow + j, dg);
  store8(drow + F + j, du);
}

Status swiglu_backward(bf16* dgateup, const bf16* dout, const bf16* gateup, int64_t N, int64_t F,
                       cudaStream_t stream) {
  LOOM_TRY(check_shapes("swiglu_backward", N, F));
  const int64_t vectors = N * F / kVec;
  swiglu_backward_kernel<<<static_cast<unsigned>(ceil_div(vectors, kThreads)), kThreads, 0, stream>>>(
      dgateup, dout, gateup, vectors, static_cast<int>(F));
  return check_launch("swiglu_backward", {{"N", N}, {"F", F}});
}

}  // namespace loom::cuda
