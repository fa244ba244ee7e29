// `loom calibrate` on the CUDA backend: microbenchmarks (CUDA events, medians over repeats) of
// the executor's own cuBLASLt GEMM calls over the shapes transformer layers and logits produce,
// FP8 GEMMs over the linear layers' shapes as Transformer Engine runs them (FP8 GPUs only),
// its attention kernel, a bf16 elementwise kernel's bandwidth against size, kernel launch
// overhead, its AdamW step and gradient norm, and the memory a process holds beyond its own
// allocations (cudaMemGetInfo deltas). Writes a sim/profile.hpp profile; never looks at an
// end-to-end step time.
#pragma once
#include <cstdint>
#include <string>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

struct CalibrateOptions {
  std::string out;            // profile path ("" = print only)
  std::string name = "h100-sxm";
  int device = 0;
  bool quick = false;         // a smaller grid (for tests)
  bool progress = true;
};

// Returns the exit code: 0 done, 2 bad input, 3 a CUDA failure (one line on stderr).
int calibrate_command(const CalibrateOptions& options);

// Kernels the microbenchmarks need (calibrate_kernels.cu).
Status fill_random_bf16(bf16* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream);
Status fill_random_f32(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t stream);
// n FP8 values (E4M3, or E5M2 with `e5m2`), uniform in [-scale, scale) before rounding.
Status fill_random_fp8(void* x, int64_t n, uint64_t seed, float scale, bool e5m2, cudaStream_t stream);
// out (n) = a + b, bf16, 16-byte accesses (n a multiple of 8).
Status add_bf16(bf16* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream);
Status empty_kernel(cudaStream_t stream);
// The memory-bound kinds the executor has no kernel of its own for (sim/mem_kind.hpp):
// y (rows, cols) = softmax of each row of x, and its backward dx = y (dy - rowsum(y dy));
// cols a multiple of 8.
Status softmax_rows(bf16* y, const bf16* x, int64_t rows, int64_t cols, cudaStream_t stream);
Status softmax_rows_backward(bf16* dx, const bf16* y, const bf16* dy, int64_t rows, int64_t cols, cudaStream_t stream);
// Dropout of probability p with a one-byte mask (n a multiple of 8), and its backward.
Status dropout_forward(bf16* y, uint8_t* mask, const bf16* x, int64_t n, float p, uint64_t seed, cudaStream_t stream);
Status dropout_backward(bf16* dx, const bf16* dy, const uint8_t* mask, int64_t n, float p, cudaStream_t stream);
// E4M3 out (rows, cols) and out_t (cols, rows) = in x scale, *amax = max(*amax, max |in|).
Status fp8_cast_transpose(void* out, void* out_t, float* amax, const bf16* in, int64_t rows, int64_t cols, float scale,
                          cudaStream_t stream);

}  // namespace loom::cuda
