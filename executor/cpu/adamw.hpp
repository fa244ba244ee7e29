// AdamW (Loshchilov & Hutter 2019): Adam with bias correction and decoupled weight decay, as
// torch.optim.AdamW. Works on any contiguous range, so ZeRO can call it on a shard of the flat
// parameter buffer with the matching shard of m and v.
#pragma once
#include <cstdint>

namespace loom::cpu {

struct AdamWConfig {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p -= lr * weight_decay * p
};

// For i in [0, n): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m / (1 - b1^step) / (sqrt(v / (1 - b2^step)) + eps) + weight_decay * p).
// params, m, v (n) updated in place; grads (n); step counts from 1.
template <class Real>
void adamw_step(Real* params, const Real* grads, Real* m, Real* v, int64_t n, int64_t step,
                const AdamWConfig& config);

}  // namespace loom::cpu
