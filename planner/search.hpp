// The planner's search (issue 4): every consistent parallel configuration of one job, priced
// by the cost model and ranked by step time. The search space is plain data built from the
// inputs and the user's pins (make_search_space); the search is a function of the inputs and
// that space returning a result value (search). Nothing here prints or exits.
//
// What "every consistent configuration" means, knob by knob (SearchSpace lists the values):
//   (dp, tp, pp)   every ordered triple with dp x tp x pp = gpus
//   order          every rank order (Megatron-core order string) that changes which links a
//                  group crosses: orders giving the same GroupLinksSet for a split are one
//   zero           0-3
//   micro_batch    every divisor of the per-replica batch (global batch / dp)
//   recompute      none, selective, full
//   sp             off, on (on only with tp > 1)
//   schedule, vpp  1f1b (gpipe and zb-h1 too when pp > 1: with one stage they are the same
//                  loop); interleaved with every vpp >= 2 dividing ceil(layers / pp); zb-v
//                  (vpp 2, the even split only) when pp > 1
//   stage layers   per (pp, vpp): the even split where pp x vpp divides the layers and up to
//                  four splits with lighter first and last stages (stage_split_candidates), so
//                  a pp that does not divide the layers is searched too
//   grad dtype     bf16, fp32
//   dtype          as the job gives it, never searched: fp8 (sim/fp8.hpp) is the user's choice,
//                  it changes the numerics; with --dtype fp8 every candidate is priced in FP8
//   offload        none, or the choices --offload lists (optimizer, optimizer+params,
//                  activations; host memory is checked beside GPU memory)
//   cp             context parallelism (sim/context_parallel.hpp): 1, and where seq >= 8192 every
//                  divisor of gpus / tp with 2 cp dividing seq and seq / cp >= 2048 tokens per
//                  rank (below that a sequence is short enough to fit without splitting it and
//                  the ring's blocks are too small to hide its sends); --cp pins one value
//   ep, etp        MoE models: every expert-parallel size dividing the experts and tp x dp and
//                  every expert-tp size dividing tp with ep x etp dividing tp x dp (Megatron-core's
//                  rules; sim/moe.hpp); a dense model keeps ep = etp = 1
// The model-dependent rules (tp divides heads, micro-batches a multiple of pp for the
// interleaved schedule, ...) are validate_config's; a candidate that breaks one is counted
// under a short reason key, as is one that does not fit memory.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sim/cost_model.hpp"
#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"

namespace loom {

// What the user pinned or bounded; an unset field is searched.
struct SearchPins {
  std::optional<int64_t> dp, tp, pp, max_tp, micro_batch, vpp;
  std::optional<int64_t> ep, etp;  // MoE: expert-parallel and expert-tp sizes (--ep, --etp)
  std::optional<int64_t> cp;       // context-parallel size (--cp)
  std::optional<CpComm> cp_comm;   // --cp-comm-type; unset: p2p and all_gather both tried where cp > 1
  std::optional<int> zero;
  std::optional<Recompute> recompute;
  // --recompute-layers (a block recompute of each chunk's first N layers); needs recompute full.
  std::optional<int64_t> recompute_layers;
  // --recompute-every (every K-th layer of each chunk recomputed); needs recompute full.
  std::optional<int64_t> recompute_every;
  std::optional<bool> sp;
  // --tp-comm-overlap (sim/tp_overlap.hpp); unset: off and on are both tried where sp is on and
  // tp > 1, on a GPU whose SM count loom knows.
  std::optional<bool> tp_comm_overlap;
  // --overlap-param-gather (ZeRO 1/2's weight all-gather under the next forward); unset: on
  // wherever zero 1 or 2 runs on a ring (it only ever hides time, so off is never faster).
  std::optional<bool> overlap_param_gather;
  // --overlap-grad-reduce (ZeRO 0-2's gradient reduction beside the backward); unset: on (it
  // only ever hides time, so off is never faster); off rules ZeRO-3 out.
  std::optional<bool> overlap_grad_reduce;
  // --pp-comm-overlap (pipeline sends on their own stream); unset: as Megatron-core runs each
  // schedule (ParallelConfig::pp_overlapped: blocking in 1F1B, overlapped elsewhere).
  std::optional<bool> pp_comm_overlap;
  std::optional<Schedule> schedule;
  std::optional<Dtype> grad_dtype;
  std::optional<std::string> order;
  // The layers of each pipeline stage (--stage-layers); it fixes pp to its length. Unset: the
  // even split and the balanced splits of stage_split_candidates are tried.
  std::optional<std::vector<int64_t>> stage_layers;
  // Gradient bucket for DP overlap; unset: Megatron-core's 40e6 elements of the grad dtype,
  // so it follows the grad dtype being tried (as `loom predict` does).
  std::optional<int64_t> dp_bucket_bytes;
  // Offload choices tried (--offload; sim/offload.hpp); empty: none only.
  std::vector<Offload> offload;
};

// The knobs of one (dp, tp, pp) split whose values depend on the split.
struct SplitSpace {
  int64_t dp = 1, tp = 1, pp = 1;
  std::vector<int64_t> micro_batches;
  std::vector<bool> sp;
  std::vector<std::pair<Schedule, int64_t>> schedules;  // (schedule, vpp)
  // Per schedules entry: the layer splits over the stages tried (ParallelConfig::stage_layers;
  // {} = layers / pp each). An entry without a list tries the even split only.
  std::vector<std::vector<std::vector<int64_t>>> stage_splits;
  std::vector<std::pair<int64_t, int64_t>> experts = {{1, 1}};  // (ep, etp) tried (MoE models)
  int64_t cp = 1;  // context parallelism: gpus = dp x tp x pp x cp
  std::vector<CpComm> cp_comms = {CpComm::p2p};  // how K and V move, tried where cp > 1
};

struct SearchSpace {
  std::vector<SplitSpace> splits;
  std::vector<std::string> orders;  // candidates, canonical (Megatron's default) first
  std::vector<int> zero;
  std::vector<Recompute> recompute;
  int64_t recompute_layers = 0;     // with recompute full (ParallelConfig::recompute_layers)
  int64_t recompute_every = 0;      // with recompute full (ParallelConfig::recompute_every)
  // Beside each full-recompute candidate, the block recompute of the fewest layers per chunk that
  // fits memory (recompute unpinned, a dense model): between recomputing none, which does not
  // fit there, and every layer.
  bool block_recompute = false;
  std::vector<TrainSpec> trains;    // one per grad dtype tried (grad dtype and bucket differ)
  std::vector<Offload> offload = {Offload::none};
  // tp communication overlap tried where sp is on and tp > 1 (off alone elsewhere).
  std::vector<bool> tp_comm_overlap = {false};
  // ZeRO 1/2's weight all-gather overlapped with the next forward where it applies.
  bool overlap_param_gather = true;
  // ZeRO 0-2's gradient reduction beside the backward (ParallelConfig::overlap_grad_reduce).
  bool overlap_grad_reduce = true;
  // Pipeline transfers overlapped with the next chunk (ParallelConfig::pp_comm_overlap; unset:
  // each schedule's default).
  std::optional<bool> pp_comm_overlap;
};

// Errors name the flag ("--tp: must divide --gpus (8 % 3 != 0)"), for pins that contradict
// each other or the job; `cluster` must be sized.
Expected<SearchSpace> make_search_space(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                                        const SearchPins& pins);

// Every order string, canonical first: "tp-dp-pp" (Megatron-core's default without cp/ep).
const std::vector<std::string>& all_orders();

struct SearchOptions {
  size_t top_k = 10;
  int threads = 2;
  // false: validate and evaluate every candidate (the reference the pruned search is tested
  // against); true: skip what is provably rejected (see search.cpp).
  bool prune = true;
  // Called from one worker thread as work units finish (done, total); may be empty.
  std::function<void(int64_t done, int64_t total)> progress;
};

struct SearchResult {
  std::vector<Estimate> top;                 // best first (by step time, then the stable key)
  int64_t considered = 0;                    // candidates in the space
  std::map<std::string, int64_t> rejected;   // reason key -> candidates
  int64_t feasible = 0;                      // valid and fit memory
  int64_t evaluated = 0;                     // cost-model evaluations actually run
  double search_time_s = 0;
  int64_t refined = 0;                       // candidates the event simulator re-scored
  bool shortlist_settled = true;             // refine_until_settled: no unrefined one could win
};

// Runs the search. `cluster` must be sized and carry the memory headroom to plan with.
SearchResult search(const ModelSpec& m, const ClusterSpec& c, const SearchSpace& space, const SearchOptions& o);

// The short reason key of a validate_config error (fields named as-is, not as flags):
// "tp: must divide heads (96 % 64 != 0)" -> "tp does not divide heads".
std::string reason_key(const std::string& validate_error);
// The stable identifier of a reason key, for `loom plan --json` ("tp does not divide heads" ->
// "tp_not_divide_heads"): scripts match the identifier while the sentence may be reworded.
std::string reason_id(const std::string& key);
inline const char* kDoesNotFitMemory = "does not fit memory";

// A lower bound on the peak memory the cost model predicts for `p`: the larger of the first
// stage's peak (the most micro-batches in flight) and that of the first stage holding the most
// layers (uneven splits), from the same buffer list the cost model sums (sim/stage_work.hpp),
// so it is <= evaluate(p).memory.peak() for every valid p by construction, with or without a
// profile. The search skips evaluating a candidate whose bound exceeds the usable memory.
int64_t memory_lower_bound(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p);
// The same, building the stages' buffers in `scratch` (its storage reused).
int64_t memory_lower_bound(StageWork& scratch, const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                           const ParallelConfig& p);

// A floor under the step time of a candidate with tp-comm overlap on (sim/tp_overlap.hpp), from
// the estimate `off` of the same candidate with it off: micro-batches x the largest compute of
// a stage per micro-batch + the optimizer step. It holds where overlap_floor_holds (the
// argument is in search.cpp); the search then skips the overlap variant when the floor cannot
// beat the k-th best found so far, counting it as feasible (its memory is the off variant's).
bool overlap_floor_holds(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t);
double overlap_floor_s(const Estimate& off);

// The plan of one ranked estimate (its train spec carries the grad dtype it was found with).
Plan plan_of(const ModelSpec& m, const ClusterSpec& c, const Estimate& e);

// A re-scorer for the planner's shortlist: the event simulator, which sets simulated_step_time_s.
using Rescorer = std::function<Expected<Estimate>(const Plan&)>;

// `loom plan` (--refine K, K the least): the shortlist grows until growing it cannot change
// the winner. Candidates are re-scored in analytical order, at least `min_k` of them; after
// each, let best be the least simulated step so far and r the largest analytical /
// simulated ratio seen (how optimistic the simulator has been against the analytical model).
// The next candidate could only win if its analytical step / r < best; when that fails, so it
// does for every later one (they are slower analytically), and the shortlist is settled. If
// result.top runs out first, shortlist_settled is false. The refined ones are re-ranked by
// the simulated step (ties keep their order); result.top is then cut to `keep`. An error from
// rescore is returned as is.
Expected<SearchResult> refine_until_settled(SearchResult result, const ModelSpec& m, const ClusterSpec& c,
                                            size_t min_k, size_t keep, const Rescorer& rescore);

}  // namespace loom
