// Parameter counts and FLOPs from op shapes. Everything here is exact integer arithmetic.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/specs.hpp"

namespace loom {

// Whole-step FLOP counts overflow int64 for the largest models (GPT-3 175B, global batch
// 1536: 3.2e21), so they are held in 128 bits and converted to double only for printing.
using FlopCount = __int128;

// Parameters of one transformer layer, split by how tensor parallelism treats them.
struct LayerParams {
  int64_t sharded = 0;     // column/row-parallel weights and column-parallel biases: / tp
  int64_t replicated = 0;  // norms and row-parallel biases: copied on every tp rank
  int64_t total() const { return sharded + replicated; }
};

// gpt: LN1 (2h), QKV (h(h+2kv) + h+2kv), proj (h^2 + h), LN2 (2h), fc1 (hf + f), fc2 (fh + h).
// llama: RMSNorm (h), q (h^2), k, v (h kv each), o (h^2), RMSNorm (h), gate, up, down (3hf).
LayerParams layer_params(const ModelSpec& m);
// Word embedding (V h) plus, for gpt, learned positions (seq_len h).
int64_t embedding_params(const ModelSpec& m);
// Final norm (gpt 2h, llama h).
int64_t final_norm_params(const ModelSpec& m);
// Output projection when not tied (V h), else 0.
int64_t output_params(const ModelSpec& m);
int64_t total_params(const ModelSpec& m);

// Rows of the vocabulary one tensor-parallel rank holds (Megatron's vocab-parallel
// embedding; the vocabulary is padded to a multiple of tp).
inline int64_t vocab_per_rank(int64_t vocab, int64_t tp) { return (vocab + tp - 1) / tp; }

// How the attention core's FLOPs are counted. Causal attention only needs the scores below
// the diagonal, and the fused kernels loom prices skip the rest (FlashAttention-2, Dao 2023,
// Sec. 3.1: causal masking skips the blocks above it, about half the work): `causal` counts
// s^2/2 per head, what the kernels do and what a step time is priced from. `full` counts the
// whole s x s product, Narayanan et al.'s convention (2021, eq. 3), which Megatron-LM's and
// most papers' TFLOP/s figures use; it overstates the work by up to 2x at long sequences.
enum class AttentionFlops { causal, full };

// Forward FLOPs of one layer for `tokens` = b*s tokens of sequence s, whole layer (all tp
// ranks). Matrix multiplications only (Narayanan et al. 2021, appendix): GEMMs 2*M*N*K;
// attention scores and attention-times-values 2*b*s^2*h each with `full` (half with causal).
// GPT, full: 24 b s h^2 + 4 b s^2 h.
struct LayerFlops {
  FlopCount gemm = 0;       // weight GEMMs
  FlopCount attention = 0;  // QK^T and softmax*V
  FlopCount total() const { return gemm + attention; }
};
LayerFlops layer_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq,
                               AttentionFlops conv = AttentionFlops::full);
// Logits GEMM: 2 b s h V.
FlopCount logits_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq);

// Whole-step FLOPs for a global batch B: model FLOPs (forward + backward = 3x forward) and
// hardware FLOPs (with the recompute's extra forward work). With `full` attention, for GPT
// 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) and, with full recompute,
// 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) (Narayanan et al. 2021, eqs. 3 and appendix);
// selective recompute adds the attention core: 72 B s l h^2 (1 + s/(3h) + V/(12 l h))
// (Korthikanti et al. 2022, eq. 8); torchtitan's per-op checkpointing (Recompute::op) the
// forward of the k, output and up projections, 2 B s l h (kv + q + f).
// The causal counts replace s/(6h) by s/(12h) (and s/(3h) by s/(6h)). MFU and TFLOP/s are
// reported in both conventions, each labelled: the causal one is what the GPU did.
FlopCount model_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, AttentionFlops conv);
FlopCount hardware_flops(const ModelSpec& m, int64_t global_batch, int64_t seq, Recompute r, AttentionFlops conv);

// Every divisor of n (n >= 1; none for n < 1), ascending. n is factored by trial division up
// to sqrt(n) and the divisors formed from its prime powers, so the work grows with sqrt(n), not
// n: 2^20 steps at most for a global batch within its bound of 2^40 (12 = 2^2 3: 1 2 3 4 6 12).
std::vector<int64_t> divisors(int64_t n);

}  // namespace loom
