// Fused softmax + cross-entropy + its gradient, in place over the logits (llm.c's
// fused_classifier): the (N, Vp) logits are read twice and overwritten once with dlogits, so no
// probability tensor is ever stored. Columns [V, Vp) are vocabulary padding: masked out of the
// softmax, gradient 0 (executor/cpu/crossentropy.hpp's convention).
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// losses (N) = logsumexp(logits[n, :V]) - logits[n, targets[n]], fp32.
// logits (N, Vp) bf16, overwritten with dloss * (softmax(logits[n, :V]) - onehot(targets[n])),
// 0 in the padded columns. targets (N) in [0, V). Vp a multiple of 8.
Status crossentropy_forward_backward(float* losses, bf16* logits, const int32_t* targets,
                                     float dloss, int64_t N, int64_t V, int64_t Vp,
                                     cudaStream_t stream);

// *sum += scale * sum of losses (N), one block, fixed order: the mean loss without a host sync.
Status accumulate_loss(float* sum, const float* losses, int64_t N, float scale,
                       cudaStream_t stream);

}  // namespace loom::cuda
