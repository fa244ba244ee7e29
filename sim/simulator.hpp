// The event simulator: one training step as a task graph (Boost.Graph), rank by rank.
//
// Tasks. Per pipeline rank: compute tasks (forward, backward and recompute of each
// (micro-batch, chunk) slot of the schedule table, sim/schedule.hpp, and zb-h1's weight
// slots, whose W the backward leaves out; then the optimizer) on
// the compute stream; tensor-parallel collectives right after the compute they belong to
// (Megatron runs them in-line, so the compute stream waits for them); data-parallel gradient
// buckets, ZeRO parameter gathers (ZeRO-3: one slot ahead, the prefetch) on the dp stream;
// pipeline sends on the pp stream. Edges: stream order within a rank, a slot's input from
// the rank that sends it (forward from the previous stage, gradients from the next), a
// gradient bucket from the backward that produces it (at the fraction of that backward
// where its bucket fills; zb-h1: from the W), the optimizer from the last bucket. With the
// reduction after the backward (ParallelConfig::overlap_grad_reduce off) ZeRO-2's buckets
// queue on the compute stream and ZeRO 0/1's follow the stage's last compute.
// Times. Each stage's work (sim/stage_work.hpp) as the cost model prices it: op times per
// pass split evenly over the stage's chunks, each message on its group's links
// (collectives.hpp), tensor-parallel ones after the pass they belong to. A topological
// sweep gives each task start = max(predecessor end) and the step time is the makespan.
// Scope. All dp replicas and all tp ranks of a stage run the same tasks at the same times
// (the plan is symmetric), so one rank per stage (dp 0, tp 0) is simulated and a collective
// "joins its group" trivially; other ranks are copies of their stage's timeline.
// NIC sharing. The dp groups of one stage share their nodes' NICs as the topology prices
// them (Topology::ring restricted to that stage). Collectives that run at the same time on the
// same links share them: a stage's gradient reduction and its ZeRO-3 gathers; its tp and dp
// collectives when both groups leave the node; dp rings of several stages leaving one node,
// each ring edge getting NIC(n) / (active ring edges leaving n). Where any of these can
// happen the graph is played as events with processor sharing (sim/shared_sweep.hpp), so a
// task's duration follows what actually runs beside it; otherwise the topological sweep.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/cost_model.hpp"
#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/schedule.hpp"
#include "sim/trace_names.hpp"

namespace loom {

struct SimOptions {
  bool overlap = true;      // false: every communication task blocks its rank's compute stream
  bool contention = true;   // collectives on shared links share their bandwidth (see above)
  bool keep_tasks = true;   // false: step time and breakdown only (the planner's refinement)
};

enum class TaskKind : uint8_t {
  forward, backward, recompute, optimizer,  // compute stream
  weight,                                   // compute stream: zb-h1's W (weight gradients)
  tp,                                       // tensor-parallel collectives of one slot
  dp_grad,                                  // gradient bucket (all-reduce or reduce-scatter)
  dp_gather_params,                         // ZeRO-1/2 parameter all-gather after the optimizer
  dp_gather,                                // ZeRO-3 gather of one chunk's weights for one slot
  dp_push_pull,                             // parameter server
  pp_send,                                  // activations (forward) or gradients (backward)
  host_copy,                                // offload: a copy over the host link (host stream)
  host_optimizer,                           // offload: AdamW on the CPU (the GPU idles)
  ep,                                       // MoE: all-to-alls and expert-tp collectives of one slot
  edp_grad,                                 // MoE: expert gradients over the expert-data-parallel group
  cp,                                       // context parallelism: KV-ring hops on the cp links
};

struct SimTask {
  TaskKind kind = TaskKind::forward;
  trace_names::Stream stream = trace_names::Stream::compute;
  Phase phase = Phase::forward;   // pp_send, dp_gather: which pass
  int32_t stage = 0;
  int32_t micro_batch = -1, chunk = -1, bucket = -1;
  int32_t peer_stage = -1;        // pp_send: the receiving stage
  int64_t layers = 0, bytes = 0;
  double start_s = 0, dur_s = 0;
  double end_s() const { return start_s + dur_s; }
};

// What one stage's work (sim/stage_work.hpp) gives the simulator, priced: op times by pass
// from the cost model's StageEstimate, messages by pass on the group links (a seam for
// tests: uniform stages can be written by hand).
// One pass's KV ring per micro-batch, all chunks (sim/context_parallel.hpp's CpRingPass): the
// attention blocks (within the pass's compute time) that hops run beside, those hops, and the
// hops nothing hides.
struct CpPassInputs {
  double block_s = 0, send_s = 0, alone_s = 0;
  int64_t bytes = 0;
};

struct StageInputs {
  double forward_s = 0, backward_s = 0, recompute_s = 0;   // per micro-batch, all chunks
  double weight_grad_s = 0;     // of backward_s, the weight-gradient GEMMs (zb-h1 runs them as W)
  double tp_forward_s = 0, tp_backward_s = 0, tp_recompute_s = 0;  // tp collectives, same
  double tp_grad_sync_s = 0;    // per step, before the optimizer: SP's replicated gradients
  double optimizer_s = 0;
  double dp_push_pull_s = 0;    // parameter-server layout: exposed push + pull
  int64_t layers = 0;           // all chunks
  int64_t grad_bytes = 0;       // gradients this GPU reduces (after compression)
  int64_t grad_buckets = 1;     // collectives the reduction runs as, over all chunks
  int64_t weight_bytes = 0;     // weights this GPU holds unsharded
  // DeepSpeed 0.3's ZeRO-3 under full recompute: what each backward gathers a second time,
  // after its recompute (kZero3RegatherMessage), and in how many per-tensor collectives.
  int64_t regather_bytes = 0, regather_tensors = 0;
  int64_t p2p_bytes = 0;        // one pipeline send of one micro-batch
  double p2p_s = 0;
  double dp_busbw_bytes_per_s = 0;  // this stage's dp rings alone (NIC sharing within the stage)
  // Offload (sim/offload.hpp): host-link copies per micro-batch by pass (all chunks), split over
  // host_pieces layers per chunk; per step the gradients out and the weights back around the
  // CPU optimizer (optimizer_s is then the CPU's AdamW).
  double host_forward_s = 0, host_backward_s = 0;
  int64_t host_forward_bytes = 0, host_backward_bytes = 0, host_pieces = 1;
  double host_step_out_s = 0, host_step_in_s = 0;
  int64_t host_step_out_bytes = 0, host_step_in_bytes = 0;
  bool cpu_optimizer = false;
  // MoE (sim/moe.hpp): expert all-to-alls and expert-tp collectives per micro-batch by pass
  // (in-line after each pass, as tp's), the expert gradients' reduction per step.
  double ep_forward_s = 0, ep_backward_s = 0, ep_recompute_s = 0, edp_step_s = 0;
  // Context parallelism: the KV ring by pass, played beside the attention blocks.
  CpPassInputs cp_forward, cp_backward, cp_recompute;
};

struct SimInputs {
  ParallelConfig parallel;
  int64_t micro_batches = 0;
  std::vector<StageInputs> stages;
  GroupLinks dp_links;          // size and latency of dp groups
  // rings_leaving[stage][node]: dp ring edges of that stage's groups that leave the node;
  // nic_bytes_per_s, intra_bytes_per_s: bandwidth of a node's NICs together, of a GPU's link.
  std::vector<std::vector<int32_t>> rings_leaving;
  double nic_bytes_per_s = 0, intra_bytes_per_s = 0;
  bool tp_leaves_node = false;  // tp groups span nodes: their collectives use the NICs dp rings use
};

struct StageSim {
  int64_t stage = 0;
  TimeBreakdown time;           // adds up to the step time
  int64_t peak_in_flight = 0;   // (micro-batch, chunk) activations held at once
  double end_s = 0;             // when its last task ends
};

struct SimResult {
  double step_time_s = 0;
  TimeBreakdown time;           // the step: the slowest stage's compute and exposed
                                // communication, the largest optimizer, the rest bubble
  std::vector<StageSim> stages;
  std::vector<SimTask> tasks;   // with keep_tasks; each stage's tasks in stream-creation order
  int64_t task_count = 0, edge_count = 0;
  double contention_s = 0;      // dp time added by NIC sharing, summed over tasks
  double analytical_step_s = 0; // CostModel::evaluate's step time, for comparison (0 from inputs)
};

// Inputs from the stage work and the cost model's prices for one configuration (which must
// pass validate_config). `est` is cm.evaluate(p, links).
SimInputs sim_inputs(const CostModel& cm, const ParallelConfig& p, const Estimate& est, const GroupLinksSet& links);

// The most tasks a simulation builds (about 100 bytes each with its edges): a step with more
// is refused with a line saying what to change rather than exhausting memory.
inline constexpr int64_t kMaxSimTasks = 20'000'000;
// Tasks simulate() would build for these inputs, counted without building them.
double sim_task_count(const SimInputs& in);

Expected<SimResult> simulate(const SimInputs& in, const SimOptions& opt);
Expected<SimResult> simulate(const CostModel& cm, const ParallelConfig& p, const SimOptions& opt);

}  // namespace loom
