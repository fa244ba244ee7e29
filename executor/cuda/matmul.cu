#include "executor/cuda/matmul.cuh"

#include <algorithm>
#include <string>

namespace loom::cuda {
namespace {

Status cublas_status(cublasStatus_t s, const char* what, const char* op, Dims dims) {
  if (s == CUBLAS_STATUS_SUCCESS) return ok_status();
  return Error{describe(op, dims) + ": " + what + ": cuBLAS status " + std::to_string(int(s)) +
               " (" + cublasLtGetStatusName(s) + ")"};
}

// Column sums in two deterministic passes: block (x, y) sums rows [y*rows, (y+1)*rows) of a
// 256-column slab into partial[y][.]; the finish kernel adds the splits in order.
constexpr int kColThreadsX = 32, kColThreadsY = 8, kColsPerThread = 8;
constexpr int kColsPerBlock = kColThreadsX * kColsPerThread;  // 256
constexpr int64_t kTargetBlocks = 264;                          // two waves on 132 SMs

int64_t column_splits(int64_t N, int64_t OC) {
  const int64_t slabs = ceil_div(OC, kColsPerBlock);
  return std::clamp<int64_t>(ceil_div(kTargetBlocks, slabs), 1, std::max<int64_t>(1, N / 32));
}

}  // namespace

__global__ void column_sum_partial_kernel(float* partial, const bf16* x, int N, int OC,
                                          int rows_per_split) {
  __shared__ float sums[kColThreadsY][kColsPerBlock];
  const int c0 = (blockIdx.x * kColThreadsX + threadIdx.x) * kColsPerThread;
  const int r0 = blockIdx.y * rows_per_split;
  const int r1 = min(N, r0 + rows_per_split);
  float acc[kColsPerThread] = {};
  if (c0 < OC) {
    for (int r = r0 + threadIdx.y; r < r1; r += kColThreadsY) {
      const int4 raw = *reinterpret_cast<const int4*>(x + static_cast<int64_t>(r) * OC + c0);
      const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
      for (int i = 0; i < kColsPerThread; i++) acc[i] += __bfloat162float(v[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kColsPerThread; i++) sums[threadIdx.y][threadIdx.x * kColsPerThread + i] = acc[i];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < OC) {
#pragma unroll
    for (int i = 0; i < kColsPerThread; i++) {
      float s = 0;
      for (int y = 0; y < kColThreadsY; y++) s += sums[y][threadIdx.x * kColsPerThread + i];
      partial[static_cast<int64_t>(blockIdx.y) * OC + c0 + i] = s;
    }
  }
}

__global__ void column_sum_finish_kernel(float* out, const float* partial, int splits, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float s = 0;
  for (int y = 0; y < splits; y++) s += partial[static_cast<int64_t>(y) * OC + c];
  out[c] += s;
}

int64_t bias_scratch_floats(int64_t N, int64_t OC) { return column_splits(N, OC) * OC; }

Status column_sum(float* out, float* scratch, const bf16* x, int64_t N, int64_t OC,
                  cudaStream_t stream) {
  const Dims dims{{"N", N}, {"OC", OC}};
  if (N < 1 || OC < 1 || OC % kColsPerThread != 0) {
    return shape_error("column_sum", dims, "needs N >= 1 and OC a multiple of 8");
  }
  const int64_t splits = column_splits(N, OC);
  const int64_t rows = ceil_div(N, splits);
  const dim3 grid(static_cast<unsigned>(ceil_div(OC, kColsPerBlock)), static_cast<unsigned>(splits));
  column_sum_partial_kernel<<<grid, dim3(kColThreadsX, kColThreadsY), 0, stream>>>(
      scratch, x, static_cast<int>(N), static_cast<int>(OC), static_cast<int>(rows));
  LOOM_TRY(check_launch("column_sum_partial", dims));
  column_sum_finish_kernel<<<static_cast<unsigned>(ceil_div(OC, 256)), 256, 0, stream>>>(
      out, scratch, static_cast<int>(splits), static_cast<int>(OC));
  return check_launch("column_sum_finish", dims);
}

Expected<std::unique_ptr<Gemm>> Gemm::create() {
  std::unique_ptr<Gemm> g(new Gemm());
  const Dims none{};
  LOOM_TRY(cublas_status(cublasLtCreate(&g->handle_), "cublasLtCreate", "gemm", none));
  LOOM_TRY(cuda_status(cudaMalloc(&g->workspace_, kWorkspaceBytes), "gemm workspace",
                       {{"bytes", static_cast<int64_t>(kWorkspaceBytes)}}));
  return std::move(g);
}

Gemm::~Gemm() {
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

Status Gemm::run(const Call& c, cudaStream_t stream, const char* op, Dims dims) {
  const cublasOperation_t ta = c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t dtype_d = c.d_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  // Descriptors are cheap host objects; they are made per call and released on every path.
  struct Release {
    cublasLtMatmulDesc_t& d;
    cublasLtMatrixLayout_t &a, &b, &c;
    ~Release() {
      if (d) cublasLtMatmulDescDestroy(d);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
    }
  } release{desc, la, lb, ld};
  LOOM_TRY(cublas_status(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                         "matmul descriptor", op, dims));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &c.epilogue, sizeof(c.epilogue));
  if (c.bias) {
    const cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c.bias, sizeof(c.bias));
  }
  if (c.aux) {
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &c.aux, sizeof(c.aux));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &c.ldaux, sizeof(c.ldaux));
  }
  if (c.a_type != CUDA_R_16BF) {  // FP8: the scales and the accumulation mode
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &c.a_scale, sizeof(c.a_scale));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &c.b_scale, sizeof(c.b_scale));
    const int8_t fast = c.fast_accum ? 1 : 0;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast));
  }
  const uint64_t a_rows = c.trans_a ? c.k : c.m, a_cols = c.trans_a ? c.m : c.k;
  const uint64_t b_rows = c.trans_b ? c.n : c.k, b_cols = c.trans_b ? c.k : c.n;
  LOOM_TRY(cublas_status(cublasLtMatrixLayoutCreate(&la, c.a_type, a_rows, a_cols, c.lda), "layout A", op, dims));
  LOOM_TRY(cublas_status(cublasLtMatrixLayoutCreate(&lb, c.b_type, b_rows, b_cols, c.ldb), "layout B", op, dims));
  LOOM_TRY(cublas_status(cublasLtMatrixLayoutCreate(&ld, dtype_d, c.m, c.n, c.ldd), "layout D", op, dims));

  const Key key{c.trans_a, c.trans_b, c.m, c.n, c.k, c.lda, c.ldb, c.ldd, c.d_fp32, c.beta != 0,
                static_cast<int>(c.epilogue), c.ldaux, static_cast<int>(c.a_type), static_cast<int>(c.b_type),
                c.fast_accum};
  auto it = algos_.find(key);
  if (it == algos_.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    LOOM_TRY(cublas_status(cublasLtMatmulPreferenceCreate(&pref), "preference", op, dims));
    const size_t ws = kWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(handle_, desc, la, lb, ld, ld, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    LOOM_TRY(cublas_status(s, "algorithm heuristic", op, dims));
    if (found == 0) return Error{describe(op, dims) + ": cuBLASLt has no algorithm for this GEMM"};
    it = algos_.emplace(key, result.algo).first;
  }
  const float alpha = 1.0f;
  return cublas_status(cublasLtMatmul(handle_, desc, &alpha, c.a, la, c.b, lb, &c.beta, c.d, ld,
                                      c.d, ld, &it->second, workspace_, kWorkspaceBytes, stream),
                       "cublasLtMatmul", op, dims);
}

// Row-major X (r, c) is column-major X^T (c, r) with leading dimension c; each function below
// writes the row-major product as the column-major product of the transposes.

Status matmul_forward(Gemm& gemm, bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
                      const bf16* bias, int64_t N, int64_t C, int64_t OC, cudaStream_t stream) {
  const Dims dims{{"N", N}, {"C", C}, {"OC", OC}};
  if (N < 1 || C % 8 != 0 || OC % 8 != 0 || C < 8 || OC < 8) {
    return shape_error("matmul_forward", dims, "needs N >= 1 and C, OC positive multiples of 8");
  }
  // out^T (OC, N) = weight^T... : A = weight as (C, OC) col-major, transposed; B = inp (C, N).
  Gemm::Call c;
  c.trans_a = true;
  c.m = OC, c.n = N, c.k = C;
  c.a = weight, c.lda = C;
  c.b = inp, c.ldb = C;
  c.d = out, c.ldd = OC;
  c.bias = bias;
  if (pre_gelu) {
    c.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    c.aux = pre_gelu;
    c.ldaux = OC;
  } else {
    c.epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  }
  return gemm.run(c, stream, "matmul_forward", dims);
}

Status matmul_backward_input(Gemm& gemm, bf16* dinp, const bf16* dout, const bf16* weight,
                             const bf16* gelu_input, int64_t N, int64_t C, int64_t OC,
                             cudaStream_t stream) {
  const Dims dims{{"N", N}, {"C", C}, {"OC", OC}};
  if (N < 1 || C % 8 != 0 || OC % 8 != 0 || C < 8 || OC < 8) {
    return shape_error("matmul_backward_input", dims, "needs N >= 1 and C, OC positive multiples of 8");
  }
  // dinp^T (C, N) = weight^T (C, OC) @ dout^T (OC, N): A = weight as (C, OC), B = dout (OC, N).
  Gemm::Call c;
  c.m = C, c.n = N, c.k = OC;
  c.a = weight, c.lda = C;
  c.b = dout, c.ldb = OC;
  c.d = dinp, c.ldd = C;
  if (gelu_input) {
    c.epilogue = CUBLASLT_EPILOGUE_DGELU;
    c.aux = const_cast<bf16*>(gelu_input);  // read-only for DGELU
    c.ldaux = C;
  }
  return gemm.run(c, stream, "matmul_backward_input", dims);
}

Status matmul_backward_weight(Gemm& gemm, float* dweight, float* dbias, float* scratch,
                              const bf16* dout, const bf16* inp, int64_t N, int64_t C, int64_t OC,
                              cudaStream_t stream) {
  const Dims dims{{"N", N}, {"C", C}, {"OC", OC}};
  if (N < 1 || C % 8 != 0 || OC % 8 != 0 || C < 8 || OC < 8) {
    return shape_error("matmul_backward_weight", dims, "needs N >= 1 and C, OC positive multiples of 8");
  }
  // dweight^T (C, OC) += inp^T (C, N) @ dout (N, OC): A = inp (C, N), B = dout^T of (OC, N).
  Gemm::Call c;
  c.trans_b = true;
  c.m = C, c.n = OC, c.k = N;
  c.a = inp, c.lda = C;
  c.b = dout, c.ldb = OC;
  c.d = dweight, c.ldd = C;
  c.d_fp32 = true;
  c.beta = 1.0f;
  LOOM_TRY(gemm.run(c, stream, "matmul_backward_weight", dims));
  if (dbias) LOOM_TRY(column_sum(dbias, scratch, dout, N, OC, stream));
  return ok_status();
}

Status matmul_fp8(Gemm& gemm, void* d, bool d_fp32_accumulate, const void* a, bool a_e5m2, const void* b, bool b_e5m2,
                  const float* scales, int64_t m, int64_t n, int64_t k, bool fast_accum, cudaStream_t stream) {
  const Dims dims{{"m", m}, {"n", n}, {"k", k}};
  if (m < 16 || n < 16 || k < 16 || m % 16 != 0 || n % 16 != 0 || k % 16 != 0)
    return shape_error("matmul_fp8", dims, "needs m, n, k positive multiples of 16");
  if (a_e5m2 && b_e5m2) return shape_error("matmul_fp8", dims, "cuBLASLt has no E5M2 x E5M2 GEMM");
  Gemm::Call c;
  c.trans_a = true;  // TN: both operands K-major
  c.m = m, c.n = n, c.k = k;
  c.a = a, c.lda = k;
  c.b = b, c.ldb = k;
  c.a_type = a_e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  c.b_type = b_e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  c.a_scale = scales, c.b_scale = scales + 1;
  c.fast_accum = fast_accum;
  c.d = d, c.ldd = m;
  c.d_fp32 = d_fp32_accumulate;
  c.beta = d_fp32_accumulate ? 1.0f : 0.0f;
  return gemm.run(c, stream, "matmul_fp8", dims);
}

}  // namespace loom::cuda
