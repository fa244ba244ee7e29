#include "sim/context_parallel.hpp"

#include <cstring>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "sim/cost_model.hpp"
#include "sim/spec_json.hpp"
#include "sim/topology.hpp"

namespace loom {

namespace {

std::string cp_str(int64_t v) { return std::to_string(v); }

// Position of `d` in the grid's order, innermost first.
int position(const RankGrid& g, Dim d) {
  for (int i = 0; i < 4; ++i)
    if (g.order()[static_cast<size_t>(i)] == d) return i;
  return -1;
}

}  // namespace

Status check_context_parallel(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                              const FieldNamer& name) {
  auto fail = [&](const std::string& rule) -> Status { return Error{name("cp") + ": " + rule}; };
  if (p.cp <= 1 && p.cp_comm != CpComm::p2p)
    return Error{name("cp_comm") + ": " + to_string(p.cp_comm) + " needs cp > 1 (got cp " + cp_str(p.cp) + ")"};
  if (p.cp <= 1) return ok_status();
  if (t.seq % (2 * p.cp) != 0)  // Megatron: each rank holds chunks i and 2 cp - 1 - i of 2 cp
    return fail("must split seq into 2 x cp equal chunks, the load-balanced causal split (" + cp_str(t.seq) + " % " +
                cp_str(2 * p.cp) + " != 0)");
  if (p.sp && (t.seq / p.cp) % p.tp != 0)
    return fail("sequence parallelism needs tp to divide seq / cp (" + cp_str(t.seq / p.cp) + " % " + cp_str(p.tp) +
                " != 0)");
  if (t.attention != Attention::fused)
    return fail("context parallelism needs fused attention (the ring runs FlashAttention blocks)");
  if (m.is_moe()) return fail("context parallelism with MoE layers is not modelled (got " + cp_str(p.cp) + ")");
  if (p.dp_comm != DpComm::ring) return fail("context parallelism needs dp_comm ring (got " + cp_str(p.cp) + ")");
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (grid && !dp_cp_grid(*grid))
    return Error{name("order") + ": with cp > 1, cp must sit next to dp, so the dp-cp group the gradients are "
                                 "reduced over is one block of ranks (got \"" + grid->order_string() + "\")"};
  return ok_status();
}

Expected<RankGrid> dp_cp_grid(const RankGrid& grid) {
  if (grid.size(Dim::cp) == 1) return grid;
  // The three names with dp at the inner of cp and dp: its coordinate is cp + cp_size x dp
  // (or dp + dp_size x cp), the rank's place in its dp-cp group.
  const int inner = std::min(position(grid, Dim::cp), position(grid, Dim::dp));
  if (std::abs(position(grid, Dim::cp) - position(grid, Dim::dp)) != 1)
    return Error{"order: with cp > 1, cp must sit next to dp (got \"" + grid.order_string() + "\")"};
  std::string order;
  for (int i = 0; i < 4; ++i) {
    const Dim d = grid.order()[static_cast<size_t>(i)];
    if ((d == Dim::cp || d == Dim::dp) && i != inner) continue;
    order += (order.empty() ? "" : "-") + std::string(i == inner ? "dp" : dim_name(d));
  }
  return RankGrid::make(grid.size(Dim::tp), grid.size(Dim::dp) * grid.size(Dim::cp), grid.size(Dim::pp), order, 1);
}

void add_cp_links(GroupLinksSet& links, const Topology& topo, const RankGrid& grid) {
  if (grid.size(Dim::cp) <= 1) return;
  auto folded = dp_cp_grid(grid);
  if (!folded) return;
  links.cp = topo.ring(grid, Dim::cp);  // each rank sends to its ring neighbour, all at once
  links.dp = topo.ring(*folded, Dim::dp);
}

int64_t cp_kv_block_bytes(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p) {
  return p.micro_batch * (t.seq / p.cp) * (m.kv_dim() / p.tp) * dtype_bytes(t.dtype);
}

namespace {

// TransformerEngine's AttnFuncWithCPAndKVAllGather (CpComm::all_gather): per layer an all-gather
// of K and V (cp blocks of each gathered) before the forward's attention, the same again before
// the backward's, where the full-sequence dK and dV are then reduce-scattered back to their
// owners; a recompute gathers again. All in-line: none runs beside a block.
void cp_all_gather_messages(std::vector<Message>& v, int64_t kv, const ParallelConfig& p, int64_t layers,
                            int64_t again) {
  const int64_t gathered = p.cp * kv;
  const auto mbc = Cadence::micro_batch;
  v.push_back(message(kCpGatherMessage, Group::cp, MessageKind::all_gather, Pass::forward, mbc, gathered, layers));
  v.push_back(message(kCpGatherMessage, Group::cp, MessageKind::all_gather, Pass::backward, mbc, gathered, layers));
  v.push_back(message(kCpReduceScatterMessage, Group::cp, MessageKind::reduce_scatter, Pass::backward, mbc, gathered,
                      layers));
  if (again > 0)
    v.push_back(message(kCpGatherMessage, Group::cp, MessageKind::all_gather, Pass::recompute, mbc, gathered, again));
}

}  // namespace

// TransformerEngine's AttnFuncWithCPAndKVP2P: forward, step i computes on the KV block it holds
// while sending it on and receiving the next (cp - 1 sends); backward passes K, V and the
// accumulated dK, dV the same way, and dK, dV take one more hop after the last block to reach
// the rank that owns K and V (cp hops in all; nothing computes beside that last one).
void cp_messages(std::vector<Message>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                 int64_t layers, int64_t recomputed) {
  if (p.cp <= 1 || layers <= 0) return;
  const int64_t kv = 2 * cp_kv_block_bytes(m, t, p), steps = (p.cp - 1) * layers;
  const int64_t again = p.recompute == Recompute::selective ? layers : recomputed;
  if (p.cp_comm == CpComm::all_gather) return cp_all_gather_messages(v, kv, p, layers, again);
  const auto send = MessageKind::send;
  const auto mbc = Cadence::micro_batch;
  v.push_back(message(kCpRingMessage, Group::cp, send, Pass::forward, mbc, kv, steps));
  v.push_back(message(kCpRingMessage, Group::cp, send, Pass::backward, mbc, 2 * kv, steps));
  v.push_back(message(kCpReturnMessage, Group::cp, send, Pass::backward, mbc, kv, layers));
  if (again > 0)  // full: the layer's forward again; selective: its attention
    v.push_back(message(kCpRingMessage, Group::cp, send, Pass::recompute, mbc, kv, (p.cp - 1) * again));
}

CpRingBytes cp_ring_bytes(int64_t cp, double q, double kv, double lse) {
  CpRingBytes worst;
  for (int64_t r = 0; r < cp; ++r) {
    CpRingBytes b;
    b.forward = 2 * kv + 2 * q + 4 * lse + static_cast<double>(r) * (3 * q + 5 * lse) +
                static_cast<double>(cp - 1 - r) * (1.5 * q + 2.5 * lse);
    b.backward = 2 * kv + (r == 0 ? 2.5 : 3.0) * (q + kv) + (r < cp - 1 ? lse : 0);
    for (int64_t k = 0; k < r; ++k) {  // half-KV steps, the first at j = cp - 1 - r
      const bool first = k == 0, j0 = first && r == cp - 1;
      b.backward += (first ? (r == cp - 1 ? 2 : 2.5) : 3) * q + (j0 ? 1 : 1.5) * kv;
    }
    for (int64_t j = 0; j < cp - 1 - r; ++j) b.backward += (j == 0 ? 1 : 1.5) * q + (j == 0 ? 2 : 3) * kv;  // half-Q
    worst.forward = std::max(worst.forward, b.forward);  // each pass waits for its own slowest rank
    worst.backward = std::max(worst.backward, b.backward);
  }
  return worst;
}

CpRingBytes cp_all_gather_bytes(int64_t cp, double q, double kv) {
  const double c = static_cast<double>(cp);
  return {2 * c * kv + 2 * q, (8 * c + 1.5) * kv + 2 * q};
}

void cp_attention_ops(std::vector<Op>& ops, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                      int64_t layers, int64_t recomputed) {
  if (p.cp <= 1 || layers <= 0) return;
  const double rows = static_cast<double>(p.micro_batch * (t.seq / p.cp)), e = static_cast<double>(dtype_bytes(t.dtype));
  const double q = rows * static_cast<double>(m.q_dim() / p.tp) * e;
  const double kv = 2 * static_cast<double>(cp_kv_block_bytes(m, t, p));
  const double lse = 4 * rows * static_cast<double>(m.heads / p.tp);
  const bool ring = p.cp_comm == CpComm::p2p;
  const CpRingBytes b = ring ? cp_ring_bytes(p.cp, q, kv, lse) : cp_all_gather_bytes(p.cp, q, kv);
  const char* name = ring ? "cp ring corrections" : "cp gather reorders";
  const int64_t fk = ring ? 2 * p.cp + 1 : 4, bk = ring ? 2 * p.cp + 1 : 12;  // kernels per layer
  const double fwd = b.forward / static_cast<double>(fk), bwd = b.backward / static_cast<double>(bk);
  ops.push_back(memory_op(name, MemKind::elementwise, Pass::forward, fwd, layers * fk));
  ops.push_back(memory_op(name, MemKind::elementwise, Pass::backward, bwd, layers * bk));
  const int64_t again = p.recompute == Recompute::selective ? layers : recomputed;
  if (again > 0) ops.push_back(memory_op(name, MemKind::elementwise, Pass::recompute, fwd, again * fk));
}

// stage_work's attention_core: one fused attention op per pass, of count layers x cp, one call
// per ring step; its forward kind runs in the forward and recompute passes.
const Op* cp_block_of(const StageWork& w, const Message& msg) {
  if (msg.group != Group::cp || std::strcmp(msg.name, kCpRingMessage) != 0) return nullptr;
  for (const Op& o : w.ops)
    if ((o.kind == OpKind::attention_fwd || o.kind == OpKind::attention_bwd) && o.pass == msg.pass) return &o;
  return nullptr;
}

void cp_buffers(std::vector<Buffer>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p) {
  if (p.cp <= 1) return;
  const int64_t block = cp_kv_block_bytes(m, t, p);
  if (p.cp_comm == CpComm::all_gather) {
    v.push_back({"cp kv all-gather", MemCategory::comm_buffers, Lifetime::transient, 4 * p.cp * block});
    return;
  }
  v.push_back({"cp kv ring", MemCategory::comm_buffers, Lifetime::transient, 8 * block});
}

CpRing cp_ring(const StageWork& w, const GroupLinks& cp, const OpTimer& op, bool overlap) {
  CpRing r;
  for (const Message& msg : w.messages) {
    if (msg.group != Group::cp || msg.pass == Pass::step) continue;
    CpRingPass& x = msg.pass == Pass::forward ? r.forward : msg.pass == Pass::backward ? r.backward : r.recompute;
    const double n = static_cast<double>(msg.count), hop_s = message_time_s(msg, cp);
    x.bytes += msg.count * message_send_bytes(msg, cp.size);
    const Op* block = overlap ? cp_block_of(w, msg) : nullptr;
    if (block == nullptr) {
      x.alone_s += n * hop_s;
      x.exposed_s += n * hop_s;
      continue;
    }
    const double block_s = op.op(*block);
    x.block_s += n * block_s;
    x.send_s += n * hop_s;
    x.exposed_s += n * std::max(0.0, hop_s - block_s);
  }
  return r;
}

void price_cp_ring(const StageWork& w, const GroupLinks& cp, const OpTimer& op, bool overlap, int64_t micro_batches,
                   StageEstimate& s) {
  const CpRing r = cp_ring(w, cp, op, overlap);
  s.cp_forward_s = r.forward.exposed_s;
  s.cp_comm_s = r.forward.exposed_s + r.backward.exposed_s + r.recompute.exposed_s;
  s.comm.cp = micro_batches * (r.forward.bytes + r.backward.bytes + r.recompute.bytes);
}

}  // namespace loom
