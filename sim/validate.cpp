#include "sim/validate.hpp"

#include <cstdint>
#include <cstdio>

#include "sim/fp8.hpp"
#include "sim/context_parallel.hpp"
#include "sim/mla.hpp"
#include "sim/model_math.hpp"
#include "sim/moe.hpp"
#include "sim/offload.hpp"
#include "sim/rank_grid.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/tp_overlap.hpp"

namespace loom {

namespace {

using Wide = __int128;  // products of two or three bounded sizes, exact

std::string s(int64_t v) { return std::to_string(v); }
std::string s(long double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4Lg", v);
  return buf;
}
std::string s(Wide v) {  // exact: std::to_string has no 128-bit overload
  if (v >= INT64_MIN && v <= INT64_MAX) return std::to_string(static_cast<int64_t>(v));
  const bool negative = v < 0;
  std::string digits;
  for (unsigned __int128 u = negative ? -static_cast<unsigned __int128>(v) : v; u > 0; u /= 10)
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(u % 10)));
  return (negative ? "-" : "") + digits;
}

Status in_range(const FieldNamer& name, const std::string& field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo) return Error{name(field) + ": must be >= " + s(lo) + " (got " + s(v) + ")"};
  if (v > hi) return Error{name(field) + ": must be <= " + s(hi) + " (got " + s(v) + ")"};
  return ok_status();
}

// dp, tp, pp, micro_batch, vpp and ps_servers within bounds that keep every product of them
// (dp x tp x pp, dp x micro_batch, pp x vpp) exact in int64, checked before those products.
Status check_parallel_sizes(const ModelSpec&, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p,
                            const FieldNamer& name) {
  for (auto [field, v] : {std::pair{"dp", p.dp}, {"tp", p.tp}, {"pp", p.pp}, {"cp", p.cp}})
    if (auto st = in_range(name, field, v, 1, limits::kGpus); !st) return st;
  const Wide world = Wide(p.dp) * p.tp * p.pp * p.cp;
  if (world != c.gpus && p.cp == 1)
    return Error{name("dp") + ": dp x tp x pp must equal the GPUs in use (" + s(p.dp) + " x " + s(p.tp) + " x " +
                 s(p.pp) + " = " + s(world) + ", gpus = " + s(c.gpus) + ")"};
  if (world != c.gpus)
    return Error{name("dp") + ": dp x tp x pp x cp must equal the GPUs in use (" + s(p.dp) + " x " + s(p.tp) +
                 " x " + s(p.pp) + " x " + s(p.cp) + " = " + s(world) + ", gpus = " + s(c.gpus) + ")"};
  if (auto st = in_range(name, "micro_batch", p.micro_batch, 1, limits::kGlobalBatch); !st) return st;
  if (auto st = in_range(name, "vpp", p.vpp, 1, limits::kLayers); !st) return st;
  if (auto st = in_range(name, "ps_servers", p.ps_servers, 0, limits::kGpus); !st) return st;
  const Wide per_step = Wide(p.dp) * p.micro_batch;
  if (per_step > t.global_batch || t.global_batch % static_cast<int64_t>(per_step) != 0)
    return Error{name("global_batch") + ": must be a multiple of dp x micro_batch (" + s(t.global_batch) + " % " +
                 s(per_step) + " != 0)"};
  return ok_status();
}

}  // namespace

Status check_model_sizes(const ModelSpec& m, const FieldNamer& name) {
  const std::pair<const char*, std::pair<int64_t, int64_t>> fields[] = {
      {"layers", {m.layers, limits::kLayers}}, {"hidden", {m.hidden, limits::kHidden}},
      {"heads", {m.heads, limits::kHeads}},    {"kv_heads", {m.kv_heads, limits::kHeads}},
      {"ffn_hidden", {m.ffn_hidden, limits::kFfnHidden}}, {"vocab", {m.vocab, limits::kVocab}},
      {"seq_len", {m.seq_len, limits::kSeq}}};
  for (const auto& [field, v] : fields)
    if (auto st = in_range(name, field, v.first, 1, v.second); !st) return st;
  // Within those bounds one layer (< 2^45) and the embeddings (< 2^47) fit int64; the layer
  // count multiplies them past it, so the total is formed in 128 bits.
  const Wide params = Wide(m.layers) * layer_params(m).total() + embedding_params(m) + final_norm_params(m) +
                      output_params(m);
  if (params > limits::kParams)
    return Error{name("layers") + ": the parameter count must be <= " + s(limits::kParams) + " (got " + s(params) +
                 " with " + s(m.layers) + " layers)"};
  return ok_status();
}

// The bounds below are upper bounds of cost_model.cpp's terms at their largest: fp32 (4 bytes),
// unfused attention with dropout (softmax, mask and dropout output per score: 2e + 1 bytes per
// head and score, Korthikanti et al. 2022, eq. 1), no tensor or sequence split, the whole batch
// in one micro-batch. Logits: e bytes plus 4 of fp32 probabilities per token and vocab row, at
// most once per token of the step (GPipe holds one per micro-batch: B s V in all).
Status check_train_sizes(const ModelSpec& m, const TrainSpec& t, const FieldNamer& name) {
  if (auto st = in_range(name, "global_batch", t.global_batch, 1, limits::kGlobalBatch); !st) return st;
  if (auto st = in_range(name, "seq", t.seq, 1, limits::kSeq); !st) return st;
  if (auto st = in_range(name, "dp_bucket_bytes", t.dp_bucket_bytes, 0, limits::kBytes); !st) return st;
  const Wide tokens = Wide(t.global_batch) * t.seq;
  if (tokens > limits::kTokensPerStep)
    return Error{name("global_batch") + ": tokens per step (global_batch x seq) must be <= " +
                 s(limits::kTokensPerStep) + " (got " + s(tokens) + ")"};
  using L = long double;
  const L T = static_cast<L>(tokens), e = 4, h = m.hidden, kv = L(m.kv_heads) * m.head_dim(), f = m.ffn_hidden;
  // Latent attention's q, k, v and latents (sim/mla.hpp) beside the dense terms: an upper bound.
  const L per_token = h * (4 * e + 2) + e * (2 * h + 2 * kv) + 3 * e * f + 16 + 4 * L(m.heads) +
                      (m.is_mla() ? e * mla_elements_per_token(m) : 0);
  const L scores = (2 * e + 1) * m.heads * T * t.seq;  // b s^2 per head
  const L activations = L(m.layers) * (T * per_token + scores) + (e + 4) * T * m.vocab;
  if (activations > limits::kDerivedBytes)
    return Error{name(L(m.layers) * scores > activations / 2 ? "seq" : "global_batch") +
                 ": the activations of one step must be <= " + s(limits::kDerivedBytes) + " bytes (got " +
                 s(activations) + " with global_batch " + s(t.global_batch) + " x seq " + s(t.seq) + ")"};
  // Model FLOPs (model_math.hpp), with a full recompute's extra forward: 4 forwards at most.
  const L layer_fwd = 2 * T * h * (h + 2 * kv) + 2 * T * h * h + 6 * T * h * f + 4 * T * t.seq * h +
                      (m.is_mla() ? T * mla_forward_flops_per_token(m, t.seq) : 0);
  const L flops = 4 * (L(m.layers) * layer_fwd + 2 * T * h * m.vocab);
  if (flops > limits::kFlopsPerStep)
    return Error{name("global_batch") + ": the FLOPs of one step must be <= 2^100 (got " + s(flops) + ")"};
  return ok_status();
}

Status size_cluster(ClusterSpec& c, int64_t gpus, const std::string& where) {
  if (gpus < 1) return make_error(where, "must be >= 1 (got " + s(gpus) + ")");
  if (gpus > limits::kGpus) return make_error(where, "must be <= " + s(limits::kGpus) + " (got " + s(gpus) + ")");
  const int64_t capacity = c.max_nodes * c.gpus_per_node;
  if (gpus > capacity)
    return make_error(where, "more GPUs than cluster " + c.name + " has (" + s(gpus) + " > " + s(c.max_nodes) +
                                 " nodes x " + s(c.gpus_per_node) + ")");
  if (gpus > c.gpus_per_node && gpus % c.gpus_per_node != 0)
    return make_error(where, "more than one node must be whole nodes: " + s(gpus) + " is not a multiple of " +
                                 s(c.gpus_per_node) + " GPUs per node");
  c.gpus = gpus;
  c.nodes = (gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  return ok_status();
}

// ZB-V (sim/schedule.hpp's zb_v_rank) runs two chunks per rank placed as a V: vpp 2, a pipeline
// of at least two stages, and even stages (its V placement splits the layers into 2 pp equal
// chunks). Any number of micro-batches runs; with fewer than 2 pp - 1 the tables drop the
// missing ones' slots (as PyTorch's ScheduleZBVZeroBubble does) and the bubble grows.
namespace {
Status check_zb_v(const ParallelConfig& p, const FieldNamer& name) {
  if (p.schedule != Schedule::zb_v) return ok_status();
  if (p.vpp != 2) return Error{name("vpp") + ": the zb-v schedule runs two chunks per rank, a V: must be 2 (got " + s(p.vpp) + ")"};
  if (p.pp < 2) return Error{name("schedule") + ": the zb-v schedule needs pp > 1 (got pp " + s(p.pp) + ")"};
  for (int64_t n : p.stage_layers)
    if (n != p.stage_layers.front())
      return Error{name("stage_layers") + ": the zb-v schedule places even stages only (got uneven stages)"};
  return ok_status();
}
}  // namespace

bool block_recompute_priced(const ModelSpec& m, const ParallelConfig& p) {
  if (!m.is_moe() || p.schedule != Schedule::interleaved) return true;
  for (int64_t i = 0; i < p.pp; ++i)
    if (stage_layer_count(p, m.layers, i) % p.vpp != 0) return false;
  return true;
}

namespace {

// A block recompute (ParallelConfig::recompute_layers): the first N layers of each chunk
// recomputed in full, priced for Megatron's engine only.
Status check_recompute_layers(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name) {
  if (p.recompute_layers == 0) return ok_status();
  auto fail = [&](const std::string& rule) -> Status { return Error{name("recompute_layers") + ": " + rule}; };
  if (p.recompute_layers < 0 || p.recompute_layers > limits::kLayers)
    return fail("must be in [0, " + s(limits::kLayers) + "] (got " + s(p.recompute_layers) + ")");
  if (p.recompute != Recompute::full)
    return fail("recomputes the first layers of each chunk in full: needs recompute full (got recompute " +
                to_string(p.recompute) + ")");
  const int64_t most = max_chunk_layer_count(p, m.layers);  // a block of more is every layer, said another way
  if (p.recompute_layers > most)
    return fail("must be at most the layers of a model chunk, " + s(most) + " (got " + s(p.recompute_layers) +
                "; for every layer, leave it 0)");
  if (!block_recompute_priced(m, p))
    return fail(
        "a block recompute of MoE layers is priced with equal interleaved chunks only (stage_layers leaves a "
        "short chunk)");
  if (p.zero3_gather == Zero3Gather::tensor)
    return fail("a block recompute is priced with layer-by-layer ZeRO-3 gathers only (got zero3_gather tensor)");
  return ok_status();
}

// Every K-th layer of each chunk recomputed in full (ParallelConfig::recompute_every),
// torchtitan's layer-level selective checkpointing.
Status check_recompute_every(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name) {
  if (p.recompute_every == 0) return ok_status();
  auto fail = [&](const std::string& rule) -> Status { return Error{name("recompute_every") + ": " + rule}; };
  if (p.recompute_every < 0 || p.recompute_every > limits::kLayers)
    return fail("must be in [0, " + s(limits::kLayers) + "] (got " + s(p.recompute_every) + ")");
  if (p.recompute != Recompute::full)
    return fail("recomputes every K-th layer of each chunk in full: needs recompute full (got recompute " +
                to_string(p.recompute) + ")");
  if (p.recompute_layers > 0)
    return fail("and recompute_layers choose the recomputed layers two ways: set one (got recompute_layers " +
                s(p.recompute_layers) + ")");
  if (m.is_moe())
    return fail("every K-th layer is priced for dense models only (a MoE model's recomputed layers depend on which "
                "are MoE layers)");
  if (p.zero3_gather == Zero3Gather::tensor)
    return fail("a partial recompute is priced with layer-by-layer ZeRO-3 gathers only (got zero3_gather tensor)");
  return ok_status();
}

}  // namespace

// torchtitan's per-op selective checkpointing (Recompute::op), priced for the block it was
// written for: torchtitan's Llama TransformerBlock, whose bias-free linears run as aten.mm (the
// op its save list counts; a biased linear is aten.addmm, an FP8 one torchao's aten._scaled_mm,
// so both would change which outputs are kept), attention as one SDPA call, and tensor
// parallelism with sequence-parallel norms (torchtitan's only TP plan), without a context-parallel
// ring (which replaces that SDPA call).
Status check_recompute_op(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, const FieldNamer& name) {
  if (p.recompute != Recompute::op) return ok_status();
  auto fail = [&](const std::string& rule) -> Status { return Error{name("recompute") + ": op " + rule}; };
  if (m.family != Family::llama || m.is_moe() || m.is_mla() || m.post_norms || m.gated_gelu)
    return fail("(torchtitan's per-op checkpointing) is priced for dense Llama layers (RMSNorm, SwiGLU, separate q, "
                "k, v projections; no MoE, latent attention or Gemma norms), as torchtitan's Llama block runs it (got " +
                m.name + ")");
  if (m.qkv_bias)
    return fail("is priced for bias-free projections: a biased linear runs as aten.addmm, which torchtitan's save list "
                "leaves out (got qkv_bias)");
  if (t.attention != Attention::fused)
    return fail("keeps the output of torchtitan's fused SDPA attention: needs attention fused");
  if (t.fp8)
    return fail("is priced for bf16 GEMMs: torchao's Float8 GEMMs run as aten._scaled_mm, which torchtitan's save list "
                "leaves out (got dtype fp8)");
  if (p.cp > 1) return fail("is priced without context parallelism (got cp " + s(p.cp) + ")");
  if (p.tp > 1 && !p.sp)
    return fail("with tp > 1 needs sp: torchtitan's tensor parallelism keeps its norms sequence-parallel (got sp off)");
  if (p.zero3_gather == Zero3Gather::tensor)
    return fail("is torchtitan's: needs layer-by-layer ZeRO-3 gathers (got zero3_gather tensor)");
  return ok_status();
}

Status validate_config(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p,
                       const FieldNamer& name) {
  auto fail = [&](const std::string& field, const std::string& rule) -> Status {
    return Error{name(field) + ": " + rule};
  };
  if (auto st = check_train_sizes(m, t, name); !st) return st;
  if (auto st = check_parallel_sizes(m, c, t, p, name); !st) return st;
  if (m.heads % p.tp != 0) return fail("tp", "must divide heads (" + s(m.heads) + " % " + s(p.tp) + " != 0)");
  if (m.kv_heads % p.tp != 0)
    return fail("tp", "must divide kv_heads (" + s(m.kv_heads) + " % " + s(p.tp) + " != 0)");
  if (m.ffn_hidden % p.tp != 0)
    return fail("tp", "must divide ffn_hidden (" + s(m.ffn_hidden) + " % " + s(p.tp) + " != 0)");
  if (auto st = check_moe_config(m, t, p, name); !st) return st;  // experts: ep, etp (sim/moe.hpp)
  if (p.schedule == Schedule::interleaved && p.vpp < 2)
    return fail("vpp", "the interleaved schedule needs vpp > 1 (got " + s(p.vpp) + ")");
  if (auto st = check_zb_v(p, name); !st) return st;
  if (p.schedule != Schedule::interleaved && p.schedule != Schedule::zb_v && p.vpp != 1)
    return fail("vpp", "vpp > 1 needs the interleaved schedule (got schedule " + to_string(p.schedule) + ")");
  if (p.schedule == Schedule::interleaved && p.pp < 2)
    return fail("schedule", "the interleaved schedule needs pp > 1");
  if (!p.stage_layers.empty()) {
    if (auto st = check_stage_layers(m, p, name); !st) return st;
  } else if (m.layers % (p.pp * p.vpp) != 0) {
    return fail(p.vpp > 1 ? "vpp" : "pp", "pp x vpp must divide layers (" + s(m.layers) + " % " +
                                              s(p.pp * p.vpp) + " != 0)");
  }
  if (p.sp && p.tp < 2) return fail("sp", "sequence parallelism needs tensor parallelism (tp > 1)");
  if (auto st = check_recompute_layers(m, p, name); !st) return st;
  if (auto st = check_recompute_every(m, p, name); !st) return st;
  if (auto st = check_recompute_op(m, t, p, name); !st) return st;
  if (p.tp_comm_overlap && !(p.sp && p.tp > 1))  // Megatron-LM's arguments.py asserts the same
    return fail("tp_comm_overlap", std::string("tensor-parallel communication overlap needs sequence parallelism and ") +
                                       "tp > 1 (got sp " + (p.sp ? "on" : "off") + ", tp " + s(p.tp) + ")");
  if (p.overlap_param_gather && !((p.zero == 1 || p.zero == 2) && dp_cp(p) > 1 && p.dp_comm == DpComm::ring))
    return fail("overlap_param_gather", "overlapping the updated weights' all-gather needs zero 1 or 2 with dp x cp > 1 on "
                                        "the ring (got zero " + s(static_cast<int64_t>(p.zero)) + ", dp x cp " + s(dp_cp(p)) + ")");
  if (!p.overlap_grad_reduce && (p.zero >= 3 || p.dp_comm != DpComm::ring))
    return fail("overlap_grad_reduce", std::string("a gradient reduction after the backward needs zero 0-2 on the ring (ZeRO-3 ") +
                                           "reduce-scatters each layer beside the backward; got zero " +
                                           s(static_cast<int64_t>(p.zero)) + ", dp_comm " + to_string(p.dp_comm) + ")");
  // ZeRO-2's per-micro-batch reduce-scatters blocking the compute stream stretch every pipeline
  // period, which the cost model does not price (and no engine runs: DeepSpeed's pipeline engine
  // refuses ZeRO-2, Megatron-FSDP always overlaps).
  if (!p.overlap_grad_reduce && p.zero == 2 && p.pp > 1)
    return fail("overlap_grad_reduce", "off with zero 2 needs pp 1 (got pp " + s(p.pp) + ")");
  if (p.tp_comm_overlap && gpu_sm_count(c.gpu) == 0)
    return fail("tp_comm_overlap", "needs the GPU's SM count: the cluster file's gpu.sm_count is not set (got " +
                                       c.gpu.name + ")");
  const int64_t mb = t.global_batch / (p.dp * p.micro_batch);
  if (p.schedule == Schedule::interleaved && mb % p.pp != 0)
    return fail("micro_batch", "the interleaved schedule needs the micro-batch count (" + s(mb) +
                                   ") to be a multiple of pp (" + s(p.pp) + "), as Megatron-LM requires");
  if (p.sp && (t.seq % p.tp != 0))
    return fail("seq", "sequence parallelism needs tp to divide seq (" + s(t.seq) + " % " + s(p.tp) + " != 0)");
  if (auto st = check_context_parallel(m, t, p, name); !st) return st;
  if (m.family == Family::gpt && t.seq > m.seq_len)
    return fail("seq", "must be <= the model's learned position table (" + s(m.seq_len) + ")");
  if (p.zero < 0 || p.zero > 3) return fail("zero", "must be 0, 1, 2 or 3");
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (!grid) return fail("order", grid.error().message.substr(7));
  if (p.dp_comm == DpComm::parameter_server && p.ps_servers < 1)
    return fail("ps_servers", "the parameter-server layout needs at least one server");
  if (p.dp_comm == DpComm::ring && p.ps_servers != 0)
    return fail("ps_servers", "servers are only used with dp_comm ps");
  if (p.dp_comm == DpComm::parameter_server && p.zero != 0)
    return fail("zero", "the parameter-server layout shards nothing: zero must be 0");
  // DeepSpeed's per-tensor ZeRO-3 has no pipeline (its PipelineEngine refuses ZeRO stages 2 and 3).
  if (p.zero3_gather == Zero3Gather::tensor && (p.zero != 3 || p.pp != 1 || p.cp != 1))
    return fail("zero3_gather", "tensor (DeepSpeed's per-tensor ZeRO-3) needs zero 3, pp 1 and cp 1 (got zero " +
                                    s(static_cast<int64_t>(p.zero)) + ", pp " + s(p.pp) + ", cp " + s(p.cp) + ")");
  if (!(p.grad_compression >= 1 && p.grad_compression <= 1e6))  // NaN fails both
    return fail("grad_compression", "must be in [1, 1e6] (original / sent bytes; got " + s(static_cast<long double>(p.grad_compression)) + ")");
  if (auto st = validate_offload(c, p, name); !st) return st;
  if (auto st = check_fp8(c, t, name("dtype")); !st) return st;  // FP8 needs FP8 tensor cores
  return ok_status();
}

}  // namespace loom
