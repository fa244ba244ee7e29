// Fused softmax + cross-entropy over logits rows that may be padded past the true vocabulary
// (Vp >= V, e.g. to a multiple of 128*tp as Megatron pads): columns [V, Vp) are masked, i.e. get
// probability 0 and gradient 0, so padding never changes the loss.
#pragma once
#include <cstdint>

namespace loom::cpu {

// losses (N) = logsumexp(logits[n, :V]) - logits[n, targets[n]]
// probs (N, Vp) = softmax(logits[n, :V]), 0 in the padded columns (kept for backward)
// logits (N, Vp); targets (N) in [0, V)
template <class Real>
void crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int32_t* targets,
                          int64_t N, int64_t V, int64_t Vp);

// dlogits (N, Vp) += (probs - onehot(target)) * dlosses[n] over [0, V); padded columns untouched.
// dlosses (N): e.g. 1/N each for a mean loss.
template <class Real>
void crossentropy_backward(Real* dlogits, const Real* dlosses, const Real* probs,
                           const int32_t* targets, int64_t N, int64_t V, int64_t Vp);

}  // namespace loom::cpu
