#include "executor/cuda/compute_kernels.cuh"

namespace loom::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(ceil_div(n > 0 ? n : 1, kThreads)); }

__device__ inline int64_t gid() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

Status check_n(const char* op, int64_t n) {
  if (n < 0) return shape_error(op, {{"n", n}}, "needs n >= 0");
  return ok_status();
}

__global__ void cast_to_bf16_kernel(bf16* dst, const float* src, int64_t n) {
  const int64_t i = gid();
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void cast_to_f32_kernel(float* dst, const bf16* src, int64_t n) {
  const int64_t i = gid();
  if (i < n) dst[i] = __bfloat162float(src[i]);
}
__global__ void add_bf16_kernel(float* dst, const bf16* src, int64_t n) {
  const int64_t i = gid();
  if (i < n) dst[i] += __bfloat162float(src[i]);
}
__global__ void add_f32_kernel(float* dst, const float* src, int64_t n) {
  const int64_t i = gid();
  if (i < n) dst[i] += src[i];
}
__global__ void residual_kernel(float* out, bf16* out_b, const float* x, const float* r, const float* bias,
                                int64_t n, int64_t C) {
  const int64_t i = gid();
  if (i >= n) return;
  const float y = x[i] + (r[i] + (bias ? bias[i % C] : 0.0f));  // stage.cpp's order
  out[i] = y;
  if (out_b) out_b[i] = __float2bfloat16_rn(y);
}
__global__ void column_sum_kernel(float* g, const float* d, int64_t rows, int64_t C) {
  const int64_t j = gid();
  if (j >= C) return;
  float acc = 0.0f;
  for (int64_t i = 0; i < rows; ++i) acc += d[i * C + j];
  g[j] += acc;
}
__global__ void embed_gather_kernel(float* part, const float* wte, const int32_t* tokens, int64_t N, int64_t C,
                                    int64_t v0, int64_t Vr) {
  const int64_t i = gid();
  if (i >= N * C) return;
  const int64_t n = i / C, j = i % C, t = tokens[n] - v0;
  part[i] = (t >= 0 && t < Vr) ? wte[t * C + j] : 0.0f;
}
__global__ void add_positions_kernel(float* x, const float* r, const float* wpe, int64_t rows, int64_t C,
                                     int64_t row0, int64_t T) {
  const int64_t i = gid();
  if (i >= rows * C) return;
  const int64_t row = i / C, j = i % C;
  x[i] = r[i] + (wpe ? wpe[((row0 + row) % T) * C + j] : 0.0f);
}
__global__ void embed_scatter_kernel(float* dwte, const float* d, const int32_t* tokens, int64_t N, int64_t C,
                                     int64_t v0, int64_t Vr) {
  const int64_t i = gid();
  if (i >= N * C) return;
  const int64_t n = i / C, j = i % C, t = tokens[n] - v0;
  if (t >= 0 && t < Vr) atomicAdd(dwte + t * C + j, d[i]);
}
__global__ void position_scatter_kernel(float* dwpe, const float* dx, int64_t rows, int64_t C, int64_t row0,
                                        int64_t T) {
  const int64_t i = gid();
  if (i >= rows * C) return;
  const int64_t row = i / C, j = i % C;
  atomicAdd(dwpe + ((row0 + row) % T) * C + j, dx[i]);
}

// One block per row: a block-wide reduction through shared memory.
template <class Op>
__device__ float block_reduce(float v, Op op, float init) {
  __shared__ float s[kThreads];
  s[threadIdx.x] = v;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] = op(s[threadIdx.x], s[threadIdx.x + k]);
    __syncthreads();
  }
  const float r = s[0];
  __syncthreads();
  (void)init;
  return r;
}
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

__global__ void row_max_kernel(float* mx, const float* logits, int64_t ld, int64_t valid) {
  const float* row = logits + blockIdx.x * ld;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < valid; v += kThreads) m = fmaxf(m, row[v]);
  m = block_reduce(m, MaxOp{}, -INFINITY);
  if (threadIdx.x == 0) mx[blockIdx.x] = m;
}
__global__ void exp_sum_kernel(float* logits, float* sum, float* tgt, const float* mx, const int32_t* targets,
                               int64_t ld, int64_t valid, int64_t v0) {
  float* row = logits + blockIdx.x * ld;
  const float m = mx[blockIdx.x];
  const int64_t t = targets[blockIdx.x] - v0;
  if (threadIdx.x == 0) tgt[blockIdx.x] = (t >= 0 && t < valid) ? row[t] : 0.0f;
  __syncthreads();  // the target logit is read before it is overwritten
  float acc = 0.0f;
  for (int64_t v = threadIdx.x; v < ld; v += kThreads) {
    const float e = v < valid ? expf(row[v] - m) : 0.0f;
    row[v] = e;
    acc += e;
  }
  acc = block_reduce(acc, SumOp{}, 0.0f);
  if (threadIdx.x == 0) sum[blockIdx.x] = acc;
}
__global__ void normalize_kernel(float* probs, float* loss, const float* sum, const float* mx, const float* tgt,
                                 int64_t ld, int64_t valid) {
  float* row = probs + blockIdx.x * ld;
  const float inv = 1.0f / sum[blockIdx.x];
  for (int64_t v = threadIdx.x; v < valid; v += kThreads) row[v] *= inv;
  if (threadIdx.x == 0) loss[blockIdx.x] = logf(sum[blockIdx.x]) + mx[blockIdx.x] - tgt[blockIdx.x];
}
__global__ void crossentropy_grad_kernel(bf16* dl, const float* probs, const int32_t* targets, int64_t ld,
                                         int64_t valid, int64_t v0, float w) {
  const float* row = probs + blockIdx.x * ld;
  bf16* out = dl + blockIdx.x * ld;
  const int64_t t = targets[blockIdx.x] - v0;
  for (int64_t v = threadIdx.x; v < ld; v += kThreads)
    out[v] = __float2bfloat16_rn(v < valid ? (row[v] - (v == t ? 1.0f : 0.0f)) * w : 0.0f);
}

__global__ void sum_squares_kernel(double* partial, const float* g, int64_t n) {
  __shared__ double s[kThreads];
  const int64_t per = (n + kSumSquaresBlocks - 1) / kSumSquaresBlocks;
  const int64_t b = blockIdx.x * per, e = n < b + per ? n : b + per;
  double acc = 0;
  for (int64_t i = b + threadIdx.x; i < e; i += kThreads) acc += static_cast<double>(g[i]) * g[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}
__global__ void scale_kernel(float* g, int64_t n, float s) {
  const int64_t i = gid();
  if (i < n) g[i] *= s;
}
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWRange h) {
  const int64_t i = gid();
  if (i >= n) return;
  const float gi = g[i];
  const float mi = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
  const float vi = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float m_hat = mi / h.correction1, v_hat = vi / h.correction2;
  p[i] -= h.lr * (m_hat / (sqrtf(v_hat) + h.eps) + h.weight_decay * p[i]);
}

}  // namespace

#define LOOM_LAUNCH(op, n, ...)                                   \
  do {                                                            \
    LOOM_TRY(check_n(op, n));                                     \
    if ((n) == 0) return ok_status();                             \
    __VA_ARGS__;                                                  \
    return check_launch(op, {{"n", n}});                          \
  } while (0)

Status cast_to_bf16(bf16* dst, const float* src, int64_t n, cudaStream_t s) {
  LOOM_LAUNCH("cast_to_bf16", n, (cast_to_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n)));
}
Status cast_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t s) {
  LOOM_LAUNCH("cast_to_f32", n, (cast_to_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n)));
}
Status add_bf16_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t s) {
  LOOM_LAUNCH("add_bf16_to_f32", n, (add_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n)));
}
Status add_f32(float* dst, const float* src, int64_t n, cudaStream_t s) {
  LOOM_LAUNCH("add_f32", n, (add_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n)));
}
Status residual_add(float* out, bf16* out_b, const float* x, const float* r, const float* bias, int64_t rows,
                    int64_t C, cudaStream_t s) {
  const int64_t n = rows * C;
  LOOM_LAUNCH("residual_add", n, (residual_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, out_b, x, r, bias, n, C)));
}
Status column_sum_f32(float* g, const float* d, int64_t rows, int64_t C, cudaStream_t s) {
  LOOM_LAUNCH("column_sum_f32", C, (column_sum_kernel<<<blocks_for(C), kThreads, 0, s>>>(g, d, rows, C)));
}
Status embed_gather(float* part, const float* wte, const int32_t* tokens, int64_t N, int64_t C, int64_t v0,
                    int64_t Vr, cudaStream_t s) {
  const int64_t n = N * C;
  LOOM_LAUNCH("embed_gather", n,
              (embed_gather_kernel<<<blocks_for(n), kThreads, 0, s>>>(part, wte, tokens, N, C, v0, Vr)));
}
Status add_positions(float* x, const float* r, const float* wpe, int64_t rows, int64_t C, int64_t row0, int64_t T,
                     cudaStream_t s) {
  const int64_t n = rows * C;
  LOOM_LAUNCH("add_positions", n,
              (add_positions_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, r, wpe, rows, C, row0, T)));
}
Status embed_scatter(float* dwte, const float* d, const int32_t* tokens, int64_t N, int64_t C, int64_t v0, int64_t Vr,
                     cudaStream_t s) {
  const int64_t n = N * C;
  LOOM_LAUNCH("embed_scatter", n,
              (embed_scatter_kernel<<<blocks_for(n), kThreads, 0, s>>>(dwte, d, tokens, N, C, v0, Vr)));
}
Status position_scatter(float* dwpe, const float* dx, int64_t rows, int64_t C, int64_t row0, int64_t T,
                        cudaStream_t s) {
  const int64_t n = rows * C;
  LOOM_LAUNCH("position_scatter", n,
              (position_scatter_kernel<<<blocks_for(n), kThreads, 0, s>>>(dwpe, dx, rows, C, row0, T)));
}
Status row_max(float* mx, const float* logits, int64_t N, int64_t ld, int64_t valid, cudaStream_t s) {
  LOOM_LAUNCH("row_max", N, (row_max_kernel<<<static_cast<unsigned>(N), kThreads, 0, s>>>(mx, logits, ld, valid)));
}
Status exp_and_sum(float* logits, float* sum, float* tgt, const float* mx, const int32_t* targets, int64_t N,
                   int64_t ld, int64_t valid, int64_t v0, cudaStream_t s) {
  LOOM_LAUNCH("exp_and_sum", N,
              (exp_sum_kernel<<<static_cast<unsigned>(N), kThreads, 0, s>>>(logits, sum, tgt, mx, targets, ld, valid,
                                                                             v0)));
}
Status normalize_and_loss(float* probs, float* loss, const float* sum, const float* mx, const float* tgt, int64_t N,
                          int64_t ld, int64_t valid, cudaStream_t s) {
  LOOM_LAUNCH("normalize_and_loss", N,
              (normalize_kernel<<<static_cast<unsigned>(N), kThreads, 0, s>>>(probs, loss, sum, mx, tgt, ld, valid)));
}
Status crossentropy_grad(bf16* dl, const float* probs, const int32_t* targets, int64_t N, int64_t ld, int64_t valid,
                         int64_t v0, float w, cudaStream_t s) {
  LOOM_LAUNCH("crossentropy_grad", N,
              (crossentropy_grad_kernel<<<static_cast<unsigned>(N), kThreads, 0, s>>>(dl, probs, targets, ld, valid,
                                                                                       v0, w)));
}
Status sum_squares_partial(double* partial, const float* g, int64_t n, cudaStream_t s) {
  LOOM_TRY(check_n("sum_squares", n));
  sum_squares_kernel<<<kSumSquaresBlocks, kThreads, 0, s>>>(partial, g, n);
  return check_launch("sum_squares", {{"n", n}});
}
Status scale_f32(float* g, int64_t n, float f, cudaStream_t s) {
  LOOM_LAUNCH("scale_f32", n, (scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(g, n, f)));
}
Status adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWRange& h, cudaStream_t s) {
  LOOM_LAUNCH("adamw_f32", n, (adamw_kernel<<<blocks_for(n), kThreads, 0, s>>>(p, g, m, v, n, h)));
}

}  // namespace loom::cuda
