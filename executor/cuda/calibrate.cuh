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

}  // namespace loom::cuda
