#include "sim/cost_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>

#include "sim/collectives.hpp"
#include "sim/context_parallel.hpp"
#include "sim/moe.hpp"
#include "sim/op_timer.hpp"
#include "sim/offload.hpp"
#include "sim/profile.hpp"
#include "sim/schedule.hpp"
#include "sim/tp_overlap.hpp"

namespace loom {

GroupLinksSet group_links(const Topology& topo, const RankGrid& grid) {
  GroupLinksSet l{topo.ring(grid, Dim::tp), topo.ring(grid, Dim::dp), topo.pipeline_p2p(grid), {}, {}, {}, {}};  // expert groups: add_moe_links
  add_cp_links(l, topo, grid);  // cp > 1: the KV ring, and dp as the dp-cp group
  return l;
}

CostModel::CostModel(ModelSpec model, ClusterSpec cluster, TrainSpec train)
    : model_(std::move(model)), cluster_(std::move(cluster)), train_(train), topo_(cluster_) {}

Estimate CostModel::evaluate(const ParallelConfig& p, bool overlap) const {
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  return evaluate(p, group_links(topo_, *grid), overlap);
}

namespace {

const GroupLinks& links_of(const GroupLinksSet& l, Group g) {
  return g == Group::tp ? l.tp : g == Group::dp ? l.dp : l.pp;
}

// Compute time of one micro-batch by pass: every op's calls priced by OpTimer. Of the
// backward, the weight-gradient GEMMs (half of each gemm_bwd) are what zb-h1 splits off as W
// (Qi et al. 2023, Sec. 2); attention's and memory-bound ops' backward is all input gradient.
void price_ops(const StageWork& w, const OpTimer& op, StageEstimate& s) {
  for (const Op& o : w.ops) {
    const double calls = static_cast<double>(o.count), t = calls * op.op(o);
    switch (o.pass) {
      case Pass::forward: s.forward_s += t; break;
      case Pass::backward:
        s.backward_s += t;
        if (o.kind == OpKind::gemm_bwd) s.weight_grad_s += calls * o.scale * op.wgrad(o);
        break;
      case Pass::recompute: s.recompute_s += t; break;
      case Pass::step: break;
    }
  }
}

// Bytes each rank sends per step by group, and the tensor-parallel time: per micro-batch
// (in-line with the layers, on the critical path) and per step (SP's gradient all-reduce).
void price_messages(const StageWork& w, const GroupLinksSet& links, int64_t mb, StageEstimate& s) {
  for (const Message& msg : w.messages) {
    if (is_moe_message(msg)) {  // expert groups: all-to-alls, expert tp, expert gradients
      price_moe_message(msg, links, mb, s);
      continue;
    }
    const GroupLinks& l = links_of(links, msg.group);
    const int64_t sent = calls_per_step(msg, mb) * message_send_bytes(msg, l.size);
    if (msg.group == Group::tp) {
      s.comm.tp += sent;
      const double t = static_cast<double>(msg.count) * message_time_s(msg, l);
      (msg.cadence == Cadence::micro_batch ? s.tp_comm_s : s.tp_grad_sync_s) += t;
      if (msg.cadence == Cadence::micro_batch && msg.pass == Pass::forward) s.tp_forward_s += t;
    }
    if (msg.group == Group::dp) s.comm.dp += sent;
    if (msg.group == Group::pp) s.comm.pp += sent;
  }
}

// Pipeline sends that block their sender (ParallelConfig::pp_overlapped false, or no overlap
// at all): each is stage time, like an in-line tensor-parallel collective, so the 1F1B period
// of the slowest stage is F + B + its sends (Megatron-core's non-interleaved schedule waits on
// each batch_isend_irecv) and the fill and drain carry the others' (the bubble formulas read
// the stages' pass times). An end stage sends in one direction only.
void price_blocking_sends(const StageWork& w, const GroupLinks& pp, StageEstimate& s) {
  for (const Message& msg : w.messages) {
    if (msg.group != Group::pp) continue;
    const double t = static_cast<double>(msg.count) * message_time_s(msg, pp);
    s.pp_block_s += t;
    if (msg.pass == Pass::forward) s.pp_block_forward_s += t;
  }
}

// Parameter server (Li et al., OSDI 2014): each worker pushes G/r and pulls W; each of k
// servers takes n/k workers' traffic over one NIC. Not overlapped.
double parameter_server_s(const ClusterSpec& c, const GroupLinks& dpl, int64_t n, int64_t servers, double G,
                          double W) {
  const double k = static_cast<double>(std::max<int64_t>(1, servers)), nn = static_cast<double>(n);
  const double server_bw = c.inter_node.kind == "none" ? dpl.busbw_bytes_per_s : c.inter_node.busbw_bytes_per_s;
  return std::max(G / dpl.busbw_bytes_per_s, nn * G / (k * server_bw)) +
         std::max(W / dpl.busbw_bytes_per_s, nn * W / (k * server_bw));
}

// The window a pass gives data-parallel collectives to hide in: its compute, and its
// tensor-parallel collectives too unless those leave the node on the NICs the dp rings use
// (then the two share the links and add up: the simulator's processor sharing).
struct DpWindow {
  double forward_s = 0, backward_s = 0;  // per micro-batch, all chunks
};
DpWindow dp_window(const StageWork& w, const GroupLinksSet& links, const StageEstimate& s) {
  // The ring's exposed waits (cp) keep the pass going while the dp stream runs.
  DpWindow win{s.forward_s + s.cp_forward_s, s.backward_s + s.recompute_s + s.cp_comm_s - s.cp_forward_s};
  if (links.tp.size > 1 && links.tp.nodes_spanned > 1 && links.dp.nodes_spanned > 1) return win;
  if (w.find(Group::tp, kTpOverlappedMessage) != nullptr) {  // --tp-comm-overlap: the exposed part only
    win.forward_s += s.tp_forward_s;
    win.backward_s += s.tp_comm_s - s.tp_forward_s;
    return win;
  }
  for (const Message& msg : w.messages) {
    if (msg.group != Group::tp || msg.cadence != Cadence::micro_batch) continue;
    const double t = static_cast<double>(msg.count) * message_time_s(msg, links.tp);
    (msg.pass == Pass::forward ? win.forward_s : win.backward_s) += t;
  }
  return win;
}

// ZeRO-3's exposed time per step, FSDP's order (Zhao et al. 2023, "PyTorch FSDP", Sec. 3.3):
// layer l+1's gather is issued when layer l starts (one layer of prefetch; a pass's last layer
// prefetches the next pass's first), and in backward layer l's reduce-scatter is issued when it
// ends and runs beside the next layer. So a forward layer hides a gather in its time f, and a
// backward layer a gather and the previous layer's reduce-scatter in its time b; each pass of
// n layers shows the larger of its layers' own shortfalls and its total shortfall. A backward
// pass's last reduce-scatter runs on into the pass that follows: a forward in the steady state
// (forward carries n gathers and it in n f), the next backward in the drain (n gathers and n
// reduce-scatters in n b); a pass after a forward carries none. How many passes follow which is
// the schedule's (Zero3Passes), and the step shows the first gather, which nothing hides, and
// the last reduce-scatter, which the optimizer waits for.
struct Zero3Passes {
  double forward_after_backward = 0, forward_after_forward = 0, backward_after_forward = 0,
         backward_after_backward = 0;
};
// Megatron-LM's tables (sim/schedule.hpp): `warm-up` forwards (warmup_slots), then forward and
// backward alternating, then as many backwards as there were warm-up forwards; GPipe's warm-up
// is every forward.
Zero3Passes zero3_passes(Schedule sched, int64_t pp, int64_t vpp, int64_t stage, int64_t mb) {
  const int64_t passes = mb * vpp, warm = warmup_slots(sched, pp, vpp, stage, mb), steady = passes - warm;
  Zero3Passes z;
  z.forward_after_backward = static_cast<double>(std::max<int64_t>(0, steady - 1));
  z.forward_after_forward = static_cast<double>(passes) - z.forward_after_backward;
  z.backward_after_forward = static_cast<double>(std::max<int64_t>(1, steady));
  z.backward_after_backward = static_cast<double>(passes) - z.backward_after_forward;
  return z;
}
double zero3_exposed_s(double g, double rs, double f, double b, double n, const Zero3Passes& z) {
  auto over = [](double x) { return std::max(0.0, x); };
  const double fwd = n * over(g - f);
  const double fwd_spill = std::max(fwd, n * (g - f) + rs);
  const double bwd = std::max((n - 1) * over(g + rs - b) + over(g - b), n * (g - b) + (n - 1) * rs);
  const double bwd_spill = std::max(n * over(g + rs - b), n * (g - b) + n * rs);
  return z.forward_after_backward * fwd_spill + z.forward_after_forward * fwd + z.backward_after_forward * bwd +
         z.backward_after_backward * bwd_spill + g + rs;
}

// The same under a schedule that splits each backward (zb-h1, zb-v: sim/schedule.hpp): the B
// pass (time b_B per layer) gathers each layer's weights again, one layer ahead, and shows
// max(0, g - b_B) per layer; the W pass (w per layer) gathers nothing and yields the
// gradients, layer by layer, each reduce-scattered on the dp stream once its layer's W is done.
// Those n reduce-scatters queue: the last ends max(rs, n rs - (n - 1) w) after the W pass (the
// first can start after one w; with rs >= w the queue never drains), and that spill shares the
// links with the gathers of the pass that follows (a forward in the steady state), as the
// non-split backward's last reduce-scatter does. Per micro-batch, with a first gather each:
// it is prefetched behind the B pass before it, but shares the links with the reduce-scatters
// of the W passes in between. Counted per micro-batch the step agrees with the simulator
// (tests/test_zb_v.cpp, BENCHMARKS.md); counted once per step, zb-h1 and zb-v ZeRO-3 plans of
// Llama 3 70B read up to 3.6% fast.
double zero3_split_exposed_s(double g, double rs, double f, double b_b, double w, double L, double chunks) {
  auto over = [](double x) { return std::max(0.0, x); };
  const double n = L / chunks;
  const double spill = rs <= w ? rs : n * rs - (n - 1) * w;
  const double fwd = std::max(n * over(g - f), n * (g - f) + spill);
  return chunks * (fwd + n * over(g - b_b)) + g;
}

// A stage's data-parallel messages, timed on the dp links: the gradient reduction (per
// micro-batch under ZeRO-2, else once per step) in `pieces` buckets, ZeRO-1/2's gather of the
// updated weights after the optimizer, and ZeRO-3's per-layer gather and reduce-scatter.
// regather_s: DeepSpeed 0.3's second gathers in each backward under full recompute, per
// micro-batch (stage_work.cpp, zero3_backward_regather), blocking like the others.
struct DpTimes {
  double grad_s = 0, per_mb_grad_s = 0, gather_step_s = 0, gather_layer_s = 0, rs_layer_s = 0, pieces = 1;
  double regather_s = 0;
};
DpTimes dp_times(const StageWork& w, const GroupLinks& dpl) {
  DpTimes d;
  for (const Message& msg : w.messages) {
    if (msg.group != Group::dp || msg.ranks > 0 || msg.kind == MessageKind::send) continue;
    const double t = message_time_s(msg, dpl);
    if (std::strcmp(msg.name, kZero3RegatherMessage) == 0) {
      d.regather_s += t;
      continue;
    }
    if (msg.kind == MessageKind::all_gather && msg.cadence == Cadence::step) d.gather_step_s += t;
    if (msg.kind == MessageKind::all_gather && msg.cadence == Cadence::micro_batch)
      d.gather_layer_s = t / static_cast<double>(msg.pieces);
    if (msg.kind != MessageKind::all_gather) {
      d.pieces = static_cast<double>(msg.pieces);
      (msg.cadence == Cadence::micro_batch ? d.per_mb_grad_s : d.grad_s) = t;
      d.rs_layer_s = t / d.pieces;
    }
  }
  return d;
}

// A step's data-parallel collectives end to end: what shows when nothing overlaps them.
double dp_busy_s(const DpTimes& d, int64_t mb) {
  const double m = static_cast<double>(mb);
  if (d.gather_layer_s > 0) return m * (d.pieces * (2 * d.gather_layer_s + d.rs_layer_s) + d.regather_s);
  return d.grad_s + m * d.per_mb_grad_s + d.gather_step_s;
}

// Exposed data-parallel time per step. Gradient reduction runs in buckets during the backward
// that produces them: only the part longer than that backward, and at least the last bucket,
// shows (ZeRO-2: every micro-batch); with overlap false (and the gradient reduction after the
// backward: price_dp) all of it. ZeRO-1/2 parameter all-gathers follow the optimizer step,
// exposed. ZeRO-3 gathers are prefetched one layer ahead: each layer shows what its gather
// (and, in backward, its reduce-scatter) exceeds its compute, plus the first layer's gather.
// Without overlap every collective shows in full, as under Zero3Gather::tensor (DeepSpeed
// v0.3.15, partition_parameters.py _allgather_param: torch.cuda.synchronize() before each
// tensor's all-gather, and the sub-module's fetch waits for them; L then counts tensors).
// `weight_grad_s` > 0: a schedule that splits the backward (zero3_split_exposed_s), W's time
// per micro-batch, within s.backward_s; else ZeRO-3's passes follow one another as `z` counts.
double dp_exposed_s(const DpTimes& d, int64_t mb, double chunks, const DpWindow& s, bool overlap,
                    double weight_grad_s, const Zero3Passes& z) {
  const double m = static_cast<double>(mb);
  if (d.gather_layer_s > 0) {  // ZeRO-3
    const double L = d.pieces;
    if (!overlap) return dp_busy_s(d, mb);
    if (weight_grad_s > 0)
      return m * zero3_split_exposed_s(d.gather_layer_s, d.rs_layer_s, s.forward_s / L,
                                       (s.backward_s - weight_grad_s) / L, weight_grad_s / L, L, chunks);
    return zero3_exposed_s(d.gather_layer_s, d.rs_layer_s, s.forward_s / L, s.backward_s / L, L / chunks, z);
  }
  if (!overlap) return dp_busy_s(d, mb);
  if (d.per_mb_grad_s > 0)
    return m * std::max(d.per_mb_grad_s - s.backward_s, d.per_mb_grad_s / d.pieces) + d.gather_step_s;
  if (d.grad_s > 0) return std::max(d.grad_s - s.backward_s, d.grad_s / d.pieces) + d.gather_step_s;
  return d.gather_step_s;
}

// zb-h1 under ZeRO 0-2 (schedule.hpp): the gradients come from the W passes, and stage j ends
// with k = min(j + 1, m) of them back to back after its last B. Its dp stream, on its own
// queue, keeps up with one reduction per micro-batch in the steady state (each F, B, W triple
// of period P gives it P; what a reduction c exceeds P shows there), and then takes the last k
// reductions: ZeRO-2 reduces every micro-batch's gradients (k jobs of c in n buckets, bucket
// q of W i ready at (i - 1 + q / n) w), which end max(k w + c / n, k c + w / n) after the last
// B (the last bucket after the last W, or a queue busy from the first bucket on); ZeRO 0/1
// reduce once, C, after the last W: max(k w + C / n, (k - 1) w + w / n + C). This tail is
// what zb_h1_bubble_s adds to each stage's end; the idle time it leaves is dp's, as the
// simulator reports it.
double zb_h1_tail_s(double w, int64_t k, const DpTimes& d) {
  const double kk = static_cast<double>(k), n = d.pieces;
  if (d.per_mb_grad_s > 0) return std::max(kk * w + d.per_mb_grad_s / n, kk * d.per_mb_grad_s + w / n);
  if (d.grad_s > 0) return std::max(kk * w + d.grad_s / n, (kk - 1) * w + w / n + d.grad_s);
  return kk * w;
}

// The dp times zb_h1_tail_s reads: a ring's gradient reduction overlapped with compute (none
// under ZeRO-3, the parameter server, without overlap or with the reduction after the
// backward: then only the W's).
DpTimes zb_h1_dp(const StageWork& w, const ParallelConfig& p, const GroupLinks& dpl, bool overlap) {
  const bool ring = dp_cp(p) > 1 && p.dp_comm == DpComm::ring && p.zero < 3 && overlap && p.overlap_grad_reduce;
  return ring ? dp_times(w, dpl) : DpTimes{};
}

double zb_h1_steady_dp_s(const DpTimes& d, double period_s, int64_t mb) {
  return static_cast<double>(mb) * std::max(0.0, d.per_mb_grad_s - period_s) + d.gather_step_s;
}

// The micro-batches of zb-v's tables the cost model plays (zb_v_bubble_s): from 2p - 1 on the
// tables repeat one period, so min(m, 4p) show every effect of the fill, the steady state and
// the drain. Under ZeRO-2 a reduction c longer than a stage's period P grows its queue by
// c - P per micro-batch: the played ones show that in zb_v_dp_tail_s, the others in
// dp_comm_exposed_s (zb_h1_steady_dp_s over m - played).
int64_t zb_v_played(int64_t mb, int64_t pp) { return std::min(mb, 4 * pp); }

// ZeRO 1/2 with the updated weights' all-gather under the next step's first forward
// (Megatron-LM's --overlap-param-gather, megatron/core/distributed: the first bucket's gather is
// dispatched before the forward and each forward pre-hook dispatches the next bucket's,
// param_and_grad_buffer.py start_param_sync / distributed_data_parallel.py forward pre-hooks):
// the first of n buckets shows, the others run beside the compute of the layers before them,
// the first n - 1 n-ths of the first forward chunk, F. Exposed: max(G / n, G - F (n - 1) / n).
// The event simulator issues the gather at the step's start and starts the first forward at
// that point of it (simulator.cpp, build_stage), so the two agree.
double param_gather_exposed_s(double gather_s, double buckets, double first_forward_s) {
  const double n = std::max(1.0, buckets);
  return std::max(gather_s / n, gather_s - first_forward_s * (n - 1) / n);
}

// Interleaved 1F1B, ZeRO 0/1: each chunk's gradients (a vpp-th of them, in as many of the
// buckets) reduce once its last backward is done, and Megatron-LM's schedule runs those last
// backwards chunk by chunk, pp of them per chunk (the final group of pp micro-batches): chunk
// c's last backward ends c pp chunk backwards (b / v each) before the stage's last, chunk 0's at
// the end. The dp stream takes the chunks' reductions in that order, each job J of n buckets
// ending max(the queue's previous end + J, its backward's start + (b / v) / n + J, its end +
// J / n) (bucket q ready (q + 1) / n of the way through, as the simulator's buckets; n the
// chunk's own, chunk_buckets_of: under Megatron-core's rule one but for the first stage's first
// chunk); what the queue runs past the stage's last backward shows. The drain's waits between
// those backwards (which give the queue more time) are not counted.
double interleaved_grad_tail_s(const DpTimes& d, double b, const ParallelConfig& p) {
  const int64_t pp = p.pp, vpp = p.vpp;
  const double v = static_cast<double>(vpp), chunk_b = b / v, job = d.grad_s / v;
  double q = -std::numeric_limits<double>::infinity();
  for (int64_t c = vpp - 1; c >= 0; --c) {
    const double n = static_cast<double>(chunk_buckets_of(p, static_cast<int64_t>(d.pieces), c));
    const double end = -static_cast<double>(c * pp) * chunk_b, start = end - chunk_b;
    q = std::max({q + job, start + chunk_b / n + job, end + job / n});
  }
  return std::max(0.0, q);
}

// `raw`: dp_times of the stage's messages on the dp links (a ring's; priced once per stage).
void price_dp(const StageWork& w, const ClusterSpec& c, const ParallelConfig& p, const GroupLinksSet& links,
              int64_t mb, int64_t e, StageEstimate& s, bool overlap, const DpTimes& raw) {
  const GroupLinks& dpl = links.dp;
  if (dp_cp(p) <= 1) return;  // the gradients are reduced over dp x cp (context_parallel.hpp)
  if (p.dp_comm == DpComm::parameter_server) {
    const Message* push = w.find(Group::dp, "dp push");
    s.dp_comm_exposed_s = parameter_server_s(c, dpl, p.dp, p.ps_servers, static_cast<double>(push->bytes),
                                             static_cast<double>(e * w.params));
    return;
  }
  DpTimes d = raw;
  if (p.overlap_param_gather && overlap)  // ZeRO 1/2: the gather under the next step's first forward
    d.gather_step_s = param_gather_exposed_s(d.gather_step_s, d.pieces, s.forward_s / static_cast<double>(p.vpp));
  // The gradient reduction beside the backward (ParallelConfig::overlap_grad_reduce); off, it
  // shows in full after it (dp_busy_s), the weight gather keeping its own overlap.
  const bool grads_beside = overlap && p.overlap_grad_reduce;
  if (p.schedule == Schedule::zb_h1 && p.zero < 3 && p.pp > 1 && grads_beside) {  // the tail: zb_h1_tail_s
    s.dp_comm_exposed_s = zb_h1_steady_dp_s(d, s.micro_batch_s(), mb);
    return;
  }
  if (p.schedule == Schedule::zb_v && p.zero < 3 && p.pp > 1 && grads_beside) {  // the tail: zb_v_dp_tail_s
    s.dp_comm_exposed_s = zb_h1_steady_dp_s(d, s.micro_batch_s(), mb - zb_v_played(mb, p.pp));
    return;
  }
  DpWindow win = dp_window(w, links, s);
  if (p.schedule == Schedule::interleaved && p.vpp > 1 && p.zero < 2 && grads_beside && d.grad_s > 0) {
    s.dp_comm_exposed_s = interleaved_grad_tail_s(d, win.backward_s, p) + d.gather_step_s;
    return;
  }
  const bool blocking = p.zero >= 3 && p.zero3_gather == Zero3Gather::tensor;  // nothing overlaps
  const double split_w_s = splits_backward(p.schedule) && p.pp > 1 ? s.weight_grad_s : 0.0;
  const Zero3Passes z = zero3_passes(p.schedule, p.pp, p.vpp, w.stage, mb);
  s.dp_comm_exposed_s = dp_exposed_s(d, mb, static_cast<double>(p.vpp), win, grads_beside && !blocking, split_w_s, z);
}

// The share of the GPU's SMs a collective over `g` occupies while it runs: NCCL executes each
// channel as one CTA, resident on its own SM for the collective's whole duration (its threads
// spin on the channel's FIFOs; NCCL's "zero-CTA" copy-engine collectives exist to give those
// SMs back: NCCL user guide, "Zero-CTA Optimization"), and a GEMM's CTAs do not fit beside one,
// so compute running at the same time has sm_count - channels SMs. The channel count is the
// cluster file's, for the node's fabric or, for a group that leaves the node, the network.
double nccl_sm_share(const ClusterSpec& c, const GroupLinks& g) {
  const int64_t channels = g.nodes_spanned > 1 ? c.inter_node.nccl_channels : c.intra_node.nccl_channels;
  if (channels <= 0 || c.gpu.sm_count <= 0) return 0;
  return static_cast<double>(channels) / static_cast<double>(c.gpu.sm_count);
}

// Compute that shares the GPU with the data-parallel collectives hidden behind it (gradient
// buckets during the backward, ZeRO-3's prefetched gathers and reduce-scatters, ZeRO 1/2's
// gather under the next forward) runs on the SMs they leave: for the H seconds per step the
// collectives run beside it, at 1 - share of its rate, so the stage's compute takes share x H
// longer (the work a (1 - share) rate leaves undone, then done at the full rate). H is the
// collectives' busy time less what shows (dp_comm_exposed_s); blocking collectives (no overlap,
// DeepSpeed 0.3's per-tensor gathers) and the parameter server hide nothing. The slowdown is
// spread over the stage's forward, backward and recompute (their times grow by the same
// factor), so the simulator, which plays those times, sees it too; price_dp then prices the
// exposure again over the longer passes. Tensor-parallel overlap prices its own SMs
// (sim/tp_overlap.hpp); the context-parallel ring's hops are not counted here.
void slow_compute_beside_dp(const StageWork& w, const ClusterSpec& c, const ParallelConfig& p,
                            const GroupLinksSet& links, int64_t mb, int64_t e, bool overlap, const DpTimes& d,
                            StageEstimate& s) {
  if (!overlap || dp_cp(p) <= 1 || p.dp_comm == DpComm::parameter_server) return;
  if (p.zero >= 3 && p.zero3_gather == Zero3Gather::tensor) return;
  const double share = nccl_sm_share(c, links.dp);
  const double m = static_cast<double>(mb), compute_s = m * (s.forward_s + s.backward_s + s.recompute_s);
  if (share <= 0 || compute_s <= 0) return;
  const double hidden_s = std::max(0.0, dp_busy_s(d, mb) - s.dp_comm_exposed_s);
  s.sm_contention_s += share * hidden_s;
  const double k = 1 + share * hidden_s / compute_s;
  s.forward_s *= k, s.backward_s *= k, s.recompute_s *= k, s.weight_grad_s *= k;
  price_dp(w, c, p, links, mb, e, s, overlap, d);
}

}  // namespace

StageEstimate CostModel::price_stage(const StageWork& w, const ParallelConfig& p, const GroupLinksSet& links,
                                     int64_t mb, bool overlap, GemmMemo* gemms) const {
  OpTimer op = OpTimer::of(cluster_, train_);
  op.gemm_memo = gemms;
  StageEstimate s;
  s.index = w.stage;
  s.layers = w.layers;
  s.params = w.params;
  s.in_flight = w.in_flight;
  s.memory = w.memory();
  s.flops = w.flops_per_micro_batch() * mb;
  price_ops(w, op, s);
  price_cp_ring(w, links.cp, op, overlap, mb, s);  // context parallelism: the KV ring's exposed steps, its bytes
  price_messages(w, links, mb, s);
  if (!(overlap && p.pp_overlapped())) price_blocking_sends(w, links.pp, s);
  if (p.tp_comm_overlap) {  // what the tp-chunked GEMMs hide of their collectives (sim/tp_overlap.hpp)
    const TpHiddenTime hidden = tp_overlap_hidden_s(w, links.tp, op);
    s.tp_comm_s -= hidden.total_s(), s.tp_forward_s -= hidden.forward_s;
  } else if (tp_backward_beside_gemms(train_, p)) {
    // Megatron-LM's column-parallel backward: its collectives beside its GEMMs, which run on the
    // SMs NCCL's channels leave them (nccl_sm_share) while they do.
    const double hidden = tp_backward_hidden_s(w, links.tp, op, p.sp);
    const double slowed = nccl_sm_share(cluster_, links.tp) * hidden;
    s.tp_comm_s -= hidden;
    s.backward_s += slowed;
    s.sm_contention_s += slowed * static_cast<double>(mb);
  }
  const int64_t e = dtype_bytes(train_.dtype);
  const DpTimes dp = dp_cp(p) > 1 && p.dp_comm == DpComm::ring ? dp_times(w, links.dp) : DpTimes{};
  price_dp(w, cluster_, p, links, mb, e, s, overlap, dp);
  slow_compute_beside_dp(w, cluster_, p, links, mb, e, overlap, dp, s);
  s.dp_comm_exposed_s += s.edp_step_s;  // MoE: the expert gradients after the last backward, exposed
  s.optimizer_s = w.optimizer_on_host ? cpu_optimizer_s(cluster_, w.optimizer_bytes)
                                      : op.optimizer(static_cast<double>(w.optimizer_params), w.optimizer_bytes);
  price_offload(w, cluster_.host, p, mb, overlap, s);
  return s;
}

namespace {

// Exposed pipeline transfers of one step, each taking p2p_s, when they overlap compute
// (transfers on their own stream, Megatron-LM's overlap_p2p_comm; blocking ones are stage time,
// price_blocking_sends): the fill and the drain still wait for theirs, 2 (p - 1); in the steady state the slowest stage waits for a
// chunk's input only when it is not already there: when its neighbours are slower than it by
// less than a transfer, each of its m v chunks waits p2p_s - slack (1F1B's period becomes
// F + B + p2p_s, the simulator's timeline). Under ZeRO-3 a chunk also waits for its weights:
// the two waits run at once, so the time a chunk already waits for its gathers counts as slack.
double pp_exposed_s(const Estimate& est, const ParallelConfig& p, size_t slow, double p2p_s) {
  if (p.pp <= 1) return 0;
  const double chunks = static_cast<double>(est.micro_batches * p.vpp);
  double next = 0;  // the slowest of the other stages, per micro-batch
  for (size_t i = 0; i < est.stages.size(); ++i)
    if (i != slow) next = std::max(next, est.stages[i].micro_batch_s());
  double slack = (est.stages[slow].micro_batch_s() - next) / static_cast<double>(p.vpp);
  if (p.zero >= 3 && dp_cp(p) > 1) slack += est.stages[slow].dp_comm_exposed_s / (2 * chunks);
  return 2 * static_cast<double>(p.pp - 1) * p2p_s + chunks * std::max(0.0, p2p_s - slack);
}

// One micro-batch of a stage as ZB-H1 splits it: F (forward, its tp collectives), B (the
// backward's input gradient, with recompute and their tp collectives), W (weight gradients).
struct SplitPass {
  double f = 0, b = 0, w = 0;
};
SplitPass split_pass(const StageEstimate& x) {
  return {x.forward_s + x.tp_forward_s + x.ep_forward_s + x.cp_forward_s + x.pp_block_forward_s,
          x.backward_s - x.weight_grad_s + x.recompute_s + x.tp_comm_s - x.tp_forward_s + x.ep_comm_s - x.ep_forward_s +
              x.cp_comm_s - x.cp_forward_s + x.pp_block_s - x.pp_block_forward_s,
          x.weight_grad_s};
}

// ZB-H1's fill and drain (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", Sec. 3.1): with
// equal stages (p - 1)(F + B - W), a third of 1F1B's (p - 1)(F + B + W) when F = B = W. With
// unequal ones the slowest stage s (the last of equals) runs without waiting once started:
// after the forwards of the stages before it, and, when the stages after it take longer than
// its warm-up of p - s - 1 forwards, after its first gradient is back. Its last B ends with
// tail[s] to go (its deferred W's: k w); the step ends with the longest tail after that B:
// s's own, or the B's back to an earlier stage j and j's tail, or a later stage's tail (whose
// last B ended before s's began). tail[j] is stage j's end after its last B: its
// k = min(j + 1, m) W's, or, with the gradient reduction, when that ends (zb_h1_tail_s).
// Exact against the simulator's timeline when the slowest stage is the last and m >= p;
// otherwise an estimate of the same shape as 1F1B's.
double zb_h1_bubble_s(const std::vector<StageEstimate>& stages, const std::vector<double>& tail_after_b, int64_t mb) {
  const size_t p = stages.size();
  size_t s = 0;
  std::vector<SplitPass> t;
  for (size_t i = 0; i < p; ++i) {
    t.push_back(split_pass(stages[i]));
    if (stages[i].micro_batch_s() >= stages[s].micro_batch_s()) s = i;
  }
  double before = 0, after = 0;
  for (size_t i = 0; i < s; ++i) before += t[i].f;
  for (size_t i = s + 1; i < p; ++i) after += t[i].f + t[i].b;
  const double start = before + std::max(0.0, after - static_cast<double>(p - s - 1) * t[s].f);
  double tail = 0, chain = 0;  // chain: the B's from stage j to stage s - 1
  for (size_t j = s + 1; j-- > 0;) {
    tail = std::max(tail, chain + tail_after_b[j]);
    if (j > 0) chain += t[j - 1].b;
  }
  chain = 0;  // now the B's from stage s to stage j - 1, which stage j's last B preceded
  for (size_t j = s + 1; j < p; ++j) {
    chain += t[j - 1].b;
    tail = std::max(tail, tail_after_b[j] - chain);
  }
  const double own_w = static_cast<double>(std::min<int64_t>(static_cast<int64_t>(s) + 1, mb)) * t[s].w;
  return start + tail - own_w;
}

// 1F1B's fill and drain with unequal stages (uneven layer splits, the model's ends), from the
// schedule of Narayanan et al. 2021, Sec. 2.2 (stage s runs p - s - 1 warm-up forwards, then
// alternates a forward and a backward, then p - s - 1 cool-down backwards): the slowest stage s
// runs its m micro-batches at its own pace, except that its first input comes after the
// forwards of the stages before it, its first gradient after its forward and then every later
// stage's forward and backward (A = their sum, which its warm-up forwards cover up to
// (p - s - 1) f_s), its last gradient A after its last forward (which its cool-down backwards
// cover up to (p - s - 1) b_s), and the step ends when that gradient has gone back through the
// stages before it. Bubble = sum_{i<s} (f_i + b_i) + max(0, A - (p-s-1) f_s) +
// max(0, A - (p-s-1) b_s): (p - 1)(f + b) for equal stages whichever s, the GPipe-shaped
// sum of the others when the last stage is the slowest. An estimate where the stages after s
// queue the chain (not when each is faster than s); tests/test_uneven_stages.cpp holds it to
// the simulator's timeline.
double one_f_one_b_bubble_s(const std::vector<StageEstimate>& stages, size_t s) {
  const double p = static_cast<double>(stages.size());
  double before = 0, after = 0;
  for (size_t i = 0; i < s; ++i) before += stages[i].micro_batch_s();
  for (size_t i = s + 1; i < stages.size(); ++i) after += stages[i].micro_batch_s();
  const SplitPass x = split_pass(stages[s]);
  const double warm = p - static_cast<double>(s) - 1, f = x.f, b = stages[s].micro_batch_s() - x.f;
  return before + std::max(0.0, after - warm * f) + std::max(0.0, after - warm * b);
}

// ZB-V's fill and drain (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory", arXiv
// 2405.15362), derived from the schedule itself: zb_v_rank's tables played (table_makespan_s)
// with each chunk taking half its stage's F, B and W (split_pass; the simulator halves a
// stage's passes over its two chunks the same way) and free links (pp_exposed_s adds the
// transfers). Bubble = that makespan less the slowest stage's m (F + B + W). With F = B = W per
// chunk it is (p - 1) F for m >= 2p - 1, a sixth of a stage pass per micro-batch:
// (p - 1)/(6m) of the step (tests/test_simulator.cpp). From 2p - 1 micro-batches on the tables
// repeat one period, so the bubble no longer changes with m and min(m, 4p) are played.
// `memo` (a search thread's): the same makespan, its tables compiled once (schedule.hpp).
std::vector<ChunkPassSeconds> zb_v_chunks(const std::vector<StageEstimate>& stages) {
  std::vector<ChunkPassSeconds> chunk;
  for (const StageEstimate& x : stages) {
    const SplitPass t = split_pass(x);
    chunk.push_back({t.f / 2, t.b / 2, t.w / 2});
  }
  return chunk;
}
double zb_v_bubble_s(const std::vector<StageEstimate>& stages, size_t slow, int64_t mb, TableMakespans* memo) {
  const int64_t pp = static_cast<int64_t>(stages.size()), played = zb_v_played(mb, pp);
  const std::vector<ChunkPassSeconds> chunk = zb_v_chunks(stages);
  const auto step = memo ? memo->makespan_s(Schedule::zb_v, pp, 2, played, chunk)
                         : table_makespan_s(make_schedule(Schedule::zb_v, pp, 2, played), Schedule::zb_v, 2, played, chunk);
  const SplitPass s = split_pass(stages[slow]);
  return step ? std::max(0.0, *step - static_cast<double>(played) * (s.f + s.b + s.w)) : 0.0;
}

// What ZB-V's gradient reductions (ZeRO 0-2 on a ring, overlapped) add to the step: the same
// tables played with each rank's reductions on its dp stream beside its W passes
// (play_with_dp_s; each chunk holds half the stage's gradients and buckets, as the simulator
// splits them), less the makespan without. The reductions of the drain's W passes, which come
// back to back, are what mostly shows: the simulator's queue, played from the same table.
double zb_v_dp_tail_s(const std::vector<StageEstimate>& stages, const std::vector<DpTimes>& dp, int64_t mb,
                      TableMakespans* memo) {
  const int64_t pp = static_cast<int64_t>(stages.size()), played = zb_v_played(mb, pp);
  std::vector<DpBeside> beside;
  bool any = false;
  for (const DpTimes& d : dp) {
    const double pieces = std::max(1.0, std::floor(d.pieces / 2));  // per chunk, as the simulator's buckets
    beside.push_back({d.per_mb_grad_s / 2, d.grad_s / 2, pieces});
    any = any || d.per_mb_grad_s > 0 || d.grad_s > 0;
  }
  if (!any) return 0;
  const std::vector<ChunkPassSeconds> chunk = zb_v_chunks(stages);
  TableMakespans local;
  TableMakespans& m = memo ? *memo : local;
  const auto plain = m.makespan_s(Schedule::zb_v, pp, 2, played, chunk),
             with = m.makespan_s(Schedule::zb_v, pp, 2, played, chunk, beside);
  return plain && with ? std::max(0.0, *with - *plain) : 0.0;
}

// Interleaved 1F1B's fill and drain. With equal stages (p - 1)(F + B) / v (Narayanan et al.
// 2021, Sec. 2.2.2), and with stages that differ only by the embedding and the loss head (an
// even split) the same form over the other stages: (sum of their F + B) / v. An uneven split
// (whole layers more on some stages) is priced from the schedule itself: Megatron-LM's tables
// (make_schedule) played with each chunk taking a vpp-th of its stage's F and B, less the
// slowest stage's m (F + B). There the closed form reads up to 3.5x the bubble when the heaviest
// stage is the first: the lighter stages catch up between its chunks (Llama 3 70B on 42/38
// layers, vpp 2: 0.35 s against the simulator's 0.10 s). min(m, 4p) micro-batches are played
// (a multiple of p, as the schedule needs): by then the fill and drain have settled to within
// 1% of the step in a sweep of stage times (BENCHMARKS.md), and the play stays cheap enough for
// the search. `tables`: a search thread's memo.
bool uneven_split(const std::vector<StageEstimate>& stages) {
  for (const StageEstimate& x : stages)
    if (x.layers != stages.front().layers) return true;
  return false;
}
// Each stage's chunk passes for interleaved 1F1B's tables: a vpp-th of its forward and of its
// backward (B and W together: Megatron-LM does not split them).
std::vector<ChunkPassSeconds> interleaved_chunks(const std::vector<StageEstimate>& stages, int64_t vpp) {
  const double v = static_cast<double>(vpp);
  std::vector<ChunkPassSeconds> chunk;
  for (const StageEstimate& x : stages) {
    const SplitPass t = split_pass(x);
    chunk.push_back({t.f / v, (t.b + t.w) / v, 0});
  }
  return chunk;
}
double interleaved_bubble_s(const std::vector<StageEstimate>& stages, size_t slow, int64_t mb, int64_t vpp,
                            TableMakespans* tables) {
  double sum = 0;
  for (const StageEstimate& x : stages) sum += x.micro_batch_s();
  const double v = static_cast<double>(vpp);
  if (!uneven_split(stages)) return (sum - stages[slow].micro_batch_s()) / v;
  const int64_t pp = static_cast<int64_t>(stages.size()), played = std::min(mb, 4 * pp);
  TableMakespans local;
  TableMakespans& m = tables ? *tables : local;
  const auto step = m.makespan_s(Schedule::interleaved, pp, vpp, played, interleaved_chunks(stages, vpp));
  const double busy = static_cast<double>(played) * stages[slow].micro_batch_s();
  return step ? std::max(0.0, *step - busy) : (sum - stages[slow].micro_batch_s()) / v;
}

// Interleaved 1F1B's pipeline transfers over a short step (m <= 4p micro-batches, the whole
// tables played): each slot whose input comes from another rank waits p2p_s after that input's
// slot ends (the simulator's sends, overlapped with the sender's compute), and what that adds to
// the tables' makespan is exposed. With few micro-batches a chunk's output goes straight to the
// rank that is waiting for it, so the chain of v p chunks each micro-batch runs through waits
// for v p - 1 transfers in the fill and again in the drain, where pp_exposed_s's closed form
// counts 2 (p - 1) (GPT-2 350M, dp 8, pp 2, vpp 12, m 2: 0.0007 s against the simulator's
// 0.0104 s). Nothing for longer steps, where the closed form holds, and nothing either where
// all those fill and drain transfers end to end, 2 (v p - 1) p2p_s, come to less than 0.5% of
// the slowest stage's compute: the closed form is then within that of the play, which the
// search would pay for on every candidate.
std::optional<double> interleaved_pp_played_s(const std::vector<StageEstimate>& stages, size_t slow, int64_t mb,
                                              int64_t vpp, double p2p_s, TableMakespans* tables) {
  const int64_t pp = static_cast<int64_t>(stages.size());
  if (vpp <= 1 || mb > 4 * pp || p2p_s <= 0) return std::nullopt;
  const double chain_s = 2 * static_cast<double>(vpp * pp - 1) * p2p_s;
  if (chain_s < 0.005 * static_cast<double>(mb) * stages[slow].micro_batch_s()) return std::nullopt;
  const std::vector<ChunkPassSeconds> chunk = interleaved_chunks(stages, vpp);
  TableMakespans local;
  TableMakespans& m = tables ? *tables : local;
  const auto with = m.makespan_s(Schedule::interleaved, pp, vpp, mb, chunk, {}, p2p_s);
  const auto without = m.makespan_s(Schedule::interleaved, pp, vpp, mb, chunk);
  if (!with || !without) return std::nullopt;
  return std::max(0.0, *with - *without);
}

// Of the largest optimizer step, what runs during the pipeline's drain (1F1B, GPipe and
// interleaved 1F1B): stage i's last backward ends sum_{j<i} b_j / v before stage 0's (the last
// gradient still goes back through the stages before it, a chunk's backward, b / v, on each),
// and its optimizer starts then, so the step ends max_i (o_i - sum_{j<i} b_j / v) after stage
// 0's last backward rather than max_i o_i. With uneven stages the stage holding the most
// parameters need not be the first. Where each stage's exposed data-parallel time D_i
// (dp_comm_exposed_s) also comes after its own last backward (`grads_after`: ZeRO 0/1, whose
// reduction runs past it, in one bucket on every stage but the first under Megatron-core's
// rule, chunk_grad_buckets; or any reduction after the backward) its tail is D_i and then its
// optimizer: what max_i (D_i + o_i - sum_{j<i} b_j / v) saves of max_i D_i + max_i o_i.
double tail_in_drain_s(const std::vector<StageEstimate>& stages, bool grads_after, int64_t vpp) {
  double largest_o = 0, largest_d = 0, exposed = 0, drain = 0;
  for (const StageEstimate& x : stages) {
    const double d = grads_after ? x.dp_comm_exposed_s : 0.0;
    largest_o = std::max(largest_o, x.optimizer_s);
    largest_d = std::max(largest_d, d);
    exposed = std::max(exposed, d + x.optimizer_s - drain);
    drain += (x.micro_batch_s() - split_pass(x).f) / static_cast<double>(vpp);
  }
  return largest_o + largest_d - exposed;
}

// Step time (Narayanan et al. 2021, Sec. 2.2): the slowest stage runs m micro-batches; the
// pipeline fills and drains through the others, (p - 1)/v micro-batch times when the stages
// are equal (bubble fraction (p-1)/(v m); 1F1B's one_f_one_b_bubble_s and ZB-H1's
// zb_h1_bubble_s with unequal ones; GPipe's forwards, then backwards, are each a flow shop of m
// equal jobs, whose makespan is one job's times plus (m - 1) times the slowest stage's, so its
// bubble is the sum of the others' micro-batch times), and waits for the transfers
// pp_exposed_s counts.
// dp: each stage's zb_h1_dp (zb-h1 and zb-v). Their bubbles are priced without the
// gradient reduction; what the reduction's tail adds to it is exposed dp time.
void step_time(Estimate& est, const ParallelConfig& p, double p2p_s, bool overlap, const std::vector<DpTimes>& dp,
               TableMakespans* tables) {
  size_t slow = 0;
  double sum_mb = 0;
  for (size_t i = 0; i < est.stages.size(); ++i) {
    sum_mb += est.stages[i].micro_batch_s();
    if (est.stages[i].micro_batch_s() > est.stages[slow].micro_batch_s()) slow = i;
  }
  const StageEstimate& ss = est.stages[slow];
  const double mb = static_cast<double>(est.micro_batches), v = static_cast<double>(p.vpp);
  est.time.compute_s = mb * (ss.forward_s + ss.backward_s + ss.recompute_s);
  est.time.tp_comm_s = mb * ss.tp_comm_s + ss.tp_grad_sync_s;
  est.time.ep_comm_s = mb * ss.ep_comm_s;  // MoE all-to-alls and expert tp, in-line as tp's
  est.time.cp_comm_s = mb * ss.cp_comm_s;  // the KV ring's waits beyond its attention blocks
  const bool zb_h1 = p.schedule == Schedule::zb_h1 && p.pp > 1;
  double zb_h1_plain_s = 0, zb_h1_dp_tail_s = 0;
  if (zb_h1) {
    std::vector<double> w_only(est.stages.size()), tails(est.stages.size());
    for (size_t j = 0; j < w_only.size(); ++j) {
      const int64_t k = std::min<int64_t>(static_cast<int64_t>(j) + 1, est.micro_batches);
      w_only[j] = static_cast<double>(k) * split_pass(est.stages[j]).w;
      tails[j] = zb_h1_tail_s(split_pass(est.stages[j]).w, k, dp[j]);
    }
    zb_h1_plain_s = zb_h1_bubble_s(est.stages, w_only, est.micro_batches);
    zb_h1_dp_tail_s = std::max(0.0, zb_h1_bubble_s(est.stages, tails, est.micro_batches) - zb_h1_plain_s);
  }
  est.time.bubble_s = zb_h1 ? zb_h1_plain_s
                     : p.schedule == Schedule::zb_v && p.pp > 1 ? zb_v_bubble_s(est.stages, slow, est.micro_batches, tables)
                     : p.schedule == Schedule::one_f_one_b && p.pp > 1 ? one_f_one_b_bubble_s(est.stages, slow)
                     : p.schedule == Schedule::interleaved && p.pp > 1
                         ? interleaved_bubble_s(est.stages, slow, est.micro_batches, p.vpp, tables)
                         : (sum_mb - ss.micro_batch_s()) / v;
  const bool pp_overlap = overlap && p.pp_overlapped();
  est.time.pp_comm_s = pp_overlap ? pp_exposed_s(est, p, slow, p2p_s) : mb * ss.pp_block_s;
  if (p.schedule == Schedule::interleaved && p.pp > 1 && pp_overlap)
    if (auto played = interleaved_pp_played_s(est.stages, slow, est.micro_batches, p.vpp, p2p_s, tables))
      est.time.pp_comm_s = *played;
  for (const auto& s : est.stages) {
    est.time.dp_comm_s = std::max(est.time.dp_comm_s, s.dp_comm_exposed_s);
    est.time.optimizer_s = std::max(est.time.optimizer_s, s.optimizer_s);
    est.time.host_comm_s = std::max(est.time.host_comm_s, s.host_step_s);  // offload's per-step copies
  }
  est.time.dp_comm_s += zb_h1_dp_tail_s;
  if (p.schedule == Schedule::zb_v && p.pp > 1) est.time.dp_comm_s += zb_v_dp_tail_s(est.stages, dp, est.micro_batches, tables);
  est.time.host_comm_s += mb * ss.host_s;
  if (p.schedule == Schedule::one_f_one_b || p.schedule == Schedule::gpipe ||
      (p.schedule == Schedule::interleaved && p.pp > 1)) {
    const bool grads_after = overlap && (p.zero <= 1 || !p.overlap_grad_reduce);  // each stage's in its own drain
    est.time.bubble_s = std::max(0.0, est.time.bubble_s - tail_in_drain_s(est.stages, grads_after, p.vpp));
  }
  est.step_time_s = est.time.total_s();
}

}  // namespace

// A ratio as the cluster file states it, to four significant digits.
static std::string number_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

// Which numbers priced the compute (OpTimer::of: the profile serves bf16 plans only).
std::string priced_by(const ClusterSpec& c, const TrainSpec& t) {
  const double fp8_ratio = c.efficiency.fp8_gemm_efficiency_ratio;
  const std::string fp8_efficiency =
      fp8_ratio > 0 ? number_text(fp8_ratio) +
                          " x the bf16 efficiency of each shape (efficiency.fp8_gemm_efficiency_ratio, published, not "
                          "measured here)"
                    : "the bf16 efficiency of each shape";
  if (c.calibration && t.dtype == Dtype::bf16) {
    const std::string fp8 = !t.fp8                              ? ""
                            : c.calibration->has_fp8_gemms() ? "; FP8 GEMMs measured in the same profile"
                                                             : "; FP8 GEMMs at the FP8 peak with " + fp8_efficiency;
    return "measured profile " + c.calibration->name + " (loom calibrate on " + c.calibration->device + ")" + fp8;
  }
  std::string s = "documented efficiency defaults of " + c.name + " (not measured)";
  if (c.gemm_model && t.dtype == Dtype::bf16) {
    const auto& ref = *c.efficiency.gemm_model;
    s += "; GEMMs by the tile and wave model of " + ref.from +
         (c.gemm_model_measured ? " (measured on this GPU)" : " (carried to this GPU by stated ratios, not measured)");
    if (t.fp8 && c.gemm_model_fp8_from_bf16)
      s += ", FP8 GEMMs by the same model at the FP8 peak with 1-byte operands and its main loop at " + fp8_efficiency;
    else if (t.fp8 && c.gemm_model_fp8)
      s += ", FP8 GEMMs by its FP8 model" + std::string(c.gemm_model_fp8_measured ? " (measured on this GPU)"
                                                                               : " (carried by the same ratios, not measured)");
    else if (t.fp8)
      s += ", FP8 GEMMs by the same model at the FP8 peak with 1-byte operands (not measured)";
  } else if (t.fp8) {
    s += "; FP8 GEMMs at the FP8 peak with " + fp8_efficiency;
  }
  if (const auto& a = c.efficiency.attention_curve; a && t.dtype == Dtype::bf16)
    s += "; fused attention by the " + std::string(a->measured ? "measured" : "published") + " speed of " + a->kernel +
         " against sequence length and head size (efficiency.attention_curve, " +
         (a->measured ? "measured on this GPU)" : "not measured here)");
  if (c.memory_curves && t.dtype == Dtype::bf16) {
    std::string kinds;
    for (const MemKindName& k : kMemKinds)
      if (c.memory_curves->has_kind(k.kind)) kinds += std::string(kinds.empty() ? "" : ", ") + k.name;
    s += "; residual adds" + (kinds.empty() ? std::string() : " and the " + kinds + " kernels") +
         " by the memory-bound bandwidth curves of " + c.efficiency.memory_curves->from +
         (c.memory_curves_measured ? " (measured on this GPU)"
                                   : " (carried by the stated bandwidth ratio, not measured)");
  }
  return s;
}

namespace {

// Peak: the stage with the largest peak; comm: the largest per field.
void peak_and_fit(Estimate& est, const ClusterSpec& c) {
  for (const auto& s : est.stages) {
    if (s.memory.peak() > est.stages[est.peak_stage].memory.peak()) est.peak_stage = s.index;
    est.comm.tp = std::max(est.comm.tp, s.comm.tp);
    est.comm.dp = std::max(est.comm.dp, s.comm.dp);
    est.comm.pp = std::max(est.comm.pp, s.comm.pp);
    est.comm.host = std::max(est.comm.host, s.comm.host);
    est.comm.ep = std::max(est.comm.ep, s.comm.ep);
    est.comm.cp = std::max(est.comm.cp, s.comm.cp);
  }
  est.memory = est.stages[est.peak_stage].memory;
  est.fits = est.memory.peak() <= est.usable_bytes;
  if (est.fits) return;
  std::ostringstream why;
  why.precision(1);
  why << std::fixed << "stage " << est.peak_stage << " needs " << est.memory.peak() / 1073741824.0 << " GiB > "
      << est.usable_bytes / 1073741824.0 << " GiB usable (" << c.runtime_memory.memory_headroom * 100 << "% of "
      << c.gpu.memory_bytes / 1073741824.0 << " GiB kept free)";
  est.reason = why.str();
}

// The data-parallel alternatives, for the gradients of the stage with the largest peak.
void dp_alternatives(Estimate& est, const ClusterSpec& c, const ParallelConfig& p, const GroupLinks& dpl, int64_t e,
                     int64_t g) {
  if (dp_cp(p) <= 1) return;
  const double params = static_cast<double>(est.stages[est.peak_stage].params);
  const double G = static_cast<double>(g) * params, W = static_cast<double>(e) * params;
  est.dp_alternatives.ring_all_reduce_s = collective_time_s(Collective::all_reduce, G, dpl);
  est.dp_alternatives.compressed_ring_s = collective_time_s(Collective::all_reduce, G / p.grad_compression, dpl);
  if (p.ps_servers > 0)
    est.dp_alternatives.parameter_server_s =
        parameter_server_s(c, dpl, p.dp, p.ps_servers, G / p.grad_compression, W);
}

}  // namespace

Estimate CostModel::evaluate(const ParallelConfig& p, const GroupLinksSet& given, bool overlap) const {
  return evaluate(p, given, overlap, nullptr);
}

Estimate CostModel::evaluate(const ParallelConfig& p, const GroupLinksSet& given, bool overlap,
                             EvalMemo* memo) const {
  TableMakespans* tables = memo ? &memo->tables : nullptr;
  const ModelSpec& m = model_;
  const TrainSpec& tr = train_;
  const ClusterSpec& c = cluster_;
  GroupLinksSet links = given;
  add_moe_links(links, topo_, m, c, p);  // the expert groups of a MoE model (sim/moe.hpp)
  Estimate est;
  est.model = m.name;
  est.cluster = c.name;
  est.params = total_params(m);
  est.gpus = p.gpus();
  est.parallel = p;
  est.train = tr;
  est.micro_batches = tr.global_batch / (p.dp * p.micro_batch);
  est.capacity_bytes = c.gpu.memory_bytes;
  est.usable_bytes = static_cast<int64_t>(
      std::floor(static_cast<double>(c.gpu.memory_bytes) * (1.0 - c.runtime_memory.memory_headroom)));
  double p2p_s = 0;
  StageWork w;
  est.stages.reserve(static_cast<size_t>(p.pp));
  int64_t interior = -1;  // the last interior stage priced
  int64_t host_bytes = 0;  // offload: the most any stage keeps in host memory
  std::vector<DpTimes> zb_h1_dp_of;  // zb-h1: each stage's gradient reduction (zb_h1_dp)
  for (int64_t i = 0; i < p.pp; ++i) {
    // Interior stages of as many layers have the same ops and messages (stage_work.hpp): one
    // is priced, the next ones take its prices and their own buffers.
    const bool reuse = interior >= 0 && is_interior_stage(i, p.pp) &&
                       stage_layer_count(p, m.layers, i) == stage_layer_count(p, m.layers, interior) &&
                       moe_stage(m, tr, p, i).layers == moe_stage(m, tr, p, interior).layers;
    build_stage_work(w, m, c, tr, p, i, /*memory_only=*/reuse);
    host_bytes = std::max(host_bytes, w.host_bytes());
    if (reuse) {
      zb_h1_dp_of.push_back(zb_h1_dp_of[static_cast<size_t>(interior)]);
      StageEstimate s = est.stages[static_cast<size_t>(interior)];
      s.index = i;
      s.in_flight = w.in_flight;
      s.memory = w.memory();
      est.stages.push_back(s);
      continue;
    }
    if (is_interior_stage(i, p.pp)) interior = i;
    est.stages.push_back(price_stage(w, p, links, est.micro_batches, overlap, memo ? &memo->gemms : nullptr));
    zb_h1_dp_of.push_back(zb_h1_dp(w, p, links.dp, overlap));
    if (const Message* send = w.find(Group::pp, "pp send")) p2p_s = message_time_s(*send, links.pp);
  }
  step_time(est, p, p2p_s, overlap, zb_h1_dp_of, tables);
  est.priced_by = priced_by(c, tr);
  est.flops_model = model_flops(m, tr.global_batch, tr.seq, AttentionFlops::causal);
  est.flops_model_paper = model_flops(m, tr.global_batch, tr.seq, AttentionFlops::full);
  // Hardware FLOPs as the stages' op lists count them (Narayanan et al.'s full attention, the
  // recomputed forward included): what the CPU reference's FLOP counter measures.
  est.flops_hardware = hardware_flops(m, tr.global_batch, tr.seq, p.recompute, AttentionFlops::full);
  if (p.partial_recompute()) {  // a block or every-K-th recompute: the layers it leaves out run no second forward
    int64_t recomputed = 0;
    for (int64_t s = 0; s < p.pp; ++s) recomputed += stage_recomputed_layers(p, m.layers, s);
    est.flops_hardware -= (m.layers - recomputed) *
                          layer_forward_flops(m, tr.global_batch, tr.seq, AttentionFlops::full).total();
  }
  if (m.is_moe()) {  // experts at their capacity (sim/moe.hpp): the op lists' sum over every GPU
    est.flops_hardware = 0;
    for (const StageEstimate& s : est.stages) est.flops_hardware += s.flops * p.tp * p.dp;
  }
  est.tokens_per_s = static_cast<double>(tr.global_batch * tr.seq) / est.step_time_s;
  const double peak_flops = tr.dtype == Dtype::bf16 ? c.gpu.peak_flops_bf16 : c.gpu.peak_flops_fp32;
  set_flop_rates(est, peak_flops);
  peak_and_fit(est, c);
  check_host_memory(est, c, host_bytes);
  dp_alternatives(est, c, p, links.dp, dtype_bytes(tr.dtype), dtype_bytes(tr.grad_dtype));
  return est;
}

}  // namespace loom
