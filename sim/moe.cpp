#include "sim/moe.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "sim/rank_grid.hpp"
#include "sim/schedule.hpp"
#include "sim/topology.hpp"
#include "sim/tp_overlap.hpp"

namespace loom {

namespace {

using Wide = __int128;

std::string str(int64_t v) { return std::to_string(v); }

// The MLP matrices of one FFN: SwiGLU gate, up, down (llama); fc1, fc2 (gpt).
int64_t ffn_matrices(const ModelSpec& m) { return m.family == Family::gpt ? 2 : 3; }

}  // namespace

bool is_moe_layer(const ModelSpec& m, int64_t layer) {
  return m.is_moe() && layer >= m.dense_layers && layer % m.moe_layer_interval == 0;
}

int64_t moe_layers_in(const ModelSpec& m, int64_t first, int64_t count) {
  if (!m.is_moe() || count <= 0) return 0;
  // Multiples of the interval in [max(first, dense_layers), first + count).
  const int64_t lo = std::max(first, m.dense_layers), hi = first + count;
  if (lo >= hi) return 0;
  const int64_t q = m.moe_layer_interval;
  return (hi - 1) / q - (lo - 1 + q) / q + 1;
}

int64_t moe_layer_total(const ModelSpec& m) { return moe_layers_in(m, 0, m.layers); }

int64_t dense_mlp_params(const ModelSpec& m) {
  const int64_t h = m.hidden, f = m.ffn_hidden;
  return m.family == Family::gpt ? 2 * h * f + f + h : 3 * h * f;
}

// Router: a bias-free h x E linear (Mixtral's gate, Qwen2-MoE's gate, DeepSeek's MoEGate);
// experts and shared experts: bias-free SwiGLU FFNs, 3 h fe each (transformers'
// MixtralBlockSparseTop2MLP, Qwen2MoeMLP, DeepseekV2MLP).
MoeLayerParams moe_layer_params(const ModelSpec& m) {
  MoeLayerParams p;
  if (!m.is_moe()) return p;
  const int64_t h = m.hidden, fe = m.expert_ffn_hidden;
  p.router = h * m.experts;
  p.routed = m.experts * 3 * h * fe;
  p.shared = m.shared_experts * 3 * h * fe;
  // Qwen2-MoE (transformers Qwen2MoeSparseMoeBlock): shared_expert_gate, a bias-free h x 1 linear
  // whose sigmoid scales the shared expert's output.
  if (m.shared_expert_gate) p.shared += h;
  return p;
}

int64_t moe_params_delta(const ModelSpec& m) {
  return moe_layer_total(m) * (moe_layer_params(m).total() - dense_mlp_params(m));
}

int64_t active_params(const ModelSpec& m) {
  if (!m.is_moe()) return total_params(m);
  const MoeLayerParams p = moe_layer_params(m);
  const int64_t inactive = (m.experts - m.experts_per_token) * (p.routed / m.experts);
  return total_params(m) - moe_layer_total(m) * inactive;
}

FlopCount moe_forward_flops_delta(const ModelSpec& m, int64_t tokens) {
  if (!m.is_moe()) return 0;
  const FlopCount T = tokens, h = m.hidden, fe = m.expert_ffn_hidden;
  const FlopCount moe = 2 * T * h * (m.experts + (m.shared_expert_gate ? 1 : 0)) +
                        2 * ffn_matrices(m) * T * h * fe * (m.experts_per_token + m.shared_experts);
  const FlopCount dense = 2 * ffn_matrices(m) * T * h * m.ffn_hidden;
  return moe - dense;
}

// ---- Checks ------------------------------------------------------------------------------

namespace {

Status bounded(const FieldNamer& name, const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo) return Error{name(field) + ": must be >= " + str(lo) + " (got " + str(v) + ")"};
  if (v > hi) return Error{name(field) + ": must be <= " + str(hi) + " (got " + str(v) + ")"};
  return ok_status();
}

// Experts a layer may have: DeepSeek-V3 has 256, the largest published MoE models a few
// thousand; 2^16 keeps E x 3 h fe within 2^60 at the largest hidden and FFN sizes.
constexpr int64_t kMaxExperts = int64_t{1} << 16;

}  // namespace

Status check_moe_model(const ModelSpec& m, const FieldNamer& name) {
  if (!m.is_moe()) {
    const std::pair<const char*, int64_t> unused[] = {{"experts_per_token", m.experts_per_token},
                                                      {"shared_experts", m.shared_experts},
                                                      {"expert_ffn_hidden", m.expert_ffn_hidden},
                                                      {"dense_layers", m.dense_layers}};
    for (auto [field, v] : unused)
      if (v != 0) return Error{name(field) + ": needs experts > 0 (got " + str(v) + " with experts 0)"};
    if (m.experts < 0) return Error{name("experts") + ": must be >= 0 (got " + str(m.experts) + ")"};
    if (m.shared_expert_gate) return Error{name("shared_expert_gate") + ": needs experts > 0 (got true with experts 0)"};
    return ok_status();
  }
  if (auto st = bounded(name, "experts", m.experts, 2, kMaxExperts); !st) return st;
  if (auto st = bounded(name, "experts_per_token", m.experts_per_token, 1, m.experts); !st) return st;
  if (auto st = bounded(name, "shared_experts", m.shared_experts, 0, m.experts); !st) return st;
  if (auto st = bounded(name, "expert_ffn_hidden", m.expert_ffn_hidden, 1, limits::kFfnHidden); !st) return st;
  if (auto st = bounded(name, "dense_layers", m.dense_layers, 0, m.layers - 1); !st) return st;
  if (auto st = bounded(name, "moe_layer_interval", m.moe_layer_interval, 1, m.layers); !st) return st;
  if (m.shared_expert_gate && m.shared_experts == 0)
    return Error{name("shared_expert_gate") + ": needs shared_experts > 0 (got true with shared_experts 0)"};
  if (m.family != Family::llama)
    return Error{name("experts") + ": mixture-of-experts layers are modelled for the llama family (SwiGLU experts)"};
  if (moe_layer_total(m) < 1)
    return Error{name("dense_layers") + ": leaves no MoE layer (dense_layers " + str(m.dense_layers) +
                 ", moe_layer_interval " + str(m.moe_layer_interval) + ", layers " + str(m.layers) + ")"};
  const Wide per_layer = Wide(m.experts + m.shared_experts) * 3 * m.hidden * m.expert_ffn_hidden;
  if (Wide(m.layers) * per_layer > limits::kParams)
    return Error{name("experts") + ": the parameter count must be <= " + str(limits::kParams) + " (got more with " +
                 str(m.experts) + " experts of " + str(m.expert_ffn_hidden) + ")"};
  return ok_status();
}

namespace {

// Bounds of the expert work of one step at its largest (the whole batch on one rank, every
// expert padded to the capacity): the dispatched rows cf x tokens x k, each with the
// activations 4 h + 3 fe elements of 4 bytes, and 4 forwards of 6 h fe FLOPs.
Status check_moe_sizes(const ModelSpec& m, const TrainSpec& t, const FieldNamer& name) {
  if (!(t.moe_capacity_factor > 0 && t.moe_capacity_factor <= static_cast<double>(m.experts)))
    return Error{name("moe_capacity_factor") + ": must be in (0, experts = " + str(m.experts) + "] (got " +
                 std::to_string(t.moe_capacity_factor) + ")"};
  using L = long double;
  const L rows = L(t.global_batch) * t.seq * m.experts_per_token * t.moe_capacity_factor + m.experts;
  const L bytes = L(m.layers) * rows * 4 * (4 * L(m.hidden) + 3 * L(m.expert_ffn_hidden) + m.experts);
  if (bytes > limits::kDerivedBytes)
    return Error{name("global_batch") + ": the expert activations of one step must be <= " +
                 str(limits::kDerivedBytes) + " bytes"};
  if (4 * L(m.layers) * rows * 6 * L(m.hidden) * L(m.expert_ffn_hidden) > limits::kFlopsPerStep)
    return Error{name("global_batch") + ": the expert FLOPs of one step must be <= 2^100"};
  return ok_status();
}

Status check_expert_split(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name) {
  auto fail = [&](const char* field, const std::string& rule) -> Status { return Error{name(field) + ": " + rule}; };
  if (m.experts % p.ep != 0)
    return fail("ep", "must divide experts (" + str(m.experts) + " % " + str(p.ep) + " != 0), as Megatron-LM requires");
  if (p.etp > p.tp) return fail("etp", "must be <= tp (" + str(p.etp) + " > " + str(p.tp) + ")");
  if ((p.tp * p.dp) % (p.ep * p.etp) != 0)
    return fail("ep", "ep x etp must divide tp x dp, the ranks of a pipeline stage (" + str(p.ep * p.etp) +
                          " does not divide " + str(p.tp * p.dp) + ")");
  if (m.expert_ffn_hidden % p.etp != 0)
    return fail("etp", "must divide expert_ffn_hidden (" + str(m.expert_ffn_hidden) + " % " + str(p.etp) + " != 0)");
  if ((m.shared_experts * m.expert_ffn_hidden) % p.tp != 0)
    return fail("tp", "must divide the shared experts' FFN size (" + str(m.shared_experts * m.expert_ffn_hidden) +
                          " % " + str(p.tp) + " != 0)");
  if (p.tp > 1 && !p.sp)
    return fail("sp", "mixture-of-experts layers with tensor parallelism need sequence parallelism, as Megatron-LM "
                      "requires");
  if (p.zero > 1)
    return fail("zero", "must be 0 or 1 with experts (ZeRO-2/3 of expert weights are not modelled; got " +
                            str(p.zero) + ")");
  if (p.dp_comm != DpComm::ring) return fail("dp_comm", "must be ring with experts");
  // The expert grid is laid over each stage's tp x dp ranks, consecutive only with pp outermost.
  if (p.order != "tp-dp-pp" && p.order != "dp-tp-pp")
    return fail("order", "must keep pp outermost (tp-dp-pp or dp-tp-pp) with experts (got " + p.order + ")");
  return ok_status();
}

}  // namespace

Status check_moe_config(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, const FieldNamer& name) {
  if (auto st = bounded(name, "ep", p.ep, 1, limits::kGpus); !st) return st;
  if (auto st = bounded(name, "etp", p.etp, 1, limits::kGpus); !st) return st;
  if (auto st = check_moe_model(m, name); !st) return st;  // a model not read from a file (import)
  if (!m.is_moe()) {
    if (p.ep != 1) return Error{name("ep") + ": needs a mixture-of-experts model (got ep " + str(p.ep) + ")"};
    if (p.etp != 1) return Error{name("etp") + ": needs a mixture-of-experts model (got etp " + str(p.etp) + ")"};
    return ok_status();
  }
  if (auto st = check_moe_sizes(m, t, name); !st) return st;
  return check_expert_split(m, p, name);
}

// ---- One stage's expert work ---------------------------------------------------------------

int64_t chunk_first_layer(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk) {
  const int64_t n = chunk_layers_at(p, m.layers, stage, chunk);
  if (p.schedule == Schedule::zb_v) return virtual_stage(p.schedule, stage, chunk, p.pp) * n;
  int64_t first = 0;
  for (int64_t c = 0; c < chunk; ++c)
    for (int64_t i = 0; i < p.pp; ++i) first += chunk_layers_at(p, m.layers, i, c);
  for (int64_t i = 0; i < stage; ++i) first += chunk_layers_at(p, m.layers, i, chunk);
  return first;
}

MoeStage moe_stage(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, int64_t stage) {
  MoeStage s;
  if (!m.is_moe()) return s;
  // Chunk c of stage i starts after the chunks of every stage in rounds 0 .. c - 1 and stage i's
  // predecessors' chunks of round c (Megatron-core's interleaved layer assignment; a round's
  // chunks may differ by stage: chunk_layers_at).
  int64_t start = 0;
  for (int64_t c = 0; c < p.vpp; ++c) {
    const int64_t chunk = chunk_layers_at(p, m.layers, stage, c);
    int64_t first = start;
    for (int64_t i = 0; i < stage; ++i) first += chunk_layers_at(p, m.layers, i, c);
    for (int64_t i = 0; i < p.pp; ++i) start += chunk_layers_at(p, m.layers, i, c);
    // zb-v (even stages only, validate_config): chunk c holds virtual stage zb_v_virtual_stage.
    if (p.schedule == Schedule::zb_v) first = virtual_stage(p.schedule, stage, c, p.pp) * chunk;
    const int64_t n = moe_layers_in(m, first, chunk);
    s.layers += n;
    s.layers_chunk = std::max(s.layers_chunk, n);
    if (p.recompute == Recompute::full) s.rec_layers += moe_layers_in(m, first, p.recomputed_layers(chunk));
  }
  s.e = dtype_bytes(t.dtype);
  s.E = m.experts, s.k = m.experts_per_token, s.h = m.hidden, s.fe = m.expert_ffn_hidden;
  s.fs = m.shared_experts * m.expert_ffn_hidden;
  s.t = p.tp, s.ep = p.ep, s.etp = p.etp, s.edp = p.tp * p.dp / (p.ep * p.etp);
  s.T = p.micro_batch * t.seq;
  s.Tr = s.T / (p.sp ? p.tp : 1);
  // Capacity (Switch Transformer, Fedus et al. 2021, eq. 3 with top-k: tokens x k / E x cf),
  // per source rank as GShard's per-group capacity (Lepikhin et al. 2020, Sec. 2.2).
  s.C = static_cast<int64_t>(std::ceil(t.moe_capacity_factor * static_cast<double>(s.Tr * s.k) /
                                       static_cast<double>(s.E)));
  s.R = s.etp * s.E * s.C;
  s.gate = m.shared_expert_gate ? s.h : 0;
  s.dense_params = s.h * s.E + s.gate + 3 * s.h * s.fs / s.t;
  s.expert_params = s.layers * (s.E / s.ep) * 3 * s.h * s.fe / s.etp;
  s.mlp_params = dense_mlp_params(m) / s.t;
  s.router_params = s.layers * (s.h * s.E + s.gate);
  s.dispatch_bytes = s.E * s.C * s.h * s.e;
  s.gathered_bytes = s.R * s.h * s.e;
  return s;
}

int64_t moe_layer_activation_bytes(const ModelSpec& m, const MoeStage& s, int64_t b, int64_t seq, bool sp,
                                   Recompute r, Attention a, Dtype d) {
  const int64_t dense = layer_activation_bytes(m, b, seq, s.t, sp, r, a, d).total();
  if (r == Recompute::full) return dense;
  const int64_t e = s.e;
  const int64_t mlp = ffn_matrices(m) * e * s.T * m.ffn_hidden / s.t;
  const int64_t moe = 4 * s.Tr * s.E + e * s.R * s.h + 3 * e * s.R * s.fe / s.etp + e * s.E * s.C * s.h +
                      3 * e * s.T * s.fs / s.t;
  return dense - mlp + moe;
}

void moe_buffers(std::vector<Buffer>& v, const MoeStage& s, const ParallelConfig& p) {
  if (s.layers <= 0) return;
  auto add = [&v](const char* n, MemCategory c, int64_t bytes) {
    if (bytes > 0) v.push_back({n, c, Lifetime::transient, bytes});
  };
  if (p.ep > 1) add("ep dispatch send and receive", MemCategory::comm_buffers, 2 * s.dispatch_bytes);
  if (p.etp > 1) add("etp gathered tokens", MemCategory::comm_buffers, s.gathered_bytes);
  add("expert backward scratch", MemCategory::workspace, s.e * s.R * (s.h + 3 * s.fe / s.etp));
}

// `groups` products of (M, N, K) in one launch (OpTimer::grouped).
static Op grouped_gemm(const char* name, Pass pass, int64_t M, int64_t N, int64_t K, int64_t groups, int64_t count) {
  Op o = gemm(name, pass, M, N, K, count);
  o.batch = static_cast<double>(groups);
  o.flops *= groups;
  return o;
}

void moe_ops(std::vector<Op>& ops, const MoeStage& s, Pass pass) {
  const int64_t L = pass == Pass::recompute ? s.rec_layers : s.layers;
  if (L <= 0) return;
  ops.push_back(gemm("router", pass, s.Tr, s.E, s.h, L));
  // Each of the rank's E / ep experts multiplies its own rows, ep etp C of them at capacity:
  // Megatron's grouped GEMM runs them in one launch, but each product keeps its own shape, so
  // its efficiency is that of an (ep etp C, n, k) GEMM, not of one R-row product.
  const int64_t local = s.E / s.ep;
  ops.push_back(grouped_gemm("expert gate|up", pass, s.R / local, 2 * s.fe / s.etp, s.h, local, L));
  ops.push_back(grouped_gemm("expert down", pass, s.R / local, s.h, s.fe / s.etp, local, L));
  if (s.gate > 0) ops.push_back(gemm("shared expert gate", pass, s.T, 1, s.h, L));  // Qwen2-MoE's sigmoid gate
  if (s.fs > 0) {
    // Megatron-Core's SharedExpertMLP is an MLP with userbuffers "fc1" and "fc2" (not an expert
    // layer, so Transformer Engine overlaps its tp collectives as a dense MLP's; shared_experts.py)
    ops.push_back(beside_tp_collective(gemm("shared expert gate|up", pass, s.T, 2 * s.fs / s.t, s.h, L), TpOverlapSlot::fc1));
    ops.push_back(beside_tp_collective(gemm("shared expert down", pass, s.T, s.h, s.fs / s.t, L), TpOverlapSlot::fc2));
  }
  const double e = static_cast<double>(s.e);
  // Backward elementwise kernels read two tensors and write one: 1.5x the forward's time.
  const double bwd_scale = pass == Pass::backward ? kElementwiseBackwardScale : 1;
  // Router: fp32 softmax and top-k read and write Tr x E scores.
  ops.push_back(memory_op("router softmax and top-k", MemKind::softmax, pass, 2.0 * 4 * static_cast<double>(s.Tr * s.E),
                          L, bwd_scale));
  // Permute into the padded dispatch buffer and unpermute the combined outputs: each reads and
  // writes E C rows of h.
  ops.push_back(memory_op("token permute and unpermute", MemKind::copy, pass,
                          2 * 2 * e * static_cast<double>(s.E * s.C * s.h), L, bwd_scale));
  ops.push_back(memory_op("expert swiglu", MemKind::activation, pass,
                          gated_unit_bytes(static_cast<double>(s.R * s.fe / s.etp), e), L, bwd_scale));
  if (s.fs > 0)
    ops.push_back(memory_op("shared expert swiglu", MemKind::activation, pass,
                            gated_unit_bytes(static_cast<double>(s.T * s.fs / s.t), e), L, bwd_scale));
}

void moe_messages(std::vector<Message>& v, const MoeStage& s, const ParallelConfig& p, const TrainSpec& t) {
  if (s.layers <= 0) return;
  const int64_t L = s.layers;
  std::vector<Pass> passes{Pass::forward, Pass::backward};
  if (p.recompute == Recompute::full) passes.push_back(Pass::recompute);
  for (Pass pass : passes) {
    const int64_t n = pass == Pass::recompute ? s.rec_layers : L;
    if (n <= 0) continue;
    if (p.ep > 1)
      v.push_back(Message{"ep all-to-all", Group::ep, MessageKind::all_to_all, pass, Cadence::micro_batch,
                          s.dispatch_bytes, 2 * n});
    if (p.etp > 1) {
      v.push_back(Message{"etp all-gather", Group::etp, MessageKind::all_gather, pass, Cadence::micro_batch,
                          s.gathered_bytes, n});
      v.push_back(Message{"etp reduce-scatter", Group::etp, MessageKind::reduce_scatter, pass, Cadence::micro_batch,
                          s.gathered_bytes, n});
    }
  }
  if (s.edp <= 1 || s.expert_params <= 0) return;
  // Expert gradients over the expert-data-parallel group (Megatron-core's expert DDP), as the
  // dense ones over dp (ZeRO paper, Sec. 7): ZeRO-0 an all-reduce, ZeRO-1 a reduce-scatter
  // and, after the optimizer, an all-gather of the updated weights.
  // FP8 weights (TrainSpec::fp8_param_gather): the experts' are FP8 GEMM weights, gathered at a byte.
  const int64_t G = dtype_bytes(t.grad_dtype) * s.expert_params,
                W = (t.fp8 && t.fp8_param_gather ? 1 : s.e) * s.expert_params;
  const auto kind = p.zero == 0 ? MessageKind::all_reduce : MessageKind::reduce_scatter;
  v.push_back(Message{"expert gradients", Group::edp, kind, Pass::step, Cadence::step, G, 1});
  if (p.zero >= 1)
    v.push_back(Message{"expert gather params", Group::edp, MessageKind::all_gather, Pass::step, Cadence::step, W, 1});
}

TpHalves moe_tp_halves_saved(const MoeStage& s, const ParallelConfig& p) {
  if (p.tp <= 1 || s.fs > 0) return {};
  return {2 * s.layers, (2 + (p.sp ? 1 : 0)) * s.layers, 2 * s.rec_layers};
}

// ---- Links ---------------------------------------------------------------------------------

void add_moe_links(GroupLinksSet& links, const Topology& topo, const ModelSpec& m, const ClusterSpec& c,
                   const ParallelConfig& p) {
  if (!m.is_moe()) return;
  const int64_t world = topo.gpus();
  if (p.etp > 1) {
    if (auto g = RankGrid::make(p.etp, world / p.etp, 1, "tp-dp-pp")) links.etp = topo.ring(*g, Dim::tp);
  }
  const int64_t edp = p.tp * p.dp / (p.ep * p.etp);
  if (edp > 1) {
    if (auto g = RankGrid::make(p.ep * p.etp, edp, world / (p.tp * p.dp), "tp-dp-pp")) links.edp = topo.ring(*g, Dim::dp);
  }
  AllToAllLinks& a = links.ep;
  a = AllToAllLinks{};
  if (p.ep <= 1) return;
  std::map<int64_t, int64_t> per_node;  // the ep group of rank 0: ranks 0, etp, 2 etp, ...
  for (int64_t j = 0; j < p.ep; ++j) ++per_node[topo.node_of(j * p.etp)];
  a.size = p.ep;
  a.nodes_spanned = static_cast<int64_t>(per_node.size());
  for (auto [node, n] : per_node) a.ranks_per_node = std::max(a.ranks_per_node, n);
  a.gpus_per_node = std::min(c.gpus_per_node, world);
  a.intra_bytes_per_s = c.intra_node.busbw_bytes_per_s;
  a.nic_bytes_per_s = c.inter_node.busbw_bytes_per_s * static_cast<double>(c.inter_node.nics_per_node);
  a.latency_s = a.nodes_spanned > 1 ? c.inter_node.latency_s : c.intra_node.latency_s;
}

bool is_moe_message(const Message& msg) {
  return msg.group == Group::ep || msg.group == Group::etp || msg.group == Group::edp;
}

double moe_message_time_s(const Message& msg, const GroupLinksSet& links) {
  switch (msg.group) {
    case Group::ep: return all_to_all_time_s(static_cast<double>(msg.bytes), links.ep);
    case Group::etp: return message_time_s(msg, links.etp);
    case Group::edp: return message_time_s(msg, links.edp);
    default: return 0;
  }
}

void price_moe_message(const Message& msg, const GroupLinksSet& links, int64_t mb, StageEstimate& s) {
  const int64_t n = msg.group == Group::ep ? links.ep.size : msg.group == Group::etp ? links.etp.size : links.edp.size;
  const int64_t sent = calls_per_step(msg, mb) * message_send_bytes(msg, n);
  const double t = static_cast<double>(msg.count) * moe_message_time_s(msg, links);
  if (msg.group == Group::edp) {
    s.comm.dp += sent;
    s.edp_step_s += t;
    return;
  }
  s.comm.ep += sent;
  s.ep_comm_s += t;
  if (msg.pass == Pass::forward) s.ep_forward_s += t;
}

}  // namespace loom
