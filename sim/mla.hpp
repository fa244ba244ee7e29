// Multi-head latent attention (MLA; DeepSeek-V2, arXiv 2405.04434, Sec. 2.1; DeepSeek-V3, arXiv
// 2412.19437, Sec. 2.1): the attention's parameters, FLOPs, ops and saved activations, for
// model_math.cpp and stage_work.cpp, and the model keys that describe it.
//
// Shapes (transformers' DeepseekV2Attention, modeling_deepseek.py), with h hidden, H heads,
// dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim, cq = q_lora_rank,
// ckv = kv_lora_rank:
//   q path    cq > 0: q_a_proj h x cq, q_a_layernorm cq, q_b_proj cq x H (dn + dr);
//             cq = 0: q_proj h x H (dn + dr)
//   kv down   kv_a_proj_with_mqa h x (ckv + dr): the kv latent and one RoPE key shared by
//             every head; kv_a_layernorm ckv
//   kv up     kv_b_proj ckv x H (dn + dv): each head's no-RoPE key and its value
//   output    o_proj H dv x h
// The attention core multiplies q and k of dn + dr per head and p and v of dv per head.
//
// Tensor parallelism (Megatron-core's MLASelfAttention): heads are split, so the up-projections
// (and q_proj) are column-parallel and o_proj row-parallel; the down-projections and the
// latent norms are replicated on every tp rank. loom runs them on the tokens the rank holds
// after the attention input's gather (all b s tokens), so every tp rank computes and stores the
// latents in full. Their gradients flow back through the attention input's gradient, summed
// over tp by the same all-reduce (or SP reduce-scatter) as a dense layer's, and the replicated
// weights' gradients are partial sums over tp: all-reduced once per step (with SP in the
// "tp replicated gradients" message, without it in "tp mla down-projection gradients").
// Megatron-core with SP instead runs the down-projections on the sequence shard and gathers
// the latents; that saves compute and bytes loom does not claim.
#pragma once
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "sim/json_reader.hpp"
#include "sim/model_math.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"

namespace loom {

// Parameters of one layer's attention block (without its pre-norm): sharded over tp (q or q up,
// kv up, o) and replicated (q and kv down-projections, their RMSNorm gains).
LayerParams mla_attention_params(const ModelSpec& m);

// Forward FLOPs of one layer's attention block for batch x seq tokens, whole layer (all tp
// ranks): the five GEMMs (2 M N K each) and the core with the full s x s product (Narayanan et
// al.'s convention): q k^T 2 b s^2 H (dn + dr), p v 2 b s^2 H dv.
LayerFlops mla_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq);

// The attention core on one tp rank: forward FLOPs (full s x s) of b sequences of s over H / t
// heads, and the head size the fused kernel is timed at, (dn + dr + dv) / 2, so that its
// 4 b H s^2 d equals the q k^T plus p v FLOPs.
FlopCount mla_core_forward_flops(const ModelSpec& m, int64_t batch, int64_t seq, int64_t tp);
double mla_core_head_size(const ModelSpec& m);

// One layer's MLA GEMMs on one tp rank for T tokens (count L per micro-batch): q down
// (T, cq, h) and q up (T, H (dn + dr) / t, cq), or q (T, H (dn + dr) / t, h); kv down
// (T, ckv + dr, h); kv up (T, H (dn + dv) / t, ckv); output projection (T, h, H dv / t).
void mla_gemms(std::vector<Op>& ops, const ModelSpec& m, int64_t T, int64_t tp, Pass pass, int64_t L);
// Memory-bound MLA kernels: RoPE on q's dr part (H dr / t) and the shared key (dr), the latent
// RMSNorms (ckv, cq), and assembling q and k of dn + dr per head (k's RoPE part copied to
// every head): each reads and writes its tensor; backward `scale` times the forward's time.
void mla_elementwise(std::vector<Op>& ops, const ModelSpec& m, int64_t T, int64_t tp, int64_t e, Pass pass,
                     int64_t L, double scale);

// Bytes one layer's attention keeps for backward (one micro-batch, one tp rank, no full
// recompute), as transformers' DeepseekV2Attention and a fused-attention kernel keep them:
// `heads` the core's q, k (dn + dr), v (dv) and output (dv) of H / t heads; `latents` the kv
// latent before and after its norm (ckv each) and, with cq > 0, the q latent's two (cq each),
// on every tp rank in full; `stats` the latent norms' fp32 rstd per token.
struct MlaActivationBytes {
  int64_t heads = 0, latents = 0, stats = 0;
};
MlaActivationBytes mla_activation_bytes(const ModelSpec& m, int64_t tokens, int64_t tp, int64_t e);
// Elements of backward scratch the MLA attention needs on one tp rank beyond a llama layer's
// q, k, v and output gradients (N tokens): the gradients of q, k (dn + dr), of kv up's output
// (dn + dv) and of the output (dv) per local head, and of the latents in full, less the dense
// layer's 4 h / t + 3 kv / t per token. May be negative.
int64_t mla_scratch_elements_delta(const ModelSpec& m, int64_t N, int64_t tp, int64_t h, int64_t kv);

// Without sequence parallelism, the replicated down-projection and latent-norm weights'
// gradients (partial sums over tp, see above) all-reduced over tp once per step; `layers` the
// stage's layers, `g` bytes per gradient element. With SP they are in the replicated-gradient
// all-reduce already; nothing without tp.
void mla_messages(std::vector<Message>& v, const ModelSpec& m, const ParallelConfig& p, int64_t layers, int64_t g);

// Bounds for validate.cpp's sizes of a step: activation elements per token of one layer's
// attention at their largest (every tensor above, tp = 1), and forward FLOPs per token.
long double mla_elements_per_token(const ModelSpec& m);
long double mla_forward_flops_per_token(const ModelSpec& m, int64_t seq);

// Model checks: no MLA key without kv_lora_rank; with it the llama family and each size within
// its bound (head sizes, ranks <= limits::kHidden; H (dn + dr) and H dv <= limits::kFfnHidden).
Status check_mla_model(const ModelSpec& m, const FieldNamer& name);

// A loom model file's MLA keys (q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
// v_head_dim), read and written (only for an MLA model).
void read_mla_keys(ObjectReader& r, ModelSpec& m);
void mla_keys_to_json(nlohmann::json& j, const ModelSpec& m);
// A Hugging Face config's MLA keys: required for model_type deepseek_v2 and deepseek_v3
// (q_lora_rank null: no q down-projection, as DeepSeek-V2-Lite), refused on any other type.
void read_hf_mla(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type);

}  // namespace loom
