#include "sim/simulator.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/topological_sort.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "sim/collectives.hpp"
#include "sim/context_parallel.hpp"
#include "sim/moe.hpp"
#include "sim/offload.hpp"
#include "sim/shared_sweep.hpp"
#include "sim/stage_work.hpp"
#include "sim/op_timer.hpp"
#include "sim/tp_overlap.hpp"

namespace loom {

namespace {

using trace_names::Stream;

// The queues a rank's tasks are serialised on. Tensor-parallel collectives run on the compute
// queue (in-line in Megatron's layers) though the trace draws them on their own track; the cp
// ring's hops on their own (TransformerEngine sends them on a separate stream).
enum Queue { kCompute = 0, kDp = 1, kPp = 2, kGather = 3, kHost = 4, kCp = 5, kQueues = 6 };

class Builder {
 public:
  Builder(int64_t stages, bool overlap) : last_(stages, {-1, -1, -1, -1, -1, -1}), overlap_(overlap) {}
  int32_t add(const SimTask& t, Queue q) {
    const auto id = static_cast<int32_t>(tasks.size());
    tasks.push_back(t);
    int32_t& prev = last_[t.stage][overlap_ ? q : kCompute];
    if (prev >= 0) dep(prev, id);
    prev = id;
    return id;
  }
  void dep(int32_t from, int32_t to, double frac = 1) {
    if (from >= 0 && to >= 0) edges.push_back({from, to, frac});
  }
  int32_t last(int64_t stage, Queue q) const { return last_[stage][overlap_ ? q : kCompute]; }

  std::vector<SimTask> tasks;
  std::vector<SweepEdge> edges;

 private:
  std::vector<std::array<int32_t, kQueues>> last_;
  bool overlap_;
};

// Task ids of every slot, [stage][phase][chunk * m + micro-batch] (phases: forward,
// backward, weight).
struct SlotIndex {
  static constexpr int64_t kPhases = 3;
  int64_t m = 0, v = 0;
  std::vector<int32_t> first, recv;  // first task of the slot; the send that feeds it
  SlotIndex(int64_t pp, int64_t vpp, int64_t mb)
      : m(mb), v(vpp), first(pp * kPhases * vpp * mb, -1), recv(pp * kPhases * vpp * mb, -1) {}
  size_t at(int64_t s, Phase ph, int64_t c, int64_t b) const {
    return static_cast<size_t>(((s * kPhases + static_cast<int64_t>(ph)) * v + c) * m + b);
  }
};

SimTask make_task(TaskKind k, Stream st, int64_t stage, const Slot& x, double dur) {
  SimTask t;
  t.kind = k;
  t.stream = st;
  t.phase = x.phase;
  t.stage = static_cast<int32_t>(stage);
  t.micro_batch = x.micro_batch;
  t.chunk = x.chunk;
  t.dur_s = dur;
  return t;
}

// What one stage's slots share: its inputs' per-chunk durations and sizes.
struct StagePlan {
  double v = 1;
  bool ring = false, zero3 = false;
  GroupLinks dpl;
  double chunk_grad = 0, chunk_weights = 0;
  int64_t grad_buckets = 1, chunk_layers = 0;  // the stage's buckets over all chunks (chunk_buckets_of)
  Collective grad_coll = Collective::all_reduce;
  // ZeRO-3 per tensor (Zero3Gather::tensor): collectives per layer, and whether a gather waits
  // for everything queued before it (DeepSpeed's torch.cuda.synchronize()).
  int64_t tensors_per_layer = 1;
  bool blocking = false;
  // The backward's second gathers after its recompute (StageInputs::regather_bytes), per chunk.
  double chunk_regather = 0;
  int64_t regather_tensors_per_layer = 0;
};

StagePlan stage_plan(const SimInputs& in, int64_t s) {
  const ParallelConfig& p = in.parallel;
  const StageInputs& st = in.stages[s];
  StagePlan sp;
  sp.v = static_cast<double>(p.vpp);
  sp.ring = dp_cp(p) > 1 && p.dp_comm == DpComm::ring;  // over dp x cp (context_parallel.hpp)
  sp.zero3 = sp.ring && p.zero >= 3;
  sp.dpl = in.dp_links;
  sp.dpl.busbw_bytes_per_s = st.dp_busbw_bytes_per_s;
  sp.chunk_grad = static_cast<double>(st.grad_bytes) / sp.v;
  sp.chunk_weights = static_cast<double>(st.weight_bytes) / sp.v;
  sp.grad_buckets = st.grad_buckets;
  sp.grad_coll = p.zero == 0 ? Collective::all_reduce : Collective::reduce_scatter;
  sp.chunk_layers = (st.layers + p.vpp - 1) / p.vpp;  // the most a chunk holds (chunk_layer_count)
  sp.blocking = sp.zero3 && p.zero3_gather == Zero3Gather::tensor;
  if (sp.blocking && st.layers > 0) sp.tensors_per_layer = std::max<int64_t>(1, st.grad_buckets / st.layers);
  if (sp.blocking && st.layers > 0 && st.regather_tensors > 0) {
    sp.chunk_regather = static_cast<double>(st.regather_bytes) / sp.v;
    sp.regather_tensors_per_layer = st.regather_tensors / st.layers;
  }
  return sp;
}

// One compute pass of one slot: ZeRO-3 runs layer by layer (FSDP wraps each layer): before
// each layer its weights are gathered on the gather stream, prefetched one layer ahead (the
// gather of layer l starts when layer l-1 starts computing), and in backward each layer's
// gradients are reduce-scattered as soon as that layer is done. A backward with recompute
// rebuilds each piece's activations right before that piece's backward, under the same
// gather (FSDP's pre-backward hook gathers the layer, then the checkpointed forward reruns
// inside it; without ZeRO-3 the chunk is one piece). The pass's tensor-parallel collectives
// follow each piece on the compute queue. zb-h1 splits the backward: its B pass gathers and
// computes input gradients, its W pass (weight gradients, which read no weights) gathers
// nothing and is what each layer's reduce-scatter follows. Returns the first task, the last
// compute task and the task its output leaves after.
struct PassTasks {
  int32_t first = -1, compute = -1, end = -1;
};
// One layer's ZeRO-3 collective of `bytes` over `tensors` rings (one, or one per parameter tensor).
double zero3_piece_s(const StagePlan& sp, Collective c, double bytes, int64_t tensors) {
  const double k = static_cast<double>(tensors);
  return k * collective_time_s(c, bytes / k, sp.dpl);
}
double zero3_piece_s(const StagePlan& sp, Collective c, double bytes) {
  return zero3_piece_s(sp, c, bytes, sp.tensors_per_layer);
}
struct PassTimes {
  TaskKind kind = TaskKind::forward;
  double compute_s = 0, tp_s = 0;                      // per slot (one chunk)
  double recompute_s = 0, tp_recompute_s = 0;          // backward only
  bool makes_grads = false;                            // the pass that yields weight gradients
  double ep_s = 0, ep_recompute_s = 0;                 // MoE all-to-alls and expert tp, in-line
  CpPassInputs cp, cp_recompute;                       // the KV ring (context parallelism)
};

// One piece's KV ring (sim/context_parallel.hpp): its attention blocks on the compute queue
// with their hops beside them on the cp queue, starting together (the ring step lasts the
// longer of its block and its hop; the blocks being equal, the sums show the same), then the
// hops nothing hides, in-line; the pass's other compute follows both. Returns the blocks' task.
// CpComm::all_gather has no hops beside blocks: its collectives are all in-line, and the bytes
// go with them.
int32_t add_cp_ring(Builder& b, int64_t s, const Slot& x, TaskKind k, const CpPassInputs& cp, double n, int32_t after) {
  const int32_t blocks = b.add(make_task(k, Stream::compute, s, x, cp.block_s / n), kCompute);
  b.dep(after, blocks);
  const int64_t bytes = static_cast<int64_t>(static_cast<double>(cp.bytes) / n);
  SimTask hops = make_task(TaskKind::cp, Stream::tp, s, x, cp.send_s / n);
  hops.bytes = cp.send_s > 0 ? bytes : 0;
  const int32_t sent = b.add(hops, kCp);
  b.dep(blocks, sent, 0.0);
  SimTask in_line = make_task(TaskKind::cp, Stream::tp, s, x, cp.alone_s / n);
  in_line.bytes = cp.send_s > 0 ? 0 : bytes;
  const int32_t alone = b.add(in_line, kCompute);
  b.dep(sent, alone);
  return blocks;
}
PassTasks add_pass(Builder& b, const StagePlan& sp, const ParallelConfig& p, int64_t s, const Slot& x,
                   const PassTimes& pt, int32_t& prev_first) {
  PassTasks out;
  const int64_t pieces = sp.zero3 ? std::max<int64_t>(1, sp.chunk_layers) : 1;
  const double n = static_cast<double>(pieces);
  // The piece's compute (its KV ring first, when cp > 1) and in-line collectives: {first, main}.
  auto compute = [&](TaskKind k, double dur, double tp_dur, double ep_dur, const CpPassInputs& cp, int32_t after) {
    const bool ring = cp.send_s + cp.alone_s > 0;
    const int32_t first = ring ? add_cp_ring(b, s, x, k, cp, n, after) : -1;
    SimTask t = make_task(k, Stream::compute, s, x, (dur - (ring ? cp.block_s : 0)) / n);
    t.layers = sp.chunk_layers / pieces;
    const int32_t id = b.add(t, kCompute);
    b.dep(after, id);
    if (tp_dur > 0) b.add(make_task(TaskKind::tp, Stream::tp, s, x, tp_dur / n), kCompute);
    if (ep_dur > 0) b.add(make_task(TaskKind::ep, Stream::tp, s, x, ep_dur / n), kCompute);
    return std::array<int32_t, 2>{ring ? first : id, id};
  };
  const bool gathers = sp.zero3 && pt.kind != TaskKind::weight;
  for (int64_t l = 0; l < pieces; ++l) {
    int32_t gather = -1;
    if (gathers) {
      SimTask g = make_task(TaskKind::dp_gather, Stream::dp_gather, s, x, zero3_piece_s(sp, Collective::all_gather, sp.chunk_weights / n));
      g.bytes = static_cast<int64_t>(sp.chunk_weights / n);
      const int32_t before = b.last(s, kCompute), reduced = b.last(s, kDp);
      gather = b.add(g, kGather);
      if (sp.blocking) {  // issued once the GPU is idle: after the compute and reductions before it
        b.dep(before, gather);
        b.dep(reduced, gather);
      } else {
        b.dep(prev_first, gather, 0.0);
      }
    }
    int32_t piece_first = -1, before_main = gather;
    if (pt.recompute_s > 0) {
      const auto rec = compute(TaskKind::recompute, pt.recompute_s, pt.tp_recompute_s, pt.ep_recompute_s,
                               pt.cp_recompute, gather);
      piece_first = rec[0];
      if (gathers && sp.chunk_regather > 0) {  // DeepSpeed 0.3: what the recompute released, again
        const double bytes = sp.chunk_regather / n;
        SimTask g = make_task(TaskKind::dp_gather, Stream::dp_gather, s, x,
                              zero3_piece_s(sp, Collective::all_gather, bytes, sp.regather_tensors_per_layer));
        g.bytes = static_cast<int64_t>(bytes);
        const int32_t computed = b.last(s, kCompute), reduced = b.last(s, kDp);
        before_main = b.add(g, kGather);
        b.dep(computed, before_main);
        b.dep(reduced, before_main);
      }
    }
    const auto [first, main] = compute(pt.kind, pt.compute_s, pt.tp_s, pt.ep_s, pt.cp, before_main);
    out.compute = main;
    if (piece_first < 0) piece_first = first;
    if (out.first < 0) out.first = piece_first;
    if (gathers) prev_first = piece_first;
    out.end = b.last(s, kCompute);
    if (sp.zero3 && pt.makes_grads) {
      SimTask r = make_task(TaskKind::dp_grad, Stream::dp, s, x, zero3_piece_s(sp, sp.grad_coll, sp.chunk_grad / n));
      r.bucket = static_cast<int32_t>((p.vpp - 1 - x.chunk) * pieces + l);
      r.bytes = static_cast<int64_t>(sp.chunk_grad / n);
      b.dep(out.compute, b.add(r, kDp));
    }
  }
  return out;
}

// Gradient buckets fill as the backward walks its layers: bucket k of n is ready at (k + 1) / n
// of the backward. ZeRO 0/1 reduce once, in the last micro-batch; 2 reduce-scatters every
// micro-batch (only a shard of the gradients is kept). With the reduction after the backward
// (ParallelConfig::overlap_grad_reduce off) ZeRO-2's buckets block the compute stream, as
// DeepSpeed without overlap_comm runs them; ZeRO 0/1 reduce at the step's end (add_step_end).
// Chunk `chunk` runs its reduction as chunk_buckets_of(...) equal buckets (Megatron-core's rule
// makes the first stage's first chunk the only one of several); they are numbered from the
// last chunk's, the first reduced, up.
SimTask grad_bucket(const StagePlan& sp, const ParallelConfig& p, int64_t s, const Slot& x, int64_t chunk, int64_t k) {
  const double bytes = sp.chunk_grad / static_cast<double>(chunk_buckets_of(p, sp.grad_buckets, chunk));
  SimTask t = make_task(TaskKind::dp_grad, Stream::dp, s, x, collective_time_s(sp.grad_coll, bytes, sp.dpl));
  int64_t before = 0;
  for (int64_t c = p.vpp - 1; c > chunk; --c) before += chunk_buckets_of(p, sp.grad_buckets, c);
  t.bucket = static_cast<int32_t>(before + k);
  t.bytes = static_cast<int64_t>(bytes);
  return t;
}
void add_buckets(Builder& b, const StagePlan& sp, const ParallelConfig& p, int64_t s, const Slot& x,
                 const PassTasks& pass) {
  const int64_t n = chunk_buckets_of(p, sp.grad_buckets, x.chunk);
  for (int64_t k = 0; k < n; ++k) {
    const int32_t id = b.add(grad_bucket(sp, p, s, x, x.chunk, k), p.overlap_grad_reduce ? kDp : kCompute);
    // The last bucket holds the chunk's first layers (the embedding's on the first stage), whose
    // gradients come after every in-line tensor-parallel collective of the pass: it waits for
    // the whole pass, as the cost model's exposed last bucket does (dp_exposed_s).
    if (k + 1 == n) b.dep(pass.end, id);
    else b.dep(pass.compute, id, static_cast<double>(k + 1) / static_cast<double>(n));
  }
}
// ZeRO 0/1 with the reduction after the backward: every chunk's buckets once the stage's last
// compute is done (Megatron-core's finalize_model_grads without --overlap-grad-reduce), on the
// dp queue, which the optimizer waits for.
void add_grads_after_backward(Builder& b, const StagePlan& sp, const ParallelConfig& p, int64_t s) {
  if (!sp.ring || sp.zero3 || p.zero >= 2 || p.overlap_grad_reduce) return;
  const int32_t last_compute = b.last(s, kCompute);
  for (int64_t c = p.vpp - 1; c >= 0; --c)
    for (int64_t k = 0; k < chunk_buckets_of(p, sp.grad_buckets, c); ++k)
      b.dep(last_compute, b.add(grad_bucket(sp, p, s, Slot{-1, static_cast<int32_t>(c), Phase::backward}, c, k), kDp));
}

// Offload with the optimizer on the CPU (ZeRO-Offload): once every gradient, send and copy of
// the step is done, the gradient shard goes out over the host link, the CPU runs AdamW (the
// GPU waits: its next forward needs the weights), the updated weights come back. Returns the
// task after which the weights are on the GPU.
int32_t add_cpu_optimizer(Builder& b, const StageInputs& st, int64_t s, std::array<int32_t, 3> after) {
  auto copy = [&](bool out, double dur, int64_t bytes) {
    SimTask t = make_task(TaskKind::host_copy, Stream::host, s, Slot{-1, -1, out ? Phase::backward : Phase::forward}, dur);
    t.bytes = bytes;
    return b.add(t, kHost);
  };
  int32_t prev = b.last(s, kCompute);
  if (st.host_step_out_bytes > 0) {  // the reduced gradients: after the last bucket and send
    const int32_t id = copy(true, st.host_step_out_s, st.host_step_out_bytes);
    b.dep(prev, id);
    for (int32_t a : after) b.dep(a, id);
    prev = id;
  }
  const int32_t o = b.add(make_task(TaskKind::host_optimizer, Stream::compute, s, Slot{-1, -1, Phase::forward},
                                    st.optimizer_s), kCompute);
  b.dep(prev, o);
  for (int32_t a : after) b.dep(a, o);
  if (st.host_step_in_bytes <= 0) return o;
  const int32_t in = copy(false, st.host_step_in_s, st.host_step_in_bytes);
  b.dep(o, in);
  return in;
}

// After the last slot: SP's all-reduce of replicated gradients (compute queue, as Megatron's
// finalize_model_grads), the parameter server's push and pull, the optimizer once every
// gradient and send is done, and ZeRO-1/2's gather of the updated shards.
void add_step_end(Builder& b, const SimInputs& in, const StagePlan& sp, int64_t s) {
  const ParallelConfig& p = in.parallel;
  const StageInputs& st = in.stages[s];
  const Slot none{-1, -1, Phase::backward};
  if (st.tp_grad_sync_s > 0) b.add(make_task(TaskKind::tp, Stream::tp, s, none, st.tp_grad_sync_s), kCompute);
  add_grads_after_backward(b, sp, p, s);
  const int32_t last_compute = b.last(s, kCompute);
  if (st.edp_step_s > 0)  // MoE: expert gradients over edp once the last backward is done
    b.dep(last_compute, b.add(make_task(TaskKind::edp_grad, Stream::dp, s, none, st.edp_step_s), kDp));
  if (p.dp > 1 && p.dp_comm == DpComm::parameter_server) {
    SimTask t = make_task(TaskKind::dp_push_pull, Stream::dp, s, none, st.dp_push_pull_s);
    t.bytes = st.grad_bytes;
    b.dep(last_compute, b.add(t, kDp));
  }
  const int32_t dp_last = b.last(s, kDp), pp_last = b.last(s, kPp), host_last = b.last(s, kHost);
  const int32_t o = st.cpu_optimizer ? add_cpu_optimizer(b, st, s, {dp_last, pp_last, host_last}) : [&] {
    SimTask opt = make_task(TaskKind::optimizer, Stream::compute, s, Slot{-1, -1, Phase::forward}, st.optimizer_s);
    const int32_t id = b.add(opt, kCompute);
    b.dep(dp_last, id);
    b.dep(pp_last, id);
    b.dep(host_last, id);  // offload's last copies
    return id;
  }();
  if (sp.ring && (p.zero == 1 || p.zero == 2) && !p.overlap_param_gather) {  // updated shards back to every rank
    SimTask t = make_task(TaskKind::dp_gather_params, Stream::dp, s, Slot{-1, -1, Phase::forward},
                          collective_time_s(Collective::all_gather, static_cast<double>(st.weight_bytes), sp.dpl));
    t.bytes = st.weight_bytes;
    b.dep(o, b.add(t, kDp));
  }
}

// One chunk's share of a pass's KV ring.
CpPassInputs per_chunk(const CpPassInputs& c, double v) {
  return {c.block_s / v, c.send_s / v, c.alone_s / v, static_cast<int64_t>(static_cast<double>(c.bytes) / v)};
}

// One slot's pass. A recompute runs inside the backward (Megatron recomputes when autograd
// reaches the layer), so the slot, recompute included, waits for its gradient. zb-h1 splits
// the backward's weight-gradient GEMMs off into the weight slot; the backward keeps the rest,
// its recompute and its tp collectives (all on the input-gradient path).
PassTimes pass_times(const StageInputs& st, double v, Phase ph, bool split) {
  switch (ph) {
    case Phase::forward:
      return {TaskKind::forward, st.forward_s / v, st.tp_forward_s / v, 0, 0, false, st.ep_forward_s / v, 0,
              per_chunk(st.cp_forward, v), {}};
    case Phase::weight: return {TaskKind::weight, st.weight_grad_s / v, 0, 0, 0, true, 0, 0, {}, {}};
    case Phase::backward: break;
  }
  const double compute_s = split ? st.backward_s - st.weight_grad_s : st.backward_s;
  return {TaskKind::backward, compute_s / v,          st.tp_backward_s / v, st.recompute_s / v, st.tp_recompute_s / v,
          !split,             st.ep_backward_s / v, st.ep_recompute_s / v, per_chunk(st.cp_backward, v),
          per_chunk(st.cp_recompute, v)};
}

// Offload's copies of one slot (sim/offload.hpp) on the host-link queue: its first layer's
// copy before the slot's compute (exposed: the first fetch, or the last write-back), the other
// layers' beside it from when it starts; the next slot starts when they are done.
struct HostCopies {
  double rest_s = 0;
  int64_t rest_bytes = 0;
  int32_t first = -1, pending = -1;
  void before(Builder& b, const StageInputs& st, int64_t s, const Slot& x, double v) {
    const bool fwd = x.phase == Phase::forward;
    const double copy_s = (fwd ? st.host_forward_s : x.phase == Phase::backward ? st.host_backward_s : 0) / v;
    const int64_t bytes = static_cast<int64_t>(
        static_cast<double>(fwd ? st.host_forward_bytes : st.host_backward_bytes) / v);
    first = -1;
    if (copy_s <= 0) return;
    const double layers = std::max(1.0, static_cast<double>(st.host_pieces) / v);
    SimTask t = make_task(TaskKind::host_copy, Stream::host, s, x, copy_s / layers);
    t.bytes = static_cast<int64_t>(static_cast<double>(bytes) / layers);
    rest_s = copy_s - t.dur_s;
    rest_bytes = bytes - t.bytes;
    const int32_t after = b.last(s, kCompute);
    first = b.add(t, kHost);
    b.dep(after, first);
  }
  void after(Builder& b, int64_t s, const Slot& x, int32_t slot_first) {
    b.dep(pending, slot_first);
    pending = -1;
    if (first < 0) return;
    b.dep(first, slot_first);
    SimTask t = make_task(TaskKind::host_copy, Stream::host, s, x, rest_s);
    t.bytes = rest_bytes;
    pending = b.add(t, kHost);
    b.dep(slot_first, pending, 0.0);
  }
};

// ZeRO 1/2 with --overlap-param-gather (sim/specs.hpp): the updated weights' all-gather at the
// step's start, on the dp queue, and the stage's first forward starts once max(G / n,
// G - F (n - 1) / n) of it has run (F: that forward's compute, n the buckets): the cost model's
// param_gather_exposed_s, the last buckets landing as the layers before them compute.
struct ParamGatherAhead {
  int32_t task = -1;
  double frac = 1;
};
ParamGatherAhead param_gather_ahead(Builder& b, const SimInputs& in, const StagePlan& sp, int64_t s) {
  const ParallelConfig& p = in.parallel;
  const StageInputs& st = in.stages[s];
  if (!p.overlap_param_gather || !sp.ring || (p.zero != 1 && p.zero != 2)) return {};
  const double g = collective_time_s(Collective::all_gather, static_cast<double>(st.weight_bytes), sp.dpl);
  if (g <= 0) return {};
  SimTask t = make_task(TaskKind::dp_gather_params, Stream::dp, s, Slot{-1, -1, Phase::forward}, g);
  t.bytes = st.weight_bytes;
  const double n = std::max<double>(1, static_cast<double>(st.grad_buckets)), f = st.forward_s / sp.v;
  return {b.add(t, kDp), std::max(1 / n, 1 - f * (n - 1) / (n * g))};
}

// One stage's tasks in the order of its schedule table.
void build_stage(Builder& b, SlotIndex& idx, const SimInputs& in, int64_t s, const std::vector<Slot>& table) {
  const ParallelConfig& p = in.parallel;
  const StageInputs& st = in.stages[s];
  const StagePlan sp = stage_plan(in, s);
  const int64_t m = in.micro_batches;
  int32_t prev_first = -1;
  HostCopies host;
  ParamGatherAhead ahead = param_gather_ahead(b, in, sp, s);
  for (const Slot& x : table) {
    const PassTimes pt = pass_times(st, sp.v, x.phase, splits_backward(p.schedule));
    host.before(b, st, s, x, sp.v);
    const PassTasks t = add_pass(b, sp, p, s, x, pt, prev_first);
    host.after(b, s, x, t.first);
    const int32_t slot_first = t.first;
    if (ahead.task >= 0) b.dep(ahead.task, slot_first, ahead.frac), ahead.task = -1;  // the first slot only
    idx.first[idx.at(s, x.phase, x.chunk, x.micro_batch)] = slot_first;
    const auto [ds, dc] = slot_destination(p.schedule, s, x.chunk, x.phase, p.pp, p.vpp);
    if (ds == s) {  // zb-v's turn of the V: the rank keeps the tensor for its other chunk
      idx.recv[idx.at(ds, x.phase, dc, x.micro_batch)] = t.end;
    } else if (ds >= 0) {
      SimTask send = make_task(TaskKind::pp_send, Stream::pp, s, x, st.p2p_s);
      send.peer_stage = ds;
      send.bytes = st.p2p_bytes;
      const int32_t id = b.add(send, p.pp_overlapped() ? kPp : kCompute);  // off: the send blocks its sender
      b.dep(t.end, id);
      idx.recv[idx.at(ds, x.phase, dc, x.micro_batch)] = id;
    }
    if (pt.makes_grads && sp.ring && !sp.zero3 && (p.zero >= 2 || (x.micro_batch == m - 1 && p.overlap_grad_reduce)))
      add_buckets(b, sp, p, s, x, t);
    if (!sp.zero3) prev_first = slot_first;
  }
  add_step_end(b, in, sp, s);
}

bool is_dp(TaskKind k) {
  return k == TaskKind::dp_grad || k == TaskKind::dp_gather || k == TaskKind::dp_gather_params ||
         k == TaskKind::dp_push_pull || k == TaskKind::edp_grad;
}
bool is_busy(TaskKind k) {
  return k == TaskKind::forward || k == TaskKind::backward || k == TaskKind::recompute || k == TaskKind::weight ||
         k == TaskKind::optimizer || k == TaskKind::tp || k == TaskKind::host_optimizer || k == TaskKind::ep;
}

using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS, boost::no_property, double>;

// start = max over predecessors of (start + frac * dur), in topological order.
void sweep(const Graph& g, const std::vector<size_t>& order, std::vector<SimTask>& tasks) {
  std::vector<double> ready(tasks.size(), 0.0);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const size_t u = *it;
    tasks[u].start_s = ready[u];
    for (auto [e, end] = boost::out_edges(u, g); e != end; ++e) {
      const size_t w = boost::target(*e, g);
      ready[w] = std::max(ready[w], tasks[u].start_s + g[*e] * tasks[u].dur_s);
    }
  }
}

// Who shares the NICs (sim/shared_sweep.hpp): every stage's dp rings at the bandwidth they
// were priced at, its tp collectives where both its tp and dp groups leave the node, and the
// nodes whose NICs carry dp rings of two or more stages (one pattern per distinct column).
NicSharing nic_sharing(const SimInputs& in) {
  NicSharing ns;
  const size_t pp = in.stages.size();
  for (size_t s = 0; s < pp; ++s) {
    ns.solo_bytes_per_s.push_back(in.stages[s].dp_busbw_bytes_per_s);
    const bool dp_leaves = s < in.rings_leaving.size() &&
                           std::any_of(in.rings_leaving[s].begin(), in.rings_leaving[s].end(), [](int32_t k) { return k > 0; });
    ns.tp_shares_nic.push_back(dp_leaves && in.tp_leaves_node ? 1 : 0);
  }
  ns.nic_bytes_per_s = in.nic_bytes_per_s;
  if (in.rings_leaving.empty() || in.nic_bytes_per_s <= 0) return ns;
  std::vector<std::vector<int32_t>> cols;
  for (size_t node = 0; node < in.rings_leaving[0].size(); ++node) {
    std::vector<int32_t> col(pp, 0);
    int users = 0;
    for (size_t s = 0; s < pp; ++s) users += (col[s] = in.rings_leaving[s][node]) > 0;
    if (users >= 2) cols.push_back(std::move(col));
  }
  std::sort(cols.begin(), cols.end());
  cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
  ns.node_patterns = std::move(cols);
  return ns;
}

// One stage's breakdown: busy time by kind; idle time of the compute stream is exposed cp
// communication while a KV-ring hop of this stage runs (the pass waits for it), else exposed
// dp communication while a dp task of this stage runs, else exposed pp communication while a
// send from or to it is in flight, else bubble.
StageSim stage_breakdown(int64_t s, const std::vector<SimTask>& tasks, const std::vector<int32_t>& mine,
                         double makespan, int64_t chunk_layers) {
  StageSim out;
  out.stage = s;
  struct Mark {
    double t;
    int kind;  // 0 busy, 1 dp, 2 pp, 3 host, 4 cp
    int delta;
  };
  std::vector<Mark> marks;
  int64_t in_flight = 0;
  const bool split = std::any_of(mine.begin(), mine.end(), [&](int32_t i) { return tasks[i].kind == TaskKind::weight; });
  for (int32_t i : mine) {
    const SimTask& t = tasks[i];
    out.end_s = std::max(out.end_s, t.end_s());
    if (t.stage == s) {
      switch (t.kind) {
        // Counted in layers (ZeRO-3 runs a chunk layer by layer), reported in chunks.
        case TaskKind::forward:
          out.time.compute_s += t.dur_s;
          in_flight += t.layers;  // its activations are kept
          out.peak_in_flight = std::max(out.peak_in_flight, (in_flight + chunk_layers - 1) / chunk_layers);
          break;
        case TaskKind::backward:
        case TaskKind::weight:  // zb-h1: the stash is freed by W (schedule.hpp), not by B
          out.time.compute_s += t.dur_s;
          if ((t.kind == TaskKind::weight) == split) in_flight -= t.layers;  // and freed
          break;
        case TaskKind::recompute: out.time.compute_s += t.dur_s; break;
        case TaskKind::tp: out.time.tp_comm_s += t.dur_s; break;
        case TaskKind::ep: out.time.ep_comm_s += t.dur_s; break;
        case TaskKind::optimizer:
        case TaskKind::host_optimizer: out.time.optimizer_s += t.dur_s; break;
        default: break;
      }
    }
    if (t.dur_s <= 0) continue;
    const int kind = is_busy(t.kind)                ? 0
                     : is_dp(t.kind)                ? 1
                     : t.kind == TaskKind::host_copy ? 3
                     : t.kind == TaskKind::cp       ? 4
                                                    : 2;
    if ((kind == 1 || kind == 3 || kind == 4) && t.stage != s) continue;
    marks.push_back({t.start_s, kind, +1});
    marks.push_back({t.end_s(), kind, -1});
  }
  marks.push_back({makespan, 0, 0});
  std::sort(marks.begin(), marks.end(), [](const Mark& a, const Mark& b) { return a.t < b.t; });
  int count[5] = {0, 0, 0, 0, 0};
  double prev = 0;
  for (const Mark& mk : marks) {
    const double len = mk.t - prev;
    if (len > 0 && count[0] == 0) {
      if (count[4] > 0) out.time.cp_comm_s += len;
      else if (count[1] > 0) out.time.dp_comm_s += len;
      else if (count[3] > 0) out.time.host_comm_s += len;
      else if (count[2] > 0) out.time.pp_comm_s += len;
      else out.time.bubble_s += len;
    }
    count[mk.kind] += mk.delta;
    prev = mk.t;
  }
  return out;
}

}  // namespace

Expected<SimResult> simulate(const SimInputs& in, const SimOptions& opt) {
  const ParallelConfig& p = in.parallel;
  const int64_t m = in.micro_batches;
  if (m < 1) return make_error("simulate", "needs at least one micro-batch");
  if (static_cast<int64_t>(in.stages.size()) != p.pp) return make_error("simulate", "needs one input per stage");
  // Checked before anything is allocated: the count grows with micro-batches x chunks x layers.
  if (const double tasks = sim_task_count(in); tasks > static_cast<double>(kMaxSimTasks)) {
    char about[32];
    std::snprintf(about, sizeof about, "%.3g", tasks);
    return make_error("simulate", "this step has " + std::to_string(m) + " micro-batches per replica and about " +
                                      about + " tasks, over the limit of " + std::to_string(kMaxSimTasks) +
                                      ": use a larger micro-batch or dp, or a smaller global batch");
  }
  const auto tables = make_schedule(p.schedule, p.pp, p.vpp, m);

  Builder b(p.pp, opt.overlap);
  SlotIndex idx(p.pp, p.vpp, m);
  for (int64_t s = 0; s < p.pp; ++s) build_stage(b, idx, in, s, tables[s]);
  for (size_t i = 0; i < idx.first.size(); ++i) b.dep(idx.recv[i], idx.first[i]);  // receive before use

  SimResult r;
  const NicSharing sharing = nic_sharing(in);
  if (opt.contention && dp_cp(p) > 1 && (p.zero >= 3 || sharing.any())) {
    // Durations of sharing tasks depend on what runs beside them: played as events (which
    // also finds a cycle: tasks that never become ready).
    auto added = sweep_shared(b.tasks, b.edges, sharing);
    if (!added) return added.error();
    r.contention_s = *added;
  } else {
    Graph g(b.tasks.size());
    for (const SweepEdge& e : b.edges) boost::add_edge(e.from, e.to, e.frac, g);
    std::vector<size_t> order;
    order.reserve(b.tasks.size());
    try {
      boost::topological_sort(g, std::back_inserter(order));
    } catch (const boost::not_a_dag&) {
      return make_error("simulate", "the schedule deadlocks (the task graph has a cycle)");
    }
    sweep(g, order, b.tasks);
  }

  for (const SimTask& t : b.tasks) r.step_time_s = std::max(r.step_time_s, t.end_s());
  r.task_count = static_cast<int64_t>(b.tasks.size());
  r.edge_count = static_cast<int64_t>(b.edges.size());

  std::vector<std::vector<int32_t>> mine(p.pp);  // a stage's tasks and the sends into it
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    mine[b.tasks[i].stage].push_back(static_cast<int32_t>(i));
    if (b.tasks[i].kind == TaskKind::pp_send) mine[b.tasks[i].peer_stage].push_back(static_cast<int32_t>(i));
  }
  size_t slow = 0;
  for (int64_t s = 0; s < p.pp; ++s) {
    r.stages.push_back(stage_breakdown(s, b.tasks, mine[s], r.step_time_s,
                                       std::max<int64_t>(1, in.stages[s].layers / in.parallel.vpp)));
    const auto busy = [](const StageSim& x) { return x.time.compute_s + x.time.tp_comm_s + x.time.ep_comm_s; };
    if (busy(r.stages.back()) > busy(r.stages[slow])) slow = static_cast<size_t>(s);
  }
  r.time = r.stages[slow].time;
  for (const StageSim& st : r.stages) r.time.optimizer_s = std::max(r.time.optimizer_s, st.time.optimizer_s);
  r.time.bubble_s = 0;
  r.time.bubble_s = std::max(0.0, r.step_time_s - r.time.total_s());
  if (opt.keep_tasks) r.tasks = std::move(b.tasks);
  return r;
}

namespace {

// The dp rings of each stage: edges leaving each node (rank r on GPU r, ring in dp order; with
// context parallelism the dp-cp group's, over the grid with cp folded into dp).
void dp_rings(const ClusterSpec& c, const ParallelConfig& p, SimInputs& in) {
  auto cp_grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  const auto grid = cp_grid ? dp_cp_grid(*cp_grid) : cp_grid;
  const int64_t dp = dp_cp(p);
  const int64_t nodes = std::max<int64_t>(1, c.nodes), per_node = std::max<int64_t>(1, c.gpus_per_node);
  in.rings_leaving.assign(p.pp, std::vector<int32_t>(nodes, 0));
  in.nic_bytes_per_s = c.inter_node.busbw_bytes_per_s * static_cast<double>(c.inter_node.nics_per_node);
  in.intra_bytes_per_s = c.intra_node.busbw_bytes_per_s;
  if (!grid.ok() || dp <= 1) return;
  for (int64_t r = 0; r < grid->world(); ++r) {
    Coords co = grid->coords(r);
    co.dp = (co.dp + 1) % dp;
    const int64_t next = grid->rank(co);
    if (r / per_node != next / per_node && r / per_node < nodes) ++in.rings_leaving[co.pp][r / per_node];
  }
}

// The stage's messages, priced on their links: tensor-parallel time by pass, the step's
// gradient all-reduce of replicated parameters, pipeline sends, and the data-parallel
// gradient and weight sizes with the buckets the reduction runs as.
void read_messages(const StageWork& w, const GroupLinksSet& links, StageInputs& si) {
  for (const Message& msg : w.messages) {
    if (is_moe_message(msg)) {  // expert groups (sim/moe.hpp): in-line by pass, or per step
      const double t = static_cast<double>(msg.count) * moe_message_time_s(msg, links);
      if (msg.group == Group::edp) si.edp_step_s += t;
      else if (msg.pass == Pass::forward) si.ep_forward_s += t;
      else if (msg.pass == Pass::backward) si.ep_backward_s += t;
      else si.ep_recompute_s += t;
      continue;
    }
    if (msg.group == Group::tp) {
      const double t = static_cast<double>(msg.count) * message_time_s(msg, links.tp);
      if (msg.cadence == Cadence::step) si.tp_grad_sync_s += t;
      else if (msg.pass == Pass::forward) si.tp_forward_s += t;
      else if (msg.pass == Pass::backward) si.tp_backward_s += t;
      else si.tp_recompute_s += t;
    }
    if (msg.group == Group::pp) {
      si.p2p_bytes = msg.bytes;
      si.p2p_s = message_time_s(msg, links.pp);
    }
    if (msg.group != Group::dp || msg.ranks > 0) continue;
    if (std::strcmp(msg.name, kZero3RegatherMessage) == 0) {
      si.regather_bytes = msg.bytes, si.regather_tensors = msg.pieces;
      continue;
    }
    if (msg.kind == MessageKind::all_gather) si.weight_bytes = msg.bytes;
    if (msg.kind == MessageKind::send || msg.kind == MessageKind::reduce_scatter || msg.kind == MessageKind::all_reduce) {
      si.grad_bytes = msg.bytes;
      si.grad_buckets = msg.pieces;
    }
  }
}

// The KV ring by pass, priced as the cost model prices it (sim/context_parallel.hpp's cp_ring,
// overlapped: SimOptions::overlap false serialises the hops behind the blocks instead).
void read_cp(const StageWork& w, const GroupLinks& cp, const OpTimer& op, StageInputs& si) {
  const CpRing r = cp_ring(w, cp, op, /*overlap=*/true);
  auto in = [](const CpRingPass& x) { return CpPassInputs{x.block_s, x.send_s, x.alone_s, x.bytes}; };
  si.cp_forward = in(r.forward), si.cp_backward = in(r.backward), si.cp_recompute = in(r.recompute);
}

// Offload's host-link copies, priced (sim/offload.hpp), and whether the CPU runs the optimizer.
void read_offload(const StageWork& w, const HostSpec& h, int64_t micro_batches, StageInputs& si) {
  const HostLinkTimes t = host_link_times(w, h, micro_batches);
  si.host_forward_s = t.forward_s;
  si.host_backward_s = t.backward_s;
  si.host_forward_bytes = t.forward_bytes;
  si.host_backward_bytes = t.backward_bytes;
  si.host_pieces = t.layers;
  si.host_step_out_s = t.step_out_s;
  si.host_step_in_s = t.step_in_s;
  si.host_step_out_bytes = t.step_out_bytes;
  si.host_step_in_bytes = t.step_in_bytes;
  si.cpu_optimizer = w.optimizer_on_host;
}

}  // namespace

SimInputs sim_inputs(const CostModel& cm, const ParallelConfig& p, const Estimate& est, const GroupLinksSet& given) {
  const TrainSpec& tr = cm.train();
  const ClusterSpec& c = cm.cluster();
  GroupLinksSet links = given;
  add_moe_links(links, cm.topology(), cm.model(), c, p);  // the expert groups (sim/moe.hpp)
  SimInputs in;
  in.parallel = p;
  in.micro_batches = est.micro_batches;
  in.dp_links = links.dp;
  in.tp_leaves_node = p.tp > 1 && links.tp.nodes_spanned > 1;
  dp_rings(c, p, in);
  for (const StageEstimate& s : est.stages) {
    const StageWork w = build_stage_work(cm.model(), c, tr, p, s.index);
    StageInputs si;
    si.forward_s = s.forward_s;
    si.backward_s = s.backward_s;
    si.recompute_s = s.recompute_s;
    si.weight_grad_s = s.weight_grad_s;
    si.optimizer_s = s.optimizer_s;
    if (p.dp_comm == DpComm::parameter_server) si.dp_push_pull_s = s.dp_comm_exposed_s;
    si.layers = s.layers;
    si.weight_bytes = dtype_bytes(tr.dtype) * s.params;
    read_messages(w, links, si);
    if (p.cp > 1) read_cp(w, links.cp, OpTimer::of(c, tr), si);  // context parallelism's KV ring
    if (p.tp_comm_overlap) {  // what the tp-chunked GEMMs hide of their collectives (sim/tp_overlap.hpp)
      const TpHiddenTime h = tp_overlap_hidden_s(w, links.tp, OpTimer::of(c, tr));
      si.tp_forward_s -= h.forward_s, si.tp_backward_s -= h.backward_s, si.tp_recompute_s -= h.recompute_s;
    } else if (tp_backward_beside_gemms(tr, p)) {  // Megatron-LM's column-parallel backward
      si.tp_backward_s -= tp_backward_hidden_s(w, links.tp, OpTimer::of(c, tr), p.sp);
    }
    read_offload(w, c.host, est.micro_batches, si);
    // Topology::ring restricted to this stage's groups: a GPU link carries one ring edge, a
    // node's NICs every edge of this stage leaving the node.
    double bw = in.intra_bytes_per_s;
    for (int32_t k : in.rings_leaving[s.index])
      if (k > 0) bw = std::min(bw, in.nic_bytes_per_s / k);
    si.dp_busbw_bytes_per_s = dp_cp(p) > 1 ? bw : links.dp.busbw_bytes_per_s;
    in.stages.push_back(si);
  }
  return in;
}

double sim_task_count(const SimInputs& in) {
  const ParallelConfig& p = in.parallel;
  double tasks = 0;
  for (const StageInputs& st : in.stages) {
    const int64_t chunk_layers = std::max<int64_t>(1, (st.layers + p.vpp - 1) / p.vpp);
    const int64_t pieces = dp_cp(p) > 1 && p.zero >= 3 ? chunk_layers : 1;
    // per slot: compute and tp per piece (+ gather and reduce-scatter under ZeRO-3), a send,
    // recompute, buckets; per step a few.
    const double per_slot = static_cast<double>(pieces * 4 + 2 + std::max<int64_t>(1, st.grad_buckets / p.vpp) +
                                                (p.offload != Offload::none ? 2 : 0) +  // offload: two copies
                                                (p.cp > 1 ? pieces * 6 : 0));  // cp: a ring's three tasks, twice
    const double slots = splits_backward(p.schedule) ? 3 : 2;  // zb-h1, zb-v: and a weight slot
    tasks += slots * static_cast<double>(in.micro_batches) * static_cast<double>(p.vpp) * per_slot + 8;
  }
  return tasks;
}

Expected<SimResult> simulate(const CostModel& cm, const ParallelConfig& p, const SimOptions& opt) {
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (!grid) return grid.error();
  const GroupLinksSet links = group_links(cm.topology(), *grid);
  // The stage times the simulator plays are the cost model's under the same overlap (what the
  // collectives hidden behind compute take from it, cost_model.cpp's slow_compute_beside_dp).
  const Estimate est = cm.evaluate(p, links, opt.overlap);
  auto r = simulate(sim_inputs(cm, p, est, links), opt);
  if (r) r->analytical_step_s = est.step_time_s;
  return r;
}

}  // namespace loom
