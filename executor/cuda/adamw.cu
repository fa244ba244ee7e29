#include "executor/cuda/adamw.cuh"

#include <cmath>

namespace loom::cuda {

std::vector<AdamWChunk> adamw_chunks(const std::vector<TensorRange>& tensors, float weight_decay,
                                     int64_t chunk) {
  std::vector<AdamWChunk> out;
  for (const TensorRange& t : tensors) {
    for (int64_t o = 0; o < t.numel; o += chunk) {
      out.push_back({t.offset + o, std::min(chunk, t.numel - o), t.decay ? weight_decay : 0.0f});
    }
  }
  return out;
}

__device__ inline float adamw_one(float& p, float& m, float& v, float g, float lr, float beta1,
                                  float beta2, float eps, float bc1, float bc2, float wd) {
  m = beta1 * m + (1.0f - beta1) * g;
  v = beta2 * v + (1.0f - beta2) * g * g;
  p -= lr * ((m / bc1) / (sqrtf(v / bc2) + eps) + wd * p);
  return p;
}

// Memory-bound (34 bytes per parameter): 16-byte accesses for the body of each chunk (offsets
// are multiples of 128 elements), scalar for a tail.
__global__ void adamw_kernel(bf16* params, float* master, float* grads, float* m, float* v,
                             const AdamWChunk* chunks, const float* grad_scale, float lr,
                             float beta1, float beta2, float eps, float bc1, float bc2) {
  const AdamWChunk c = chunks[blockIdx.x];
  const float gs = grad_scale ? *grad_scale : 1.0f;
  const float wd = c.weight_decay;
  const bool aligned = c.offset % 4 == 0;
  const int64_t body = aligned ? c.count / 4 * 4 : 0;
  for (int64_t i = c.offset + 4 * threadIdx.x; i < c.offset + body; i += 4 * blockDim.x) {
    float4 g = *reinterpret_cast<const float4*>(grads + i);
    float4 mm = *reinterpret_cast<const float4*>(m + i);
    float4 vv = *reinterpret_cast<const float4*>(v + i);
    float4 p = *reinterpret_cast<const float4*>(master + i);
    adamw_one(p.x, mm.x, vv.x, g.x * gs, lr, beta1, beta2, eps, bc1, bc2, wd);
    adamw_one(p.y, mm.y, vv.y, g.y * gs, lr, beta1, beta2, eps, bc1, bc2, wd);
    adamw_one(p.z, mm.z, vv.z, g.z * gs, lr, beta1, beta2, eps, bc1, bc2, wd);
    adamw_one(p.w, mm.w, vv.w, g.w * gs, lr, beta1, beta2, eps, bc1, bc2, wd);
    *reinterpret_cast<float4*>(m + i) = mm;
    *reinterpret_cast<float4*>(v + i) = vv;
    *reinterpret_cast<float4*>(master + i) = p;
    *reinterpret_cast<float4*>(grads + i) = make_float4(0.f, 0.f, 0.f, 0.f);
    __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y), hi = __floats2bfloat162_rn(p.z, p.w);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t*>(&lo);
    packed.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(params + i) = packed;
  }
  for (int64_t i = c.offset + body + threadIdx.x; i < c.offset + c.count; i += blockDim.x) {
    float p = master[i], mi = m[i], vi = v[i];
    adamw_one(p, mi, vi, grads[i] * gs, lr, beta1, beta2, eps, bc1, bc2, wd);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    params[i] = __float2bfloat16(p);
    grads[i] = 0.0f;
  }
}

Status adamw_update(bf16* params, float* master, float* grads, float* m, float* v,
                    const AdamWChunk* chunks_device, int64_t num_chunks, const float* grad_scale,
                    const AdamWHyper& h, int64_t step, cudaStream_t stream) {
  const Dims dims{{"chunks", num_chunks}, {"step", step}};
  if (step < 1 || num_chunks < 0) return shape_error("adamw", dims, "step counts from 1");
  if (num_chunks == 0) return ok_status();
  const float bc1 = 1.0f - static_cast<float>(std::pow(h.beta1, static_cast<double>(step)));
  const float bc2 = 1.0f - static_cast<float>(std::pow(h.beta2, static_cast<double>(step)));
  adamw_kernel<<<static_cast<unsigned>(num_chunks), 256, 0, stream>>>(
      params, master, grads, m, v, chunks_device, grad_scale, h.lr, h.beta1, h.beta2, h.eps, bc1, bc2);
  return check_launch("adamw", dims);
}

__global__ void copy_to_bf16_kernel(bf16* params, const float* master, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) params[i] = __float2bfloat16(master[i]);
}

Status copy_to_bf16(bf16* params, const float* master, int64_t n, cudaStream_t stream) {
  if (n < 1) return ok_status();
  copy_to_bf16_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, stream>>>(params, master, n);
  return check_launch("copy_to_bf16", {{"n", n}});
}

}  // namespace loom::cuda
