// Global gradient norm and the clip coefficient, computed on the device so the step needs no
// host round trip (torch.nn.utils.clip_grad_norm_ semantics, executor/cpu/grad_norm.hpp).
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

constexpr int kGradNormBlocks = 1024;  // fixed, so the summation order is the same on any GPU

// out[0] = ||grads (n)||_2, out[1] = clip coefficient (max_norm / (norm + 1e-6) when the norm
// exceeds max_norm, else 1; max_norm <= 0 disables clipping). scratch: kGradNormBlocks floats.
// Deterministic: per-block partial sums, then one block adds them in a fixed tree.
Status grad_norm(float* out, float* scratch, const float* grads, int64_t n, float max_norm,
                 cudaStream_t stream);

}  // namespace loom::cuda
