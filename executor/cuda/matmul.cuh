// Linear layers through cuBLASLt, with the row-major conventions of executor/cpu/matmul.hpp:
// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias. Weights and activations bf16, accumulation
// fp32, weight and bias gradients fp32 (accumulated across micro-batches with beta = 1).
// Epilogues fused where they pay (as llm.c's matmul.cuh): bias, GELU (forward, keeping the
// GELU input as cuBLASLt's aux matrix) and the GELU derivative (backward).
#pragma once
#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// One cuBLASLt handle, its workspace, and the algorithm chosen per GEMM shape (the heuristic
// query costs tens of microseconds; a training step calls the same ~10 shapes hundreds of times).
// One per stream; not thread-safe.
class Gemm {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLAS asks for on Hopper
  static Expected<std::unique_ptr<Gemm>> create();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // D (m, n) = op(A) op(B) (+ beta D), column-major as cuBLAS sees it. A and B bf16, or FP8
  // (a_type / b_type E4M3 or E5M2, not both E5M2; then op(A) = A^T and op(B) = B, the only
  // layout cuBLASLt runs FP8 in, each with its per-tensor scale: a device float, A's times B's
  // multiplies the product); D bf16 or fp32. bias (m) bf16 and aux (m, n) bf16 as the epilogue
  // needs. fast_accum: FP8 only, accumulate in the tensor cores' own precision without
  // promoting partial sums to fp32 (CUBLASLT_MATMUL_DESC_FAST_ACCUM; Transformer Engine's
  // forward GEMMs, not its backward ones).
  struct Call {
    bool trans_a = false, trans_b = false;
    int64_t m = 0, n = 0, k = 0;
    const void* a = nullptr;
    int64_t lda = 0;
    const void* b = nullptr;
    int64_t ldb = 0;
    cudaDataType_t a_type = CUDA_R_16BF, b_type = CUDA_R_16BF;
    const float* a_scale = nullptr;
    const float* b_scale = nullptr;
    bool fast_accum = false;
    void* d = nullptr;
    int64_t ldd = 0;
    bool d_fp32 = false;
    float beta = 0;
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const bf16* bias = nullptr;
    bf16* aux = nullptr;
    int64_t ldaux = 0;
  };
  Status run(const Call& call, cudaStream_t stream, const char* op, Dims dims);

 private:
  Gemm() = default;
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                         bool, int, int64_t, int, int, bool>;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::map<Key, cublasLtMatmulAlgo_t> algos_;
};

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC); bias may be nullptr.
// With pre_gelu != nullptr: pre_gelu (N, OC) = that sum and out = gelu_tanh(pre_gelu), one GEMM.
// C and OC multiples of 8 (16-byte rows for the tensor cores).
Status matmul_forward(Gemm& gemm, bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
                      const bf16* bias, int64_t N, int64_t C, int64_t OC, cudaStream_t stream);

// dinp (N, C) = dout (N, OC) @ weight (OC, C), overwritten. With gelu_input != nullptr (N, C),
// the layer's input was gelu(gelu_input) and dinp is the gradient of gelu_input instead:
// (dout @ weight) * gelu'(gelu_input), in the same GEMM.
Status matmul_backward_input(Gemm& gemm, bf16* dinp, const bf16* dout, const bf16* weight,
                             const bf16* gelu_input, int64_t N, int64_t C, int64_t OC,
                             cudaStream_t stream);

// dweight (OC, C) += dout^T @ inp, fp32. dbias (OC) += column sums of dout when dbias is not
// nullptr, deterministically (fixed row splits summed in order), through `scratch` of at least
// bias_scratch_floats(N, OC) floats.
Status matmul_backward_weight(Gemm& gemm, float* dweight, float* dbias, float* scratch,
                              const bf16* dout, const bf16* inp, int64_t N, int64_t C, int64_t OC,
                              cudaStream_t stream);

// One FP8 GEMM as Transformer Engine runs a linear layer's (its forward, input gradient or
// weight gradient): D (m, n) = A^T B over K-major operands, A (k, m) and B (k, n) column-major
// (leading dimension k), each E4M3 or E5M2 (`a_e5m2`, `b_e5m2`; not both) with its per-tensor
// scale (`scales`: two device floats, A's and B's); D bf16 (ld m) or, with `d_fp32_accumulate`,
// fp32 added into (beta 1: a weight gradient accumulated into its fp32 buffer). m, n and k
// multiples of 16 (cuBLASLt's FP8 alignment). Needs an FP8 GPU (compute capability 8.9+).
Status matmul_fp8(Gemm& gemm, void* d, bool d_fp32_accumulate, const void* a, bool a_e5m2, const void* b, bool b_e5m2,
                  const float* scales, int64_t m, int64_t n, int64_t k, bool fast_accum, cudaStream_t stream);

// out (OC) += sum over the N rows of x (N, OC); the kernel behind dbias.
Status column_sum(float* out, float* scratch, const bf16* x, int64_t N, int64_t OC,
                  cudaStream_t stream);
int64_t bias_scratch_floats(int64_t N, int64_t OC);

}  // namespace loom::cuda
