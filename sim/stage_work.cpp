#include "sim/stage_work.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sim/fp8.hpp"
#include "sim/context_parallel.hpp"
#include "sim/mla.hpp"
#include "sim/moe.hpp"
#include "sim/offload.hpp"
#include "sim/profile.hpp"
#include "sim/schedule.hpp"
#include "sim/tp_overlap.hpp"

namespace loom {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of mixed-precision Adam state per parameter: fp32 master weights, momentum and
// variance (12; the ZeRO paper's K = 12, Rajbhandari et al. 2020, Sec. 3.1). An fp32 plan
// needs no master copy (8).
int64_t optimizer_bytes_per_param(Dtype d) { return d == Dtype::bf16 ? 12 : 8; }

// The sizes every term below is written in, for one stage of one configuration.
struct Dims {
  int64_t e = 2, g = 2;          // bytes per element of weights/activations, of gradients
  int64_t b = 1, s = 1, T = 1;   // micro-batch, sequence (this rank's seq / cp), tokens b s
  int64_t cp = 1;                // context parallelism: ranks each sequence is split over
  int64_t h = 0, kv = 0, f = 0, t = 1, rep = 1;  // rep: divisor of tp-replicated tensors (t with SP)
  int64_t q = 0;                 // width of q and of the attention output: heads x head size (h unless
                                 // the model sets its head size, as Gemma 2 and Qwen3 do)
  int64_t Vr = 0;                // vocabulary rows per tp rank
  int64_t mb = 1;                // micro-batches per step per replica
  int64_t layers = 0, layers_chunk = 0;
  int64_t rec_layers = 0;        // of layers, those recomputed in full (ParallelConfig::recomputed_layers)
  int64_t layer_rank = 0, embed_rank = 0, out_rank = 0;  // parameters on this GPU
  int64_t replicated = 0;        // tp-replicated parameters on this stage (SP's gradient all-reduce)
  bool first = false, last = false;  // holds the embedding; holds the output layer and loss
  bool turn = false;                 // zb-v's last stage: its chunk 0 feeds its own chunk 1
  MoeStage moe;                  // expert layers of the stage (sim/moe.hpp); none for a dense model
};

Dims make_dims(const ModelSpec& m, const TrainSpec& tr, const ParallelConfig& p, int64_t stage) {
  Dims d;
  d.e = dtype_bytes(tr.dtype);
  d.g = dtype_bytes(tr.grad_dtype);
  d.b = p.micro_batch;
  d.cp = p.cp;
  d.s = tr.seq / p.cp;  // context parallelism: seq / cp tokens of each sequence per rank
  d.T = d.b * d.s;
  d.h = m.hidden;
  d.kv = m.kv_dim();
  d.q = m.q_dim();
  d.f = m.ffn_hidden;
  d.t = p.tp;
  d.rep = p.sp ? p.tp : 1;
  d.Vr = vocab_per_rank(m.vocab, p.tp);
  d.mb = tr.global_batch / (p.dp * p.micro_batch);
  d.layers = stage_layer_count(p, m.layers, stage);  // uneven stages: p.stage_layers
  d.layers_chunk = chunk_layer_count(p, m.layers, stage);
  if (p.recompute == Recompute::full)  // the search builds millions of stages: walk the chunks only here
    d.rec_layers = stage_recomputed_layers(p, m.layers, stage);
  d.first = stage == 0;
  d.last = stage == head_stage(p.schedule, p.pp);  // zb-v: the first stage holds both ends (the V)
  d.turn = p.schedule == Schedule::zb_v && stage == p.pp - 1;
  const LayerParams lp = layer_params(m);
  d.layer_rank = lp.sharded / p.tp + lp.replicated;
  // Parameters on this GPU: its layers' tp shards, the vocab-parallel embedding (+ replicated
  // positions) on the first stage, the final norm and the output layer on the last; a tied
  // output layer on a separate last stage is a copy (Megatron keeps one, synced by all-reduce).
  if (d.first) d.embed_rank = d.Vr * d.h + (m.family == Family::gpt ? m.seq_len * d.h : 0);
  if (d.last) d.out_rank = final_norm_params(m) + ((!m.tied_embeddings || !d.first) ? d.Vr * d.h : 0);
  d.replicated = d.layers * lp.replicated;
  d.moe = moe_stage(m, tr, p, stage);
  d.replicated += d.moe.router_params;  // the router is replicated over tp (Megatron's TopKRouter)
  if (d.first && m.family == Family::gpt) d.replicated += m.seq_len * d.h;
  if (d.last) d.replicated += final_norm_params(m);
  return d;
}

void add(std::vector<Buffer>& v, const char* name, MemCategory c, Lifetime l, int64_t bytes) {
  if (bytes > 0) v.push_back({name, c, l, bytes});
}

// torchtitan's per-op selective checkpointing (Recompute::op; torchtitan v0.2.2
// torchtitan/distributed/activation_checkpoint.py _apply_op_sac with the Llama block's
// _op_sac_save_list in torchtitan/models/llama3/infra/parallelize.py). The block's forward runs
// seven aten.mm, wq wk wv wo w1 w3 w2 in that order (model/model.py: Attention.forward, then
// w2(silu(w1(x)) * w3(x))); the policy keeps the output of every listed op (the SDPA call,
// _c10d_functional.reduce_scatter_tensor, aten.mm) but every second mm of the block, and the
// checkpoint keeps the block's input. Kept, per layer, per micro-batch, per tp rank:
//   x (the block input, b s h / rep), wq (b s q / t), wv (b s kv / t), the attention output
//   (b s q / t) with its fp32 log-sum-exp (heads / t per token), w1 (b s f / t), and w2's
//   product: all b s tokens by h (a row-parallel product is the full partial sum before its
//   reduce-scatter); with tp > 1 also the two reduce-scatters' outputs (after wo and w2,
//   b s h / t each).
// Rerun in backward: the whole block (torchtitan's ac config leaves early_stop False), each kept
// output taken from the store instead of its op: the two norms, wk, RoPE, wo, both residual adds,
// w3 and SwiGLU. What the rerun holds for its layer's backward is op_sac_rebuilt_bytes.
LayerActivationBytes op_sac_activation_bytes(const ModelSpec& m, int64_t T, int64_t t, bool sp, int64_t e) {
  const int64_t h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden, q = m.q_dim(), rep = sp ? t : 1;
  LayerActivationBytes out;
  out.tensors = e * T * h / rep + e * T * (2 * q + kv + f) / t + e * T * h + (t > 1 ? 2 * e * T * h / t : 0);
  out.statistics = 4 * m.heads * T / t;
  return out;
}

// What the rerun of one layer holds until that layer's backward has used it (torchtitan's eager
// block): both norms' outputs as the GEMMs read them (all b s tokens: with tp > 1 the gathered
// ones, which the weight gradients keep, so the backward gathers nothing again), the first
// residual sum (b s h / rep), q and k after RoPE (b s (q + kv) / t), SiLU's output, w3's and
// their product (b s f / t each), the norms' fp32 statistics, and with Qwen3's q/k norms the k
// norm's input (b s kv / t) and their per-head statistics. The rerun's other outputs (wo's, the
// block's output) are freed as made.
int64_t op_sac_rebuilt_bytes(const ModelSpec& m, int64_t T, int64_t t, bool sp, int64_t e) {
  const int64_t rep = sp ? t : 1, h = m.hidden, kv = m.kv_dim();
  const int64_t qk_norm = m.qk_norm ? e * T * kv / t + 4 * T * (m.heads + m.kv_heads) / t : 0;
  return 2 * e * T * h + e * T * h / rep + e * T * (m.q_dim() + kv) / t + 3 * e * T * m.ffn_hidden / t +
         2 * 4 * T / rep + qk_norm;
}

// Where a stage's chunks hold different layer counts (a short model-end chunk:
// chunk_layers_at), the activations its schedule table holds at its peak, each forward adding
// its chunk's layers (chunk_bytes of its layer count) and, on the model's first and last chunk, the
// embedding's or the head's per-micro-batch bytes, each backward taking them away once it is
// done, and while it runs a recompute's rebuilt layer (`rebuilt`) where its chunk recomputes
// any: the layers' part, the ends' part and the rebuilt layer at that moment.
struct HeldAtPeak {
  int64_t layers = 0, ends = 0, rebuilt = 0;
  int64_t total() const { return layers + ends + rebuilt; }
};
template <class ChunkBytes, class Rebuilds>
HeldAtPeak uneven_chunks_peak(const ModelSpec& m, const ParallelConfig& p, const Dims& d, int64_t stage,
                              const ChunkBytes& chunk_bytes, const Rebuilds& rebuilds, int64_t first_mb,
                              int64_t last_mb) {
  const int64_t v = p.vpp, group = p.pp * v;
  std::vector<HeldAtPeak> chunk(static_cast<size_t>(v));  // what one micro-batch of each chunk holds
  for (int64_t c = 0; c < v; ++c) {
    const int64_t n = chunk_layers_at(p, m.layers, stage, c);
    chunk[static_cast<size_t>(c)] = {chunk_bytes(n),
                                     (d.first && c == 0 ? first_mb : 0) + (d.last && c == v - 1 ? last_mb : 0),
                                     rebuilds(n)};
  }
  // The table's order without building it (one_f_one_b_rank over interleaved_slot, m a multiple
  // of pp as validate_config requires): warm-up forwards, then a forward and a backward in turn,
  // then the cool-down backwards; forward k runs chunk (k mod pp v) / pp, backward k the mirror.
  HeldAtPeak now, peak;
  auto run = [&](int64_t k, bool forward) {
    const int64_t c = (k % group) / p.pp;
    const HeldAtPeak& x = chunk[static_cast<size_t>(forward ? c : v - 1 - c)];
    if (!forward) {  // the backward runs with its chunk still held, beside the layer it rebuilds
      const HeldAtPeak during{now.layers, now.ends, x.rebuilt};
      if (during.total() > peak.total()) peak = during;
    }
    const int64_t sign = forward ? 1 : -1;
    now.layers += sign * x.layers, now.ends += sign * x.ends;
    if (now.total() > peak.total()) peak = now;
  };
  const int64_t total = d.mb * v, warmup = warmup_slots(p.schedule, p.pp, v, stage, d.mb);
  for (int64_t k = 0; k < warmup; ++k) run(k, true);
  for (int64_t k = 0; k < total - warmup; ++k) run(k + warmup, true), run(k, false);
  for (int64_t k = std::max<int64_t>(0, total - warmup); k < total; ++k) run(k, false);
  return peak;
}

// One micro-batch's activations of the chunk of a stage that holds the most under a block
// recompute of a MoE model, as two lines: its layers as dense ones (chunk_bytes) less its MoE
// layers' share, and its MoE layers (sim/moe.hpp): each chunk's first recompute_layers layers
// keep their input only (a recomputed MoE layer as a dense one, moe_layer_activation_bytes),
// the others all of theirs.
struct MoeChunkBytes {
  int64_t dense = 0, moe = 0;
};
struct LayerBytes {
  int64_t recomputed = 0, kept = 0;          // a dense layer's, as chunk_bytes counts it
  int64_t moe_recomputed = 0, moe_kept = 0;  // a MoE layer's
};
template <class ChunkBytes>
MoeChunkBytes block_moe_chunk(const ModelSpec& m, const ParallelConfig& p, int64_t stage, const ChunkBytes& chunk_bytes,
                              const LayerBytes& b) {
  MoeChunkBytes best{-1, 0};
  for (int64_t c = 0; c < p.vpp; ++c) {
    const int64_t n = chunk_layers_at(p, m.layers, stage, c), first = chunk_first_layer(m, p, stage, c);
    const int64_t all = moe_layers_in(m, first, n), rec = moe_layers_in(m, first, p.recomputed_layers(n));
    const MoeChunkBytes x{chunk_bytes(n) - rec * b.recomputed - (all - rec) * b.kept,
                          rec * b.moe_recomputed + (all - rec) * b.moe_kept};
    if (x.dense + x.moe > best.dense + best.moe) best = x;
  }
  return best;
}

// Activations (Korthikanti et al. 2022, Sec. 4; per layer in layer_activation_bytes): the
// chunks in flight, what a recompute rebuilds for one layer in backward (a full recompute the
// layer's activations less the input it already holds, a selective one the attention core),
// and per micro-batch the embedding's dropout mask (first stage) and the final norm's input,
// statistics and the output layer's gathered input (last stage), held for the micro-batches
// the stage's schedule keeps (all m with GPipe, p - i with 1F1B).
void activation_buffers(std::vector<Buffer>& v, const ModelSpec& m, const TrainSpec& tr, const ParallelConfig& p,
                        const Dims& d, int64_t in_flight, int64_t stage) {
  const auto act = layer_activation_bytes(m, d.b, d.s, d.t, p.sp, p.recompute, tr.attention, tr.dtype);
  const auto full = layer_activation_bytes(m, d.b, d.s, d.t, p.sp, Recompute::none, tr.attention, tr.dtype);
  // FP8 (sim/fp8.hpp): the FP8 GEMMs' saved inputs in FP8; what a recompute rebuilds likewise.
  const int64_t fp8 = tr.fp8 ? fp8_layer_activation_delta_bytes(m, d.b, d.s, d.t, p.sp, p.recompute, tr.attention, true) : 0;
  const int64_t fp8_full = tr.fp8 ? fp8_layer_activation_delta_bytes(m, d.b, d.s, d.t, p.sp, Recompute::none, tr.attention, true) : 0;
  const int64_t mask = m.dropout ? 1 : 0, norm_stats = m.family == Family::gpt ? 2 : 1;
  const int64_t first_mb = d.first ? mask * d.T * d.h / d.rep : 0;
  const int64_t last_mb = d.last ? d.e * d.T * d.h / d.rep + norm_stats * 4 * d.T / d.rep + d.e * d.T * d.h : 0;
  // What one micro-batch of a chunk of n layers holds: with a block recompute
  // (ParallelConfig::recompute_layers) its first layers keep their input only, the rest all;
  // with every K-th layer recomputed (recompute_every), n / K of them keep their input only.
  const int64_t kept = full.total() + fp8_full;
  auto chunk_bytes = [&](int64_t n) {
    const int64_t r = p.partial_recompute() ? p.recomputed_layers(n) : n;
    return r * (act.total() + fp8) + (n - r) * kept;
  };
  // What a recompute rebuilds for one layer in backward, in a chunk of n layers: nothing where a
  // full recompute leaves all n out (every K-th layer with n < K). torchtitan's per-op
  // checkpointing keeps tensors the layer without recompute does not (op_sac_rebuilt_bytes).
  const int64_t rebuilt_layer = p.recompute == Recompute::op ? op_sac_rebuilt_bytes(m, d.T, d.t, p.sp, d.e)
                                                             : full.total() + fp8_full - act.total() - fp8;
  auto rebuilds = [&](int64_t n) {
    return p.recompute == Recompute::none || (p.recompute == Recompute::full && p.recomputed_layers(n) == 0)
               ? int64_t{0}
               : rebuilt_layer;
  };
  const bool uneven = d.layers % p.vpp != 0 && p.schedule == Schedule::interleaved;
  const HeldAtPeak held =
      uneven ? uneven_chunks_peak(m, p, d, stage, chunk_bytes, rebuilds, first_mb, last_mb) : HeldAtPeak{};
  auto moe_layer = [&](Recompute r) {
    return d.moe.layers_chunk > 0 ? moe_layer_activation_bytes(m, d.moe, d.b, d.s, p.sp, r, tr.attention, tr.dtype) : 0;
  };
  const int64_t moe_act = moe_layer(p.recompute), moe_full = moe_layer(Recompute::none);
  if (p.partial_recompute() && d.moe.layers_chunk > 0) {  // a block recompute of MoE layers
    const MoeChunkBytes c = block_moe_chunk(m, p, stage, chunk_bytes, {act.total() + fp8, kept, moe_act, moe_full});
    add(v, "layer activations", MemCategory::activations, Lifetime::in_flight, in_flight * c.dense);
    add(v, "moe layer activations", MemCategory::activations, Lifetime::in_flight, in_flight * c.moe);
  } else {
    // (MoE with a short chunk: the MoE layers are taken off at the most any chunk holds, which can
    // leave the dense line low and the MoE line high; the sum stays an upper bound.)
    add(v, "layer activations", MemCategory::activations, Lifetime::in_flight,
        uneven ? held.layers - in_flight * d.moe.layers_chunk * (act.total() + fp8)
               : in_flight * (chunk_bytes(d.layers_chunk) - d.moe.layers_chunk * (act.total() + fp8)));
    if (d.moe.layers_chunk > 0)  // MoE layers (sim/moe.hpp), the most of any chunk of the stage
      add(v, "moe layer activations", MemCategory::activations, Lifetime::in_flight,
          in_flight * d.moe.layers_chunk * moe_act);
  }
  // A recomputed MoE layer rebuilds more than a dense one.
  if (d.moe.layers_chunk > 0 && p.recompute != Recompute::none)
    add(v, "recomputed moe layer", MemCategory::activations, Lifetime::transient,
        (moe_full - moe_act) - (full.total() - act.total()));
  add(v, "recomputed layer", MemCategory::activations, Lifetime::transient,
      uneven ? held.rebuilt : rebuilds(d.layers_chunk));
  int64_t held_first = p.schedule == Schedule::gpipe ? d.mb : std::min<int64_t>(p.pp - stage, d.mb);
  int64_t held_last = held_first;
  // zb-v (zb_v_rank's first table): chunk 0, the embedding's, holds min(2p, m) micro-batches
  // from F to B; chunk 1, the head's, runs each F, B, W in a row (one at a time).
  if (p.schedule == Schedule::zb_v) held_first = std::min<int64_t>(2 * p.pp, d.mb), held_last = 1;
  add(v, "embedding and head activations", MemCategory::activations, Lifetime::in_flight,
      uneven ? held.ends : held_first * first_mb + held_last * last_mb);
  // Logits (e, consumed by the cross-entropy) and the fp32 probabilities (4) the unfused
  // cross-entropy keeps for backward (Megatron's vocab-parallel cross-entropy): one
  // micro-batch's at a time, except GPipe, which runs every forward before the first backward.
  // The fused one (llm.c's classifier) keeps only the logits, its gradient written over them.
  if (d.last) {
    const int64_t n = p.schedule == Schedule::gpipe ? d.mb : 1;
    add(v, "logits", MemCategory::logits, Lifetime::in_flight,
        tr.cross_entropy == CrossEntropy::fused ? n * d.e * d.T * d.Vr : (d.e + n * 4) * d.T * d.Vr);
  }
}

// DeepSpeed 0.3's stage 3 under full recompute (deepspeed/runtime/zero/stage3.py at v0.3.15,
// commit 2c2a7f31bcc2): every sub-module's forward hooks fetch its parameters and release them
// after it ran, also when the checkpointed forward reruns inside the backward; the backward
// pre-hook then fetches them again. A release is skipped only when the module's parameters are
// used again within stage3_max_reuse_distance elements of other parameters (_keep_for_later,
// get_reuse_distance_in_numel over the recorded module trace; default 1e9 in
// zero/constants.py). After a module's recompute, the trace runs the layer's later modules'
// recompute, then their backwards (last first), then the module's own backward: its reuse
// distance is twice the parameters of the modules after it in the layer. So the backward
// gathers again every module of the layer but those near its end. The modules (per tp rank,
// in forward order): GPT's two LayerNorms, fused QKV, projection, fc1, fc2, each with a bias;
// the llama family's RMSNorms, q, k, v (with Qwen2's biases, Qwen3's q/k norms), o, gate, up,
// down (and Gemma 2's post-norms). Other layers (MoE, latent attention) are not modelled:
// nothing is gathered twice there.
constexpr double kZero3MaxReuseDistance = 1e9;  // stage3_max_reuse_distance's default, in elements

// A layer's sub-modules as (elements, tensors) per tp rank, in forward order; empty for the
// layers not modelled (above).
std::vector<std::pair<int64_t, int64_t>> zero3_modules(const ModelSpec& m, const Dims& d) {
  if (m.experts > 0 || m.is_mla()) return {};
  const int64_t h = d.h, q = d.q / d.t, kv = d.kv / d.t, f = d.f / d.t;
  if (m.family == Family::gpt)
    return {{2 * h, 2}, {h * (q + 2 * kv) + q + 2 * kv, 2}, {q * h + h, 2}, {2 * h, 2}, {h * f + f, 2}, {f * h + h, 2}};
  const int64_t bias = m.qkv_bias ? 1 : 0, hd = m.head_dim();
  std::vector<std::pair<int64_t, int64_t>> mods = {
      {h, 1}, {h * q + bias * q, 1 + bias}, {h * kv + bias * kv, 1 + bias}, {h * kv + bias * kv, 1 + bias}};
  if (m.qk_norm) mods.insert(mods.end(), {{hd, 1}, {hd, 1}});
  mods.push_back({q * h, 1});
  if (m.post_norms) mods.push_back({h, 1});
  mods.insert(mods.end(), {{h, 1}, {h * f, 1}, {h * f, 1}, {f * h, 1}});
  if (m.post_norms) mods.push_back({h, 1});
  return mods;
}

// The modules a full recompute's backward gathers again (their reuse distance too long), and
// the elements of those it keeps gathered from their recompute to their backward.
struct Zero3Regather {
  int64_t params_per_layer = 0, tensors_per_layer = 0, kept_per_layer = 0;
};
Zero3Regather zero3_backward_regather(const ModelSpec& m, const ParallelConfig& p, const Dims& d) {
  if (p.zero < 3 || p.zero3_gather != Zero3Gather::tensor || p.recompute != Recompute::full) return {};
  const auto mods = zero3_modules(m, d);
  Zero3Regather r;
  double after = 0;  // elements of the modules after this one
  for (auto it = mods.rbegin(); it != mods.rend(); ++it) {
    if (2 * after >= kZero3MaxReuseDistance) r.params_per_layer += it->first, r.tensors_per_layer += it->second;
    else r.kept_per_layer += it->first;
    after += static_cast<double>(it->first);
  }
  return r;
}

// Communication buffers: the SP all-gather output (b s h), the PP send and receive buffers
// (the tensor each tp rank holds, as Megatron-core sends it: b s h, or its b s h / t sequence
// shard with SP), ZeRO-3's gathered current and prefetched layer, and under ZeRO-2/3 one
// layer's full gradient waiting for its reduce-scatter. ZeRO-3 gathering tensor by tensor
// (DeepSpeed 0.3, above) holds instead the module running and the one prefetched beside it
// (stage3.py's prefetch_next_sub_modules: at most the largest module twice), or the running one
// and those a full recompute's backward keeps for later, and one module's full gradient.
void comm_buffers(std::vector<Buffer>& v, const ModelSpec& m, const ParallelConfig& p, const Dims& d) {
  const int64_t largest = std::max({d.layer_rank, d.embed_rank, d.out_rank});
  if (p.sp) add(v, "sp all-gather", MemCategory::comm_buffers, Lifetime::transient, d.e * d.T * d.h);
  if (p.pp > 1) add(v, "pp send and receive", MemCategory::comm_buffers, Lifetime::transient, 2 * d.e * d.T * d.h / d.rep);
  if (p.zero < 2 || dp_cp(p) <= 1) return;
  const auto mods = p.zero >= 3 && p.zero3_gather == Zero3Gather::tensor ? zero3_modules(m, d)
                                                                          : std::vector<std::pair<int64_t, int64_t>>{};
  if (!mods.empty()) {
    int64_t module = std::max(d.embed_rank, d.out_rank);
    for (const auto& [elements, tensors] : mods) module = std::max(module, elements);
    const int64_t kept = zero3_backward_regather(m, p, d).kept_per_layer;
    add(v, "zero-3 gathered modules", MemCategory::comm_buffers, Lifetime::transient, d.e * (module + std::max(module, kept)));
    add(v, "zero-3 module gradient", MemCategory::comm_buffers, Lifetime::transient, d.g * module);
    return;
  }
  if (p.zero >= 3) add(v, "zero-3 gathered layers", MemCategory::comm_buffers, Lifetime::transient, 2 * d.e * largest);
  add(v, "zero-2/3 layer gradient", MemCategory::comm_buffers, Lifetime::transient, d.g * largest);
}

// Backward scratch, reused layer after layer: gradients of the layer input, of both norm
// outputs and of the residual stream (b s h; the residual's sequence-sharded with SP), of the
// MLP's inner activations (2 x b s f/t; SwiGLU a third), of Q, K, V and the attention output
// (b s (h + 2 kv)/t plus the core's output b s h/t; RoPE one more Q and K), fp32 softmax row
// statistics (3 per token), the layer output a full recompute rebuilds (where the stage
// recomputes any layer), and with SP the packed
// replicated-parameter gradients for their all-reduce. What the CPU reference executor
// allocates (executor/stage.cpp make_scratch), measured to the byte.
int64_t backward_scratch_bytes(const ModelSpec& m, const ParallelConfig& p, const Dims& d) {
  const int64_t N = d.T, Ns = d.T / d.rep, Fl = d.f / d.t, Ql = d.h / d.t, KVl = d.kv / d.t;
  int64_t elems = 3 * N * d.h + 2 * N * Fl + 3 * N * Ql + 2 * N * KVl + Ns * d.h;
  if (m.family == Family::llama) elems += N * Fl + N * Ql + N * KVl;
  if (m.is_mla()) elems += mla_scratch_elements_delta(m, N, d.t, d.h, d.kv);  // sim/mla.hpp
  if (d.rec_layers > 0) elems += Ns * d.h;
  int64_t scratch = d.e * elems + 4 * 3 * N;
  if (p.sp && p.tp > 1) scratch += d.g * d.replicated;
  return scratch;
}

// Runtime memory: with a profile the measured CUDA context, cuBLASLt handle and kernel
// modules plus cudaMalloc's rounding of the one arena; without one the cluster file's
// context and the documented fragmentation fraction of what is allocated. NCCL's buffers per
// communicator either way.
void runtime_buffers(std::vector<Buffer>& v, const ClusterSpec& c, const ParallelConfig& p, const ModelSpec& m,
                     const Dims& d) {
  const ProfileMemory* prof = c.calibration ? &c.calibration->memory : nullptr;
  const auto& rt = c.runtime_memory;
  add(v, "workspace", MemCategory::workspace, Lifetime::transient,
      (prof ? prof->workspace_bytes : rt.workspace_bytes) + backward_scratch_bytes(m, p, d));
  int64_t allocated = 0;
  for (const Buffer& b : v)
    if (b.category != MemCategory::workspace && b.category != MemCategory::runtime &&
        b.placement == Placement::device)
      allocated += b.bytes;
  const int64_t communicators = (p.tp > 1) + (dp_cp(p) > 1) + (p.pp > 1) + (p.ep > 1) + (p.etp > 1) + (p.cp > 1) +
                                (d.moe.layers > 0 && d.moe.edp > 1 && d.moe.edp != p.dp);
  int64_t runtime = communicators * rt.nccl_bytes_per_communicator;
  if (prof) runtime += prof->runtime_bytes() + prof->malloc_granularity_bytes;
  else runtime += rt.cuda_context_bytes +
                  static_cast<int64_t>(std::ceil(rt.allocator_fragmentation * static_cast<double>(allocated)));
  add(v, "runtime", MemCategory::runtime, Lifetime::step, runtime);
}

// ---- Ops of one micro-batch -------------------------------------------------------------

}  // namespace

Op gemm(const char* name, Pass pass, int64_t M, int64_t N, int64_t K, int64_t count) {
  Op o;
  o.name = name;
  o.kind = pass == Pass::backward ? OpKind::gemm_bwd : OpKind::gemm;
  o.pass = pass;
  o.m = static_cast<double>(M), o.n = static_cast<double>(N), o.k = static_cast<double>(K);
  o.flops = (pass == Pass::backward ? 4 : 2) * FlopCount(M) * N * K;  // backward: two GEMMs
  o.count = count;
  return o;
}

Op memory_op(const char* name, MemKind kind, Pass pass, double bytes, int64_t count, double scale) {
  Op o;
  o.name = name;
  o.kind = OpKind::memory;
  o.mem = kind;
  o.pass = pass;
  o.bytes = bytes;
  o.count = count;
  o.scale = scale;
  return o;
}

namespace {

// One layer's forward GEMMs (Megatron's column- then row-parallel pairs): QKV (T, (q+2kv)/t, h),
// projection (T, h, q/t), MLP fc1/fc2 (GELU) or fused gate|up and down (SwiGLU).
void layer_gemms(std::vector<Op>& ops, const ModelSpec& m, const Dims& d, Pass pass, int64_t L) {
  if (m.is_mla()) {
    mla_gemms(ops, m, d.T, d.t, pass, L);  // DeepSeek's latent attention (sim/mla.hpp)
  } else {
    ops.push_back(beside_tp_collective(gemm("qkv", pass, d.T, (d.q + 2 * d.kv) / d.t, d.h, L), TpOverlapSlot::qkv));
    ops.push_back(beside_tp_collective(gemm("attention projection", pass, d.T, d.h, d.q / d.t, L), TpOverlapSlot::proj));
  }
  // MoE layers (the recompute pass: those it recomputes) run moe_ops instead of an MLP.
  const int64_t Ld = L - (pass == Pass::recompute ? d.moe.rec_layers : d.moe.layers);
  if (m.family == Family::gpt) {
    ops.push_back(beside_tp_collective(gemm("mlp fc1", pass, d.T, d.f / d.t, d.h, Ld), TpOverlapSlot::fc1));
  } else {
    ops.push_back(beside_tp_collective(gemm("mlp gate|up", pass, d.T, 2 * d.f / d.t, d.h, Ld), TpOverlapSlot::fc1));
  }
  ops.push_back(beside_tp_collective(gemm("mlp fc2", pass, d.T, d.h, d.f / d.t, Ld), TpOverlapSlot::fc2));
}

// The attention core of one layer. Fused: causal FlashAttention (FlashAttention-2's backward
// runs 2.5x the forward's matmul work; see OpTimer). Unfused: QK^T and softmax x V as batched
// GEMMs of (s, s, d), the softmax and the dropout as memory-bound kernels; its backward costs
// twice its forward. FLOPs counted as Narayanan et al. (2021): 4 b s^2 h / t forward (full,
// not causal), twice that backward, with h the width of q (heads x head size). With context
// parallelism (sim/context_parallel.hpp) s is the rank's seq / cp and the ring runs cp steps
// per layer, each a block of s x s scores, causal-equivalent in work under the load-balanced
// split: cp calls of causal attention over s tokens, 1/cp of the sequence's attention.
void attention_core(std::vector<Op>& ops, const ModelSpec& m, const TrainSpec& tr, const Dims& d, Pass pass,
                    int64_t L) {
  const int64_t heads_rank = m.heads / d.t;
  // Latent attention (sim/mla.hpp): q k^T over dn + dr and p v over dv per head, timed as one
  // head size of their mean.
  const double hd = m.is_mla() ? mla_core_head_size(m) : static_cast<double>(m.head_dim());
  const FlopCount fwd_flops = m.is_mla() ? mla_core_forward_flops(m, d.b, d.s, d.t)
                                         : 4 * FlopCount(d.b) * d.s * d.s * d.q / d.t;
  const bool bwd = pass == Pass::backward;
  if (tr.attention == Attention::fused) {
    Op o;
    o.name = "attention";
    o.kind = bwd ? OpKind::attention_bwd : OpKind::attention_fwd;
    o.pass = pass;
    o.m = static_cast<double>(d.b * heads_rank), o.n = static_cast<double>(d.s), o.k = static_cast<double>(hd);
    o.flops = (bwd ? 2 : 1) * fwd_flops;
    o.count = L * d.cp;
    ops.push_back(o);
    return;
  }
  const double scale = bwd ? kUnfusedAttentionBackwardScale : 1;
  Op bmm;
  bmm.name = "attention scores and values";
  bmm.kind = OpKind::batched_gemm;
  bmm.pass = pass;
  bmm.m = static_cast<double>(d.s), bmm.n = static_cast<double>(d.s), bmm.k = static_cast<double>(hd);
  bmm.batch = static_cast<double>(heads_rank * d.b);
  bmm.flops = (bwd ? 2 : 1) * fwd_flops / 2;
  bmm.count = 2 * L;
  bmm.scale = scale;
  ops.push_back(bmm);
  const double scores = static_cast<double>(heads_rank * d.b * d.s * d.s), e = static_cast<double>(d.e);
  ops.push_back(memory_op("softmax", MemKind::softmax, pass, softmax_bytes(scores, e), L, scale));
  if (m.dropout)
    ops.push_back(memory_op("attention dropout", MemKind::dropout, pass, dropout_bytes(scores, e), L, scale));
}

// A layer's memory-bound kernels: two norms (four with Gemma 2's post-norms), two residual
// adds, GELU (reads and writes b s f/t) or SwiGLU/GeGLU (reads two, writes one), RoPE on q and
// k, Qwen3's per-head norms of q and k, and the two dropouts. In backward each reads two
// tensors and writes one: 1.5x the forward's time.
void layer_elementwise(std::vector<Op>& ops, const ModelSpec& m, const Dims& d, Pass pass, int64_t L) {
  const double e = static_cast<double>(d.e), T = static_cast<double>(d.T), h = static_cast<double>(d.h);
  const double rep = static_cast<double>(d.rep), t = static_cast<double>(d.t);
  const double scale = pass == Pass::backward ? kElementwiseBackwardScale : 1;
  const bool gpt = m.family == Family::gpt;
  ops.push_back(memory_op("norms", MemKind::norm, pass, norm_bytes(T * h / rep, e), (m.post_norms ? 4 : 2) * L, scale));
  ops.push_back(memory_op("residual adds", MemKind::residual, pass, residual_bytes(T * h / rep, e), 2 * L, scale));
  const double mlp_out = T * static_cast<double>(d.f) / t;  // the activation's output elements
  const int64_t mlp_layers = L - (pass == Pass::recompute ? d.moe.rec_layers : d.moe.layers);  // MoE layers: moe_ops
  ops.push_back(memory_op(gpt ? "gelu" : "swiglu", MemKind::activation, pass,
                          gpt ? gelu_bytes(mlp_out, e) : gated_unit_bytes(mlp_out, e), mlp_layers, scale));
  const double qk = T * static_cast<double>(d.q + d.kv) / t;  // q and k elements
  if (!gpt && !m.is_mla()) ops.push_back(memory_op("rope", MemKind::rotary, pass, rotary_bytes(qk, e), L, scale));
  if (m.is_mla()) mla_elementwise(ops, m, d.T, d.t, d.e, pass, L, scale);  // RoPE, latent norms (sim/mla.hpp)
  if (m.qk_norm) ops.push_back(memory_op("q/k norms", MemKind::norm, pass, norm_bytes(qk, e), L, scale));
  if (m.dropout)
    ops.push_back(memory_op("dropouts", MemKind::dropout, pass, dropout_bytes(T * h / rep, e), 2 * L, scale));
}

// What torchtitan's per-op checkpointing reruns of each layer in backward (see
// op_sac_activation_bytes): the k, output and up projections (wk, wo, w3: the even-numbered mm
// of the block) and every memory-bound kernel of the layer (layer_elementwise: both norms, both
// residual adds, RoPE, SwiGLU, Qwen3's q/k norms); with tp > 1 the norms' all-gathers before wk
// and w3 again (tp_messages), each beside its GEMM under async TP. The reduce-scatters' outputs
// are kept, so they do not run again.
void op_sac_recompute_ops(std::vector<Op>& ops, const ModelSpec& m, const Dims& d, int64_t L) {
  const Pass r = Pass::recompute;
  ops.push_back(beside_tp_collective(gemm("k projection", r, d.T, d.kv / d.t, d.h, L), TpOverlapSlot::qkv));
  ops.push_back(gemm("attention projection", r, d.T, d.h, d.q / d.t, L));
  ops.push_back(beside_tp_collective(gemm("mlp up", r, d.T, d.f / d.t, d.h, L), TpOverlapSlot::fc1));
  layer_elementwise(ops, m, d, r, L);
}

void layer_forward(std::vector<Op>& ops, const ModelSpec& m, const TrainSpec& tr, const Dims& d, Pass pass, int64_t L) {
  layer_gemms(ops, m, d, pass, L);
  attention_core(ops, m, tr, d, pass, L);
  layer_elementwise(ops, m, d, pass, L);
}

// The model's ends. First stage: the embedding gather (+ positions). Last stage: the final
// norm, the logits GEMM, then the cross-entropy: unfused, it reads the logits and writes fp32
// probabilities, and backward reads those and writes the logits' gradient; fused, one pass
// reads the logits and writes the gradient over them.
void end_ops(std::vector<Op>& ops, const TrainSpec& tr, const Dims& d) {
  const double e = static_cast<double>(d.e), T = static_cast<double>(d.T), h = static_cast<double>(d.h);
  const double rep = static_cast<double>(d.rep), Vr = static_cast<double>(d.Vr);
  if (d.first) ops.push_back(memory_op("embedding", MemKind::embedding, Pass::forward, 2 * e * T * h, 1));
  if (!d.last) return;
  const bool fused = tr.cross_entropy == CrossEntropy::fused;
  ops.push_back(memory_op("final norm", MemKind::norm, Pass::forward, norm_bytes(T * h / rep, e), 1));
  ops.push_back(gemm("logits", Pass::forward, d.T, d.Vr, d.h, 1));
  ops.push_back(memory_op("cross-entropy", MemKind::cross_entropy, Pass::forward,
                          fused ? fused_cross_entropy_bytes(T * Vr, e) : (e + 4) * T * Vr, 1));
  ops.push_back(memory_op("final norm", MemKind::norm, Pass::backward,
                          kElementwiseBackwardScale * norm_bytes(T * h / rep, e), 1));
  ops.push_back(gemm("logits", Pass::backward, d.T, d.Vr, d.h, 1));
  if (!fused) ops.push_back(memory_op("cross-entropy", MemKind::cross_entropy, Pass::backward, (4 + e) * T * Vr, 1));
}

void stage_ops(std::vector<Op>& ops, const ModelSpec& m, const TrainSpec& tr, const ParallelConfig& p, const Dims& d) {
  const int64_t L = d.layers;
  layer_forward(ops, m, tr, d, Pass::forward, L);
  moe_ops(ops, d.moe, Pass::forward);  // the MoE layers' router and experts (sim/moe.hpp)
  moe_ops(ops, d.moe, Pass::backward);
  if (p.recompute == Recompute::full) moe_ops(ops, d.moe, Pass::recompute);
  layer_gemms(ops, m, d, Pass::backward, L);
  attention_core(ops, m, tr, d, Pass::backward, L);
  layer_elementwise(ops, m, d, Pass::backward, L);
  if (p.recompute == Recompute::full) layer_forward(ops, m, tr, d, Pass::recompute, d.rec_layers);
  if (p.recompute == Recompute::selective) attention_core(ops, m, tr, d, Pass::recompute, L);
  if (p.recompute == Recompute::op) op_sac_recompute_ops(ops, m, d, L);
  cp_attention_ops(ops, m, tr, p, L, d.rec_layers);  // TransformerEngine's copies beside cp attention
  end_ops(ops, tr, d);
}

// ---- Messages ---------------------------------------------------------------------------

}  // namespace

Message message(const char* name, Group g, MessageKind k, Pass pass, Cadence c, int64_t bytes, int64_t count,
                int64_t pieces) {
  return Message{name, g, k, pass, c, bytes, count, std::max<int64_t>(1, pieces)};
}

namespace {

// Tensor parallel (Megatron; Shoeybi et al. 2019, Sec. 3): per layer two all-reduces of
// b s h forward and two backward, two more in a full recompute's forward. Counted in halves:
// an all-reduce is a reduce-scatter plus an all-gather (what SP runs instead), so both move
// the same bytes. SP keeps the norm outputs sequence-sharded, so backward gathers both again
// before the weight-gradient GEMMs (Korthikanti et al. 2022, Sec. 4.2.2): 2 more halves.
// Vocab-parallel embedding: an all-reduce forward (SP: a reduce-scatter forward, its
// all-gather backward). Output layer: its input gradient all-reduced in backward (SP: an
// all-gather forward, a reduce-scatter backward). Vocab-parallel cross-entropy: all-reduces
// of the max, the target logit and the sum of exponentials, 4 bytes per token each.
// With SP the gradients of replicated parameters (norms, row-parallel biases, positions) are
// partial sums: one all-reduce over tp per step.
void tp_messages(std::vector<Message>& v, const TrainSpec& tr, const ParallelConfig& p, const Dims& d) {
  if (p.tp <= 1) return;
  const int64_t act = d.e * d.T * d.h, L = d.layers;
  const TpHalves moe = moe_tp_halves_saved(d.moe, p);  // MoE layers without an MLP over tp
  // (torchtitan's per-op checkpointing keeps the gathered norm outputs its rerun made: no SP
  // re-gathers in its backward.)
  int64_t fwd = 4 * L - moe.forward, bwd = 4 * L + (p.sp && p.recompute != Recompute::op ? 2 * L : 0) - moe.backward;
  int64_t rec = p.recompute == Recompute::full ? 4 * d.rec_layers - moe.recompute : 0;
  if (p.recompute == Recompute::op) rec = 2 * L;  // the norms' all-gathers before wk and w3 (op_sac_recompute_ops)
  // FP8 with SP (sim/fp8.hpp): the layers' all-gathers move FP8, 1 byte per element.
  const Fp8TpGathers g8 = tr.fp8 && p.sp && !p.tp_comm_overlap
                              ? fp8_sp_gathers(L, moe.forward / 2, d.rec_layers, moe.recompute / 2)
                              : Fp8TpGathers{};
  fwd -= g8.forward, bwd -= g8.backward, rec -= g8.recompute;
  // --tp-comm-overlap (sim/tp_overlap.hpp): the layers' halves overlap the GEMMs beside them;
  // the model's ends keep theirs in-line.
  const int64_t ov_f = p.tp_comm_overlap ? fwd : 0, ov_b = p.tp_comm_overlap ? bwd : 0;
  const int64_t ov_r = p.tp_comm_overlap ? rec : 0;
  if (d.first) (p.sp ? (fwd += 1, bwd += 1) : (fwd += 2, bwd += 0));
  if (d.last) (p.sp ? (fwd += 1, bwd += 1) : (fwd += 0, bwd += 2));
  const auto rs = MessageKind::reduce_scatter;
  const auto mbc = Cadence::micro_batch;
  if (fwd > ov_f) v.push_back(message("tp activations", Group::tp, rs, Pass::forward, mbc, act, fwd - ov_f));
  if (bwd > ov_b) v.push_back(message("tp activations", Group::tp, rs, Pass::backward, mbc, act, bwd - ov_b));
  if (rec > ov_r) v.push_back(message("tp activations", Group::tp, rs, Pass::recompute, mbc, act, rec - ov_r));
  if (ov_f > 0) v.push_back(message(kTpOverlappedMessage, Group::tp, rs, Pass::forward, mbc, act, ov_f));
  if (ov_b > 0) v.push_back(message(kTpOverlappedMessage, Group::tp, rs, Pass::backward, mbc, act, ov_b));
  if (ov_r > 0) v.push_back(message(kTpOverlappedMessage, Group::tp, rs, Pass::recompute, mbc, act, ov_r));
  const Pass passes[] = {Pass::forward, Pass::backward, Pass::recompute};
  const int64_t g8_counts[] = {g8.forward, g8.backward, g8.recompute};
  for (int i = 0; i < 3; ++i)
    if (g8_counts[i] > 0)
      v.push_back(message(kFp8TpGatherMessage, Group::tp, MessageKind::all_gather, passes[i], mbc, d.T * d.h, g8_counts[i]));
  if (d.last)
    v.push_back(message("tp cross-entropy", Group::tp, MessageKind::all_reduce, Pass::forward, Cadence::micro_batch,
                        4 * d.T, 3));
  if (p.sp)
    v.push_back(message("tp replicated gradients", Group::tp, MessageKind::all_reduce, Pass::step, Cadence::step,
                        d.g * d.replicated, 1));
}

// Pipeline (Narayanan et al. 2021, Sec. 2.2): each chunk sends its output forward and its
// input gradient backward, the tensor each tp rank holds (b s h; b s h / t with SP), per
// micro-batch, except at the model's ends. With the scatter/gather of TrainSpec::
// pp_scatter_gather (tp > 1, no SP) each rank sends 1/t of it, and each chunk that receives
// one (its input in forward, its output gradient in backward) all-gathers it over its tp
// group in-line first.
void pp_messages(std::vector<Message>& v, const TrainSpec& tr, const ParallelConfig& p, const Dims& d) {
  if (p.pp <= 1) return;
  const bool scatter = tr.pp_scatter_gather && p.tp > 1 && !p.sp;
  const int64_t bytes = d.e * d.T * d.h / (scatter ? p.tp : d.rep);
  // zb-v's last stage turns the V: its chunk 0 feeds its own chunk 1 (and the gradient back) unsent.
  const int64_t turn = d.turn ? 1 : 0;
  v.push_back(message("pp send", Group::pp, MessageKind::send, Pass::forward, Cadence::micro_batch, bytes,
                      p.vpp - (d.last ? 1 : 0) - turn));
  v.push_back(message("pp send", Group::pp, MessageKind::send, Pass::backward, Cadence::micro_batch, bytes,
                      p.vpp - (d.first ? 1 : 0) - turn));
  if (!scatter) return;
  const int64_t full = d.e * d.T * d.h;
  if (p.vpp - (d.first ? 1 : 0) - turn > 0)
    v.push_back(message(kPpGatherMessage, Group::tp, MessageKind::all_gather, Pass::forward, Cadence::micro_batch, full,
                        p.vpp - (d.first ? 1 : 0) - turn));
  if (p.vpp - (d.last ? 1 : 0) - turn > 0)
    v.push_back(message(kPpGatherMessage, Group::tp, MessageKind::all_gather, Pass::backward, Cadence::micro_batch, full,
                        p.vpp - (d.last ? 1 : 0) - turn));
}

// Parameter tensors of one layer, as a per-tensor ZeRO-3 gathers them: GPT (Megatron's fused
// QKV) has the weight and bias of its two norms, QKV, projection and two FFN linears, 12;
// Llama has its two norms' weights and q, k, v, o, gate, up and down, 9, and 3 more with q, k, v
// biases (Qwen2), 2 with q/k norms (Qwen3), 2 with Gemma 2's post-norms.
int64_t param_tensors_per_layer(const ModelSpec& m) {
  if (m.family == Family::gpt) return 12;
  return 9 + (m.qkv_bias ? 3 : 0) + (m.qk_norm ? 2 : 0) + (m.post_norms ? 2 : 0);
}

}  // namespace

static bool megatron_buckets(const ParallelConfig& p) {
  return p.zero <= 1 && (p.schedule == Schedule::one_f_one_b || p.schedule == Schedule::interleaved);
}

int64_t chunk_grad_buckets(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk,
                           int64_t chunk_grad_bytes, int64_t bucket_bytes) {
  if (megatron_buckets(p) && (!p.overlap_grad_reduce || stage > 0 || chunk > 0)) return 1;
  const int64_t by_size = std::max<int64_t>(1, ceil_div(chunk_grad_bytes, bucket_bytes));
  // The chunk's layers alone hold this many tensors; the whole count (which walks the stages for
  // where the chunk starts) only where the size asks for more buckets than that.
  if (by_size <= chunk_layers_at(p, m.layers, stage, chunk) * param_tensors_per_layer(m)) return by_size;
  return std::min(by_size, chunk_param_tensors(m, p, stage, chunk));
}

int64_t chunk_param_tensors(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk) {
  const int64_t n = chunk_layers_at(p, m.layers, stage, chunk), first = chunk_first_layer(m, p, stage, chunk);
  const bool gpt = m.family == Family::gpt;
  int64_t tensors = n * param_tensors_per_layer(m);
  if (first == 0) tensors += gpt ? 2 : 1;                                         // word (+ position) embedding
  if (first + n == m.layers) tensors += (gpt ? 2 : 1) + (m.tied_embeddings ? 0 : 1);  // final norm, output layer
  return std::max<int64_t>(1, tensors);
}

int64_t chunk_buckets_of(const ParallelConfig& p, int64_t total, int64_t chunk) {
  if (megatron_buckets(p)) return chunk == 0 ? std::max<int64_t>(1, total - (p.vpp - 1)) : 1;
  return std::max<int64_t>(1, total / p.vpp);
}

namespace {

// Data parallel (ZeRO paper, Rajbhandari et al. 2020, Sec. 7): G gradient bytes (after
// compression) and W weight bytes of this rank's unsharded parameters. Stage 0: all-reduce of
// G once per step, in buckets of dp_bucket_bytes_for (Megatron-core's default where the plan
// sets none) as chunk_grad_buckets cuts each model chunk's share. 1: a reduce-scatter of G and
// an all-gather of W after the optimizer. 2: the reduce-scatter every micro-batch (only a
// shard of the gradients is kept). 3 (FSDP): every micro-batch gathers W
// layer by layer in forward and again in backward, and reduce-scatters G layer by layer.
// Parameter server (Li et al., OSDI 2014): each worker pushes G and pulls W once per step.
// Tied embeddings split over the first and last stage all-reduce their gradient between the
// two copies once per step (Megatron's embedding group); counted in dp bytes.
void dp_messages(std::vector<Message>& v, const TrainSpec& tr, const ParallelConfig& p, const Dims& d,
                 const ModelSpec& m, int64_t params, int64_t stage) {
  const int64_t G = static_cast<int64_t>(std::ceil(static_cast<double>(d.g * params) / p.grad_compression));
  // FP8 weights (TrainSpec::fp8_param_gather) gather at 1 byte each (Megatron-LM's
  // --fp8-param-gather: the distributed optimizer's all-gather moves the FP8 weights).
  const int64_t fp8 = tr.fp8 && tr.fp8_param_gather ? fp8_weight_params(m, p.tp, d.layers, d.moe) - d.moe.expert_params : 0;
  const int64_t W = d.e * params - (d.e - 1) * fp8;
  if (p.dp > 1 && p.dp_comm == DpComm::parameter_server) {
    v.push_back(message("dp push", Group::dp, MessageKind::send, Pass::step, Cadence::step, G, 1));
  } else if (dp_cp(p) > 1) {  // reduced over dp x cp: the weights are replicated over cp
    const int64_t bucket = dp_bucket_bytes_for(tr, p);
    int64_t buckets = 0;
    for (int64_t c = 0; c < p.vpp; ++c)
      buckets += chunk_grad_buckets(m, p, stage, c, ceil_div(G, p.vpp), bucket);
    const int64_t L = std::max<int64_t>(1, d.layers);
    const auto mbc = Cadence::micro_batch;
    if (p.zero == 0)
      v.push_back(message("dp gradients", Group::dp, MessageKind::all_reduce, Pass::backward, Cadence::step, G, 1, buckets));
    if (p.zero == 1 || p.zero == 2) {
      v.push_back(message("dp gradients", Group::dp, MessageKind::reduce_scatter, Pass::backward,
                          p.zero == 2 ? mbc : Cadence::step, G, 1, buckets));
      v.push_back(message("dp gather params", Group::dp, MessageKind::all_gather, Pass::step, Cadence::step, W, 1));
    }
    if (p.zero >= 3) {  // one collective per layer, or per parameter tensor (Zero3Gather::tensor)
      const int64_t k = p.zero3_gather == Zero3Gather::tensor ? param_tensors_per_layer(m) : 1;
      v.push_back(message("dp gather", Group::dp, MessageKind::all_gather, Pass::forward, mbc, W, 1, L * k));
      v.push_back(message("dp gather", Group::dp, MessageKind::all_gather, Pass::backward, mbc, W, 1, L * k));
      v.push_back(message("dp gradients", Group::dp, MessageKind::reduce_scatter, Pass::backward, mbc, G, 1, L * k));
      const Zero3Regather re = zero3_backward_regather(m, p, d);  // DeepSpeed 0.3 under full recompute
      if (re.tensors_per_layer > 0)
        v.push_back(message(kZero3RegatherMessage, Group::dp, MessageKind::all_gather, Pass::backward, mbc,
                            d.e * L * re.params_per_layer, 1, L * re.tensors_per_layer));
    }
  }
  if (m.tied_embeddings && d.first != d.last) {  // two copies (zb-v's first stage holds one)
    Message emb = message("embedding gradient", Group::dp, MessageKind::all_reduce, Pass::step, Cadence::step,
                          d.g * d.Vr * d.h, 1);
    emb.ranks = 2;
    v.push_back(emb);
  }
}

// DeepSpeed 0.3's per-tensor ZeRO-3 calls PyTorch's list-form collectives with one tensor per
// rank (partition_parameters.py at v0.3.15: torch.distributed.all_gather(partitions, ...) in
// _allgather_param, reduce_scatter(input_list[rank], input_list) in _reduce_scatter_gradient),
// and ProcessGroupNCCL stages those through a flat buffer: after ncclAllGather it copies each of
// the n outputs out of it, before ncclReduceScatter it copies the n inputs in
// (flatten_for_scatter_gather). DeepSpeed PR #1188 (Oct 2021, "ZeRO3, improved parameter
// all-gather operation") names this implicit memcpy and the synchronize before each gather as
// what it removed. Per micro-batch: n copies of 1/n of every tensor for the forward gathers,
// as many for the backward gathers and for the reduce-scatters; each copy reads and writes its
// bytes and is one kernel launch. Blocking, like the collectives they follow.
void zero3_tensor_copy_ops(std::vector<Op>& v, const ModelSpec& m, const ParallelConfig& p, const Dims& d,
                           int64_t params) {
  if (p.zero < 3 || p.zero3_gather != Zero3Gather::tensor || dp_cp(p) <= 1) return;
  const int64_t L = std::max<int64_t>(1, d.layers), calls = L * param_tensors_per_layer(m) * dp_cp(p);
  const double W = static_cast<double>(d.e * params), G = static_cast<double>(d.g * params);
  const double per_call = 1.0 / static_cast<double>(calls);
  v.push_back(memory_op("zero-3 gather copy-out", MemKind::copy, Pass::forward, 2 * W * per_call, calls));
  v.push_back(memory_op("zero-3 gather copy-out", MemKind::copy, Pass::backward, 2 * W * per_call, calls));
  v.push_back(memory_op("zero-3 reduce-scatter copy-in", MemKind::copy, Pass::backward, 2 * G * per_call, calls));
  const Zero3Regather re = zero3_backward_regather(m, p, d);  // the backward's second gathers
  if (re.tensors_per_layer == 0) return;
  const int64_t re_calls = L * re.tensors_per_layer * dp_cp(p);
  const double re_w = static_cast<double>(d.e * L * re.params_per_layer);
  v.push_back(memory_op("zero-3 regather copy-out", MemKind::copy, Pass::backward,
                        2 * re_w / static_cast<double>(re_calls), re_calls));
}

// GradAccumulation::separate (sim/specs.hpp): every micro-batch but a step's first adds its
// weight gradients into the accumulated ones, one memory-bound pass that reads both and writes
// the sum (3 g bytes per gradient; autograd's AccumulateGrad keeps the first micro-batch's
// gradient as the buffer). Spread over the step's m micro-batches: (m - 1) / m of a pass each, in
// backward. The gradients a GPU accumulates are its parameters' (ZeRO 0/1), or under ZeRO 2/3,
// which reduce-scatter every micro-batch, its shard of them (1 / (dp x cp)).
void grad_accumulation_ops(std::vector<Op>& v, const TrainSpec& tr, const ParallelConfig& p, const Dims& d,
                           int64_t params) {
  if (tr.grad_accumulation != GradAccumulation::separate || d.mb <= 1) return;
  const double held = static_cast<double>(params) / static_cast<double>(p.zero >= 2 ? dp_cp(p) : 1);
  const double m = static_cast<double>(d.mb);
  v.push_back(memory_op("gradient accumulation", MemKind::residual, Pass::backward,
                        3 * static_cast<double>(d.g) * held * (m - 1) / m, 1));
}

// What offload (sim/offload.hpp) needs of this stage: the optimizer's shard, the largest layer
// (or end) of this GPU's shard, and one layer's saved activations.
OffloadShape offload_shape(const ModelSpec& m, const TrainSpec& tr, const ParallelConfig& p, const Dims& d,
                           int64_t optimizer_params) {
  if (p.offload == Offload::none) return {};
  OffloadShape o;
  o.optimizer_params = optimizer_params;
  o.largest_layer_shard = ceil_div(std::max({d.layer_rank, d.embed_rank, d.out_rank}), p.zero >= 3 ? dp_cp(p) : 1);
  o.layers = d.layers;
  o.layer_activation_bytes =
      layer_activation_bytes(m, d.b, d.s, d.t, p.sp, p.recompute, tr.attention, tr.dtype).total();
  o.e = d.e;
  o.g = d.g;
  return o;
}

}  // namespace

// Per layer, per micro-batch, per tp rank. T = b s tokens, e = bytes per element, t = tp,
// and tensors replicated across tp are divided by t with sequence parallelism.
// Korthikanti et al. 2022 (arXiv 2205.05198) Sec. 4.1, for GPT with dropout, e = 2:
//   attention 11 s b h + 5 a s^2 b, MLP 19 s b h, two layernorms 4 s b h, so
//   s b h (10 + 24/t + 5 a s/(h t)) with tp and s b h (34/t + 5 a s/(h t)) with SP too.
// Derived per tensor so GQA (K, V are T kv), SwiGLU (gate, up and their product: 3 T f) and
// fused attention (no s^2 tensors; an fp32 log-sum-exp per head and token) come out right.
LayerActivationBytes layer_activation_bytes(const ModelSpec& m, int64_t b, int64_t s, int64_t t, bool sp, Recompute r,
                                            Attention a, Dtype d) {
  const int64_t e = dtype_bytes(d), T = b * s, h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden, q = m.q_dim();
  const int64_t rep = sp ? t : 1;          // divisor of tensors replicated across tp
  const int64_t mask = m.dropout ? 1 : 0;  // dropout masks: one byte per element
  LayerActivationBytes out;
  if (r == Recompute::full) {  // only the layer input is kept (Korthikanti: 2 s b h)
    out.tensors = e * T * h / rep;
    return out;
  }
  if (r == Recompute::op) return op_sac_activation_bytes(m, T, t, sp, e);
  // Replicated: both norm inputs, QKV input (norm 1 output), MLP input (norm 2 output),
  // the dropout masks after attention projection and after the MLP; Gemma 2's two post-norms
  // keep their inputs too.
  const int64_t replicated = (m.post_norms ? 6 : 4) * e * T * h + 2 * mask * T * h;
  // Sharded: Q, K, V, attention output (projection input); MLP fc1 output and GELU output,
  // or SwiGLU gate, up and product; Q and the attention output are q wide (heads x head
  // size); Qwen3's q/k norms keep their inputs. Latent attention keeps its own (sim/mla.hpp).
  const MlaActivationBytes mla = m.is_mla() ? mla_activation_bytes(m, T, t, e) : MlaActivationBytes{};
  const int64_t sharded = (m.is_mla() ? 0 : e * T * (2 * q + 2 * kv)) + (m.family == Family::gpt ? 2 : 3) * e * T * f +
                          (m.qk_norm ? e * T * (q + kv) : 0);
  // Attention core: softmax output (e), dropout mask (1) and dropout output (e) per score.
  int64_t core = 0, core_stats = 0;
  if (a == Attention::unfused) {
    if (r != Recompute::selective) core = (e + mask * (1 + e)) * m.heads * s * s * b;
  } else {
    core_stats = 4 * m.heads * T;  // fp32 log-sum-exp per head and token (FlashAttention-2)
  }
  const int64_t norms = m.family == Family::gpt ? 2 : 1;  // LayerNorm mean+rstd; RMSNorm rstd
  const int64_t norm_count = m.post_norms ? 4 : 2;
  // Per-head rstd of Qwen3's q and k norms: one fp32 per head and token.
  const int64_t qk_stats = m.qk_norm ? 4 * T * (m.heads + m.kv_heads) : 0;
  out.tensors = replicated / rep + sharded / t + core / t + mla.heads + mla.latents;
  out.statistics = norm_count * norms * 4 * T / rep + core_stats / t + qk_stats / t + mla.stats;
  return out;
}

ModelStateBytes model_state_bytes(int64_t params, int64_t dp, int zero, Dtype dtype, Dtype grad_dtype) {
  const int64_t shard = ceil_div(params, dp);
  ModelStateBytes out;
  out.weights = dtype_bytes(dtype) * (zero >= 3 ? shard : params);
  out.grads = dtype_bytes(grad_dtype) * (zero >= 2 ? shard : params);
  out.optimizer = optimizer_bytes_per_param(dtype) * (zero >= 1 ? shard : params);
  return out;
}

int64_t in_flight_chunks(Schedule s, int64_t p, int64_t v, int64_t i, int64_t m) {
  switch (s) {
    case Schedule::gpipe: return m * v;
    case Schedule::one_f_one_b: return std::min(p - i, m) * v;
    // ZB-H1 (Qi et al. 2023, Sec. 3.1): rank i holds 1F1B's p - i forwards awaiting their B
    // and up to i more awaiting their W, whose stash keeps what W reads (B's output gradients
    // written over what only B read: the CPU executor's layer_backward_input). So every rank
    // holds 1F1B's first rank's min(p, m); the largest over ranks is 1F1B's.
    case Schedule::zb_h1: return std::min(p, m) * v;
    case Schedule::interleaved: return std::min((p - i - 1) * 2 + (v - 1) * p + 1, m * v);
    // ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory", arXiv 2405.15362:
    // the V holds 1F1B's peak activation memory with chunks of half a stage): rank i of
    // zb_v_rank's tables holds min(2m, m + 1 + i, 2p) chunks awaiting their W, 2p (1F1B's
    // first rank's p stages) from m >= 2p - 1 on; peak_in_flight of the tables, pinned in tests.
    case Schedule::zb_v: return std::min({2 * m, m + 1 + i, 2 * p});
  }
  return m * v;
}

void build_stage_work(StageWork& w, const ModelSpec& m, const ClusterSpec& c, const TrainSpec& tr,
                      const ParallelConfig& p, int64_t stage, bool memory_only) {
  const Dims d = make_dims(m, tr, p, stage);
  w.stage = stage;
  w.layers = d.layers;
  w.params = d.layers * d.layer_rank + d.embed_rank + d.out_rank;
  // MoE layers: router and shared experts in place of the dense MLP, and this rank's experts,
  // whose ZeRO shard is over the expert-data-parallel group (sim/moe.hpp).
  w.params += d.moe.layers * (d.moe.dense_params - d.moe.mlp_params) + d.moe.expert_params;
  w.expert_params = d.moe.expert_params;
  w.optimizer_params = p.zero >= 1 ? ceil_div(w.params - w.expert_params, dp_cp(p)) + ceil_div(w.expert_params, d.moe.edp)
                                   : w.params;
  w.in_flight = in_flight_chunks(p.schedule, p.pp, p.vpp, stage, d.mb);
  w.buffers.clear();
  w.ops.clear();
  w.messages.clear();
  w.buffers.reserve(16);  // at most 15 buffers, 50 ops and 12 messages: one allocation each
  if (!memory_only) {
    w.ops.reserve(64);
    w.messages.reserve(16);
  }
  // ZeRO shards over dp x cp, as Megatron's distributed optimizer over its dp-cp group.
  ModelStateBytes state = model_state_bytes(w.params - w.expert_params, dp_cp(p), p.zero, tr.dtype, tr.grad_dtype);
  if (w.expert_params > 0) {
    const ModelStateBytes x = model_state_bytes(w.expert_params, d.moe.edp, p.zero, tr.dtype, tr.grad_dtype);
    state.weights += x.weights, state.grads += x.grads, state.optimizer += x.optimizer;
  }
  // FP8 weights (TrainSpec::fp8_param_gather): 1 byte each of the FP8 GEMMs' weights, the same
  // shard of them as of the rest.
  if (tr.fp8 && tr.fp8_param_gather && w.params > 0)
    state.weights -= static_cast<int64_t>(static_cast<double>(state.weights) / static_cast<double>(d.e) *
                                          static_cast<double>(fp8_weight_params(m, p.tp, d.layers, d.moe)) /
                                          static_cast<double>(w.params));
  add(w.buffers, "weights", MemCategory::weights, Lifetime::step, state.weights);
  add(w.buffers, "gradients", MemCategory::grads, Lifetime::step, state.grads);
  add(w.buffers, "optimizer state", MemCategory::optimizer, Lifetime::step, state.optimizer);
  activation_buffers(w.buffers, m, tr, p, d, w.in_flight, stage);
  comm_buffers(w.buffers, m, p, d);
  cp_buffers(w.buffers, m, tr, p);  // context parallelism's KV ring
  moe_buffers(w.buffers, d.moe, p);
  const OffloadShape offload = offload_shape(m, tr, p, d, w.optimizer_params);
  offload_buffers(w.buffers, p, offload);
  const int64_t fp8_weights = tr.fp8 ? fp8_weight_params(m, p.tp, d.layers, d.moe) : 0;  // sim/fp8.hpp
  if (tr.fp8) fp8_buffers(w.buffers, p.zero, fp8_weights, d.layers, tr.fp8_param_gather);
  runtime_buffers(w.buffers, c, p, m, d);
  // AdamW reads and writes the fp32 state and weights of its shard (memory-bound): read
  // master, m, v (12) and the gradient (g); write master, m, v (12) and the working copy (e).
  // An fp32 plan has no master copy (8 + 4 read, 8 + 4 written).
  const double n = static_cast<double>(w.optimizer_params);
  w.optimizer_bytes = tr.dtype == Dtype::bf16 ? n * static_cast<double>(12 + d.g + 12 + d.e)
                                              : n * static_cast<double>(12 + d.g + 12);
  if (memory_only) return;
  stage_ops(w.ops, m, tr, p, d);
  if (tr.fp8) fp8_ops(w.ops, p.zero, d.mb, fp8_weights, tr.fp8_recipe, tr.fp8_param_gather);  // sim/fp8.hpp
  if (p.tp_comm_overlap) chunk_overlapped_gemms(w.ops, c.gpu, p.tp);  // GEMMs in tp chunks (sim/tp_overlap.hpp)
  tp_messages(w.messages, tr, p, d);
  mla_messages(w.messages, m, p, d.layers, d.g);  // latent attention's replicated weights (sim/mla.hpp)
  pp_messages(w.messages, tr, p, d);
  cp_messages(w.messages, m, tr, p, d.layers, d.rec_layers);
  dp_messages(w.messages, tr, p, d, m, w.params - w.expert_params, w.stage);
  zero3_tensor_copy_ops(w.ops, m, p, d, w.params - w.expert_params);  // DeepSpeed 0.3's staging copies
  grad_accumulation_ops(w.ops, tr, p, d, w.params);
  moe_messages(w.messages, d.moe, p, tr);
  offload_messages(w.messages, p, offload);
  w.optimizer_on_host = p.offload == Offload::optimizer || p.offload == Offload::optimizer_params;
}

StageWork build_stage_work(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& tr, const ParallelConfig& p,
                           int64_t stage, bool memory_only) {
  StageWork w;
  build_stage_work(w, m, c, tr, p, stage, memory_only);
  return w;
}

MemoryBytes StageWork::memory() const {
  MemoryBytes out;
  for (const Buffer& b : buffers) {
    if (b.placement == Placement::host) continue;
    switch (b.category) {
      case MemCategory::weights: out.weights += b.bytes; break;
      case MemCategory::grads: out.grads += b.bytes; break;
      case MemCategory::optimizer: out.optimizer += b.bytes; break;
      case MemCategory::activations: out.activations += b.bytes; break;
      case MemCategory::logits: out.logits += b.bytes; break;
      case MemCategory::comm_buffers: out.comm_buffers += b.bytes; break;
      case MemCategory::workspace: out.workspace += b.bytes; break;
      case MemCategory::runtime: out.runtime += b.bytes; break;
    }
  }
  return out;
}

int64_t StageWork::host_bytes() const {
  int64_t out = 0;
  for (const Buffer& b : buffers)
    if (b.placement == Placement::host) out += b.bytes;
  return out;
}

FlopCount StageWork::flops_per_micro_batch() const {
  FlopCount f = 0;
  for (const Op& o : ops) f += o.flops * o.count;
  return f;
}

const Message* StageWork::find(Group g, const char* name) const {
  for (const Message& msg : messages)
    if (msg.group == g && std::strcmp(msg.name, name) == 0) return &msg;
  return nullptr;
}

int64_t message_send_bytes(const Message& msg, int64_t n) {
  if (msg.ranks > 0) n = msg.ranks;
  switch (msg.kind) {
    case MessageKind::all_reduce: return collective_send_bytes(Collective::all_reduce, msg.bytes, n);
    case MessageKind::all_gather: return collective_send_bytes(Collective::all_gather, msg.bytes, n);
    case MessageKind::reduce_scatter: return collective_send_bytes(Collective::reduce_scatter, msg.bytes, n);
    case MessageKind::send: return n > 1 ? msg.bytes : 0;
    case MessageKind::to_host:
    case MessageKind::to_device: return msg.bytes;  // over the GPU's own host link
    case MessageKind::all_to_all: return all_to_all_send_bytes(msg.bytes, n);
  }
  return 0;
}

double message_time_s(const Message& msg, const GroupLinks& links) {
  const double per = static_cast<double>(msg.bytes) / static_cast<double>(msg.pieces);
  double one = 0;
  switch (msg.kind) {
    case MessageKind::all_reduce: one = collective_time_s(Collective::all_reduce, per, links); break;
    case MessageKind::all_gather: one = collective_time_s(Collective::all_gather, per, links); break;
    case MessageKind::reduce_scatter: one = collective_time_s(Collective::reduce_scatter, per, links); break;
    case MessageKind::send: one = p2p_time_s(per, links); break;
    case MessageKind::to_host:
    case MessageKind::to_device: one = per / links.busbw_bytes_per_s; break;  // offload.cpp prices these
    case MessageKind::all_to_all: break;  // on the links it crosses: moe.cpp's moe_message_time_s
  }
  return static_cast<double>(msg.pieces) * one;
}

int64_t calls_per_step(const Message& msg, int64_t micro_batches) {
  return msg.cadence == Cadence::micro_batch ? msg.count * micro_batches : msg.count;
}

}  // namespace loom
