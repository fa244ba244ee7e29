// Global gradient norm and clipping, as torch.nn.utils.clip_grad_norm_. Split in two steps so a
// sharded run can all-reduce the sum of squares between them: norm = sqrt(sum over shards).
#pragma once
#include <cstdint>

namespace loom::cpu {

// sum of g[i]^2 over n, accumulated in double in fixed-size chunks summed in order: the same bits
// for any thread count.
template <class Real>
double grad_norm_squared(const Real* grads, int64_t n);

// max_norm / (norm + 1e-6) when norm > max_norm, else 1 (PyTorch's clip coefficient).
double clip_scale(double norm, double max_norm);

// grads (n) *= scale
template <class Real>
void scale_grads(Real* grads, int64_t n, double scale);

// Single-rank convenience: computes the norm, clips in place, returns the norm before clipping.
template <class Real>
double clip_grad_norm(Real* grads, int64_t n, double max_norm);

}  // namespace loom::cpu
