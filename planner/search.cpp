#include "planner/search.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <deque>
#include <cmath>
#include <limits>
#include <thread>
#include <tuple>

#include "sim/model_math.hpp"
#include "sim/context_parallel.hpp"
#include "sim/rank_grid.hpp"
#include "sim/schedule.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/stage_work.hpp"
#include "sim/tp_overlap.hpp"
#include "sim/validate.hpp"

namespace loom {

namespace {

std::string search_str(int64_t v) { return std::to_string(v); }

// divisors(n): sim/model_math.hpp (by factoring: sqrt(n) steps, not n).


Status check_pins(const ClusterSpec& c, const SearchPins& p) {
  const int64_t n = c.gpus;
  struct Size {
    const char* flag;
    std::optional<int64_t> value;
    bool divides_gpus;
  };
  for (const Size& z : std::vector<Size>{{"--tp", p.tp, true}, {"--pp", p.pp, true}, {"--dp", p.dp, true}, {"--cp", p.cp, true},
                                         {"--max-tp", p.max_tp, false}, {"--micro-batch", p.micro_batch, false},
                                         {"--vpp", p.vpp, false}}) {
    if (z.value && *z.value < 1) return make_error(z.flag, "must be >= 1 (got " + search_str(*z.value) + ")");
    if (z.value && z.divides_gpus && n % *z.value != 0)
      return make_error(z.flag, "must divide --gpus (" + search_str(n) + " % " + search_str(*z.value) + " != 0)");
  }
  // Each pin divides n (<= 2^24), so no partial product below passes 2^48. With tp, pp and dp
  // pinned and cp not, cp is 1.
  int64_t pinned = 1;
  bool divides = true;
  for (const auto& v : {p.tp, p.pp, p.dp, p.cp})
    if (v && n % (pinned * *v) != 0) divides = false;
    else if (v) pinned *= *v;
  if (!divides || (p.tp && p.pp && p.dp && pinned != n))
    return make_error(p.dp ? "--dp" : "--pp", std::string(p.cp ? "dp x tp x pp x cp" : "dp x tp x pp") +
                                                  " must equal --gpus (pinned product " + search_str(pinned) + ", gpus = " + search_str(n) + ")");
  if (p.tp && p.max_tp && *p.tp > *p.max_tp)
    return make_error("--tp", "exceeds --max-tp (" + search_str(*p.tp) + " > " + search_str(*p.max_tp) + ")");
  if (p.zero && (*p.zero < 0 || *p.zero > 3)) return make_error("--zero", "must be 0, 1, 2 or 3");
  if (p.sp && *p.sp && (p.tp.value_or(2) < 2 || p.max_tp.value_or(2) < 2))
    return make_error("--sp", "sequence parallelism needs tensor parallelism (tp > 1)");
  if (p.tp_comm_overlap && *p.tp_comm_overlap && ((p.sp && !*p.sp) || p.tp.value_or(2) < 2 || p.max_tp.value_or(2) < 2))
    return make_error("--tp-comm-overlap", "tensor-parallel communication overlap needs --sp on and tp > 1");
  if (p.recompute_layers && p.recompute && *p.recompute != Recompute::full)
    return make_error("--recompute-layers", "recomputes the first layers of each chunk in full: needs --recompute full "
                                            "(got " + to_string(*p.recompute) + ")");
  if (p.recompute_every && p.recompute && *p.recompute != Recompute::full)
    return make_error("--recompute-every", "recomputes every K-th layer of each chunk in full: needs --recompute full "
                                           "(got " + to_string(*p.recompute) + ")");
  if (p.recompute_every && p.recompute_layers)
    return make_error("--recompute-every", "and --recompute-layers choose the recomputed layers two ways: give one");
  if (p.overlap_param_gather && *p.overlap_param_gather && p.zero && *p.zero != 1 && *p.zero != 2)
    return make_error("--overlap-param-gather", "overlaps ZeRO 1/2's weight all-gather: needs --zero 1 or 2 (got " +
                                                    search_str(*p.zero) + ")");
  if (p.overlap_grad_reduce && !*p.overlap_grad_reduce && p.zero && *p.zero == 3)
    return make_error("--overlap-grad-reduce", "off reduces the gradients after the backward: needs --zero 0-2 (ZeRO-3 "
                                               "reduce-scatters each layer beside the backward; got 3)");
  if (p.overlap_grad_reduce && !*p.overlap_grad_reduce && !p.offload.empty() &&
      std::all_of(p.offload.begin(), p.offload.end(), [](Offload o) { return o == Offload::optimizer_params; }))
    return make_error("--overlap-grad-reduce", "off needs --zero 0-2, and --offload optimizer+params needs ZeRO-3");
  if (p.cp_comm && *p.cp_comm != CpComm::p2p && p.cp && *p.cp == 1)
    return make_error("--cp-comm-type", to_string(*p.cp_comm) + " needs cp > 1 (got --cp 1)");
  if (p.vpp && *p.vpp != 2 && p.schedule && *p.schedule == Schedule::zb_v)
    return make_error("--vpp", "the zb-v schedule runs two chunks per rank, a V: must be 2 (got " + search_str(*p.vpp) + ")");
  if (p.vpp && *p.vpp > 1 && p.schedule && *p.schedule != Schedule::interleaved && *p.schedule != Schedule::zb_v)
    return make_error("--vpp", "vpp > 1 needs --schedule interleaved (or zb-v, vpp 2)");
  if (p.vpp && *p.vpp == 1 && p.schedule && *p.schedule == Schedule::interleaved)
    return make_error("--vpp", "the interleaved schedule needs vpp > 1");
  const bool interleaved = (p.schedule && *p.schedule == Schedule::interleaved) || (p.vpp && *p.vpp > 1);
  if (interleaved && p.pp && *p.pp < 2) return make_error("--schedule", "the interleaved schedule needs pp > 1");
  if (p.stage_layers) {
    const auto k = static_cast<int64_t>(p.stage_layers->size());
    if ((p.pp && *p.pp != k) || n % k != 0)
      return make_error("--stage-layers", "must give one layer count per pipeline stage, of a pp dividing --gpus " + search_str(n) +
                                              (p.pp ? " and equal to --pp " + search_str(*p.pp) : std::string()) + " (got " + search_str(k) +
                                              " entries)");
  }
  if (p.order && !RankGrid::make(1, 1, 1, *p.order))
    return make_error("--order", "must be a permutation of tp, dp, pp joined by '-' (got \"" + *p.order + "\")");
  return ok_status();
}

// The layer splits each schedule of a split tries: the pinned one, or the even split and the
// balanced ones of stage_split_candidates for its (pp, vpp).
void add_stage_splits(SplitSpace& sp, const ModelSpec& m, const SearchPins& pins) {
  sp.stage_splits.clear();
  for (const auto& [sched, vpp] : sp.schedules) {
    if (pins.stage_layers) sp.stage_splits.push_back({*pins.stage_layers});
    else if (sched == Schedule::zb_v) sp.stage_splits.push_back({{}});  // its V places even stages only
    else sp.stage_splits.push_back(stage_split_candidates(m.layers, sp.pp, vpp));
  }
}

// The (ep, etp) pairs of a split (Megatron-core: ep divides the experts, ep x etp divides the
// stage's tp x dp ranks, etp <= tp; here etp divides tp so expert-tp groups sit inside tp's
// node), pins applied; (1, 1) alone for a dense model.
std::vector<std::pair<int64_t, int64_t>> expert_splits(const ModelSpec& m, const SearchPins& pins, int64_t dp,
                                                       int64_t tp) {
  if (!m.is_moe()) return {{1, 1}};
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t etp : divisors(tp))
    for (int64_t ep : divisors(m.experts)) {
      if ((pins.ep && ep != *pins.ep) || (pins.etp && etp != *pins.etp)) continue;
      if ((tp * dp) % (ep * etp) == 0) out.push_back({ep, etp});
    }
  if (out.empty()) out.push_back({pins.ep.value_or(1), pins.etp.value_or(1)});  // carries the rejection
  return out;
}

// The context-parallel sizes searched (search.hpp): the pin, else 1 and, for sequences of 8192
// tokens or more (dense models; sim/context_parallel.hpp), each cp with 2 cp dividing seq that
// leaves every rank at least 2048 tokens of it.
bool cp_searched(const ModelSpec& m, const TrainSpec& t, const SearchPins& pins, int64_t cp) {
  if (pins.cp) return cp == *pins.cp;
  if (cp == 1) return !pins.cp_comm || *pins.cp_comm == CpComm::p2p;  // --cp-comm-type all_gather: cp > 1 only
  return !m.is_moe() && t.seq >= 8192 && t.seq % (2 * cp) == 0 && t.seq / cp >= 2048;
}

SplitSpace split_space(const ModelSpec& m, const TrainSpec& t, const SearchPins& pins, int64_t dp, int64_t tp,
                       int64_t pp, int64_t cp) {
  SplitSpace sp{dp, tp, pp, {}, {}, {}, {}, expert_splits(m, pins, dp, tp)};
  sp.cp = cp;
  // The KV ring or the all-gather (CpComm): the pin, else both.
  if (cp > 1 && pins.cp_comm) sp.cp_comms = {*pins.cp_comm};
  else if (cp > 1) sp.cp_comms = {CpComm::p2p, CpComm::all_gather};
  // Micro-batch: the pin, else every divisor of the per-replica batch; when dp does not divide
  // the global batch there is none, and one candidate (1) carries that rejection.
  if (pins.micro_batch) sp.micro_batches = {*pins.micro_batch};
  else if (t.global_batch % dp == 0) sp.micro_batches = divisors(t.global_batch / dp);
  else sp.micro_batches = {1};
  for (bool on : {false, true})
    if ((!on || tp > 1) && (!pins.sp || *pins.sp == on) && (on || !pins.tp_comm_overlap.value_or(false)))
      sp.sp.push_back(on);  // overlap pinned on: sp on only
  // With one stage there is no pipeline: gpipe and 1f1b would differ only in holding every
  // micro-batch's activations (zb-h1 in nothing), so only 1f1b is tried unless one is pinned.
  auto allowed = [&](Schedule x) { return !pins.schedule || *pins.schedule == x; };
  const bool vpp_one = !pins.vpp || *pins.vpp == 1;
  if (vpp_one && allowed(Schedule::one_f_one_b)) sp.schedules.push_back({Schedule::one_f_one_b, 1});
  if (vpp_one && allowed(Schedule::gpipe) && (pp > 1 || pins.schedule)) sp.schedules.push_back({Schedule::gpipe, 1});
  if (vpp_one && allowed(Schedule::zb_h1) && (pp > 1 || pins.schedule)) sp.schedules.push_back({Schedule::zb_h1, 1});
  // zb-v: two chunks per rank (vpp 2) as a V; about 1F1B's peak activations, half zb-h1's bubble.
  if ((!pins.vpp || *pins.vpp == 2) && allowed(Schedule::zb_v) && (pp > 1 || pins.schedule))
    sp.schedules.push_back({Schedule::zb_v, 2});
  if (pp > 1 && allowed(Schedule::interleaved)) {
    if (pins.vpp && *pins.vpp > 1) sp.schedules.push_back({Schedule::interleaved, *pins.vpp});
    if (!pins.vpp)
      for (int64_t v = 2; v * pp <= m.layers; ++v)
        if (((m.layers + pp - 1) / pp) % v == 0) sp.schedules.push_back({Schedule::interleaved, v});
  }
  add_stage_splits(sp, m, pins);
  return sp;
}

}  // namespace

const std::vector<std::string>& all_orders() {
  static const std::vector<std::string> orders{"tp-dp-pp", "tp-pp-dp", "dp-tp-pp",
                                               "dp-pp-tp", "pp-tp-dp", "pp-dp-tp"};
  return orders;
}

Expected<SearchSpace> make_search_space(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                                        const SearchPins& pins) {
  auto st = check_pins(c, pins);
  if (!st) return st.error();
  for (auto [flag, v] : {std::pair{"--ep", pins.ep}, {"--etp", pins.etp}}) {
    if (v && *v < 1) return make_error(flag, "must be >= 1 (got " + search_str(*v) + ")");
    if (v && *v > 1 && !m.is_moe())
      return make_error(flag, "needs a mixture-of-experts model (got " + search_str(*v) + "; " + m.name + " is dense)");
  }
  if (pins.recompute_every && m.is_moe())  // validate_config's rule, said once for the pin
    return make_error("--recompute-every", "every K-th layer is priced for dense models only (a MoE model's recomputed "
                                           "layers depend on which are MoE layers; got " + m.name + ")");
  if (pins.recompute == Recompute::op) {  // the model's and the training's rules for it, said once for the pin
    ParallelConfig q;                     // tp 1, cp 1: the split's rules are the candidates'
    q.recompute = Recompute::op;
    if (auto op = check_recompute_op(m, t, q, [](const std::string&) { return std::string("--recompute"); }); !op)
      return op.error();
  }
  if (pins.stage_layers) {  // its length and sum now; the multiple-of-vpp rule per candidate
    ParallelConfig q;
    q.pp = static_cast<int64_t>(pins.stage_layers->size());
    q.stage_layers = *pins.stage_layers;
    if (auto sl = check_stage_layers(m, q, [](const std::string&) { return std::string("--stage-layers"); }); !sl)
      return sl.error();
  }
  SearchSpace space;
  const int64_t n = c.gpus;
  for (int64_t tp : divisors(n)) {
    if ((pins.tp && tp != *pins.tp) || (pins.max_tp && tp > *pins.max_tp)) continue;
    for (int64_t cp : divisors(n / tp)) {
      if (!cp_searched(m, t, pins, cp)) continue;
      for (int64_t pp : divisors(n / (tp * cp))) {
        const int64_t dp = n / (tp * cp * pp);
        if ((pins.pp && pp != *pins.pp) || (pins.dp && dp != *pins.dp)) continue;
        if (pins.stage_layers && pp != static_cast<int64_t>(pins.stage_layers->size())) continue;
        space.splits.push_back(split_space(m, t, pins, dp, tp, pp, cp));
      }
    }
  }
  if (pins.order) space.orders = {*pins.order};
  else space.orders = all_orders();
  // The gradient reduction after the backward (--overlap-grad-reduce off) rules ZeRO-3 out.
  const int max_zero = pins.overlap_grad_reduce.value_or(true) ? 3 : 2;
  for (int z = 0; z <= max_zero; ++z)
    if (!pins.zero || *pins.zero == z) space.zero.push_back(z);
  // A block or every-K-th recompute pinned (--recompute-layers, --recompute-every) is a full
  // recompute of some layers.
  const bool some_layers = pins.recompute_layers || pins.recompute_every;
  const std::optional<Recompute> rc = some_layers ? std::optional<Recompute>(Recompute::full) : pins.recompute;
  // torchtitan's per-op checkpointing only where pinned: Megatron-LM and DeepSpeed cannot run it.
  for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full, Recompute::op})
    if (rc ? *rc == r : r != Recompute::op) space.recompute.push_back(r);
  space.recompute_layers = pins.recompute_layers.value_or(0);
  space.recompute_every = pins.recompute_every.value_or(0);
  space.block_recompute = !pins.recompute && !some_layers;
  for (Dtype g : {Dtype::bf16, Dtype::fp32}) {
    if (pins.grad_dtype && *pins.grad_dtype != g) continue;
    TrainSpec tg = t;
    tg.grad_dtype = g;
    tg.dp_bucket_bytes = pins.dp_bucket_bytes.value_or(0);  // 0: Megatron-core's default for each dp
    space.trains.push_back(tg);
  }
  if (!pins.offload.empty()) space.offload = pins.offload;
  if (pins.tp_comm_overlap && *pins.tp_comm_overlap && gpu_sm_count(c.gpu) == 0)
    return make_error("--tp-comm-overlap", "needs the GPU's SM count, which loom knows for A100, H100 and H200 (got " +
                                               c.gpu.name + ")");
  if (pins.overlap_param_gather) space.overlap_param_gather = *pins.overlap_param_gather;
  if (pins.overlap_grad_reduce) space.overlap_grad_reduce = *pins.overlap_grad_reduce;
  if (pins.pp_comm_overlap) space.pp_comm_overlap = *pins.pp_comm_overlap;
  if (pins.tp_comm_overlap) space.tp_comm_overlap = {*pins.tp_comm_overlap};
  else if (gpu_sm_count(c.gpu) > 0) space.tp_comm_overlap = {false, true};
  if (space.splits.empty())
    return make_error("--tp", "no (dp, tp, pp) split of --gpus " + search_str(n) + " meets the pins");
  return space;
}

std::string reason_key(const std::string& e) {
  static const std::vector<std::pair<std::string, std::string>> table{
      {"tp: must divide heads", "tp does not divide heads"},
      {"tp: must divide kv_heads", "tp does not divide kv_heads"},
      {"tp: must divide ffn_hidden", "tp does not divide ffn_hidden"},
      {"pp: pp x vpp must divide layers", "pp x vpp does not divide layers"},
      {"vpp: pp x vpp must divide layers", "pp x vpp does not divide layers"},
      {"global_batch: must be a multiple of dp x micro_batch", "dp x micro-batch does not divide global batch"},
      {"micro_batch: the interleaved schedule needs", "interleaved: micro-batches not a multiple of pp"},
      {"seq: sequence parallelism needs tp to divide seq", "sp: tp does not divide seq"},
      {"seq: must be <= the model's learned position table", "seq exceeds the position table"},
  };
  for (const auto& [prefix, key] : table)
    if (e.compare(0, prefix.size(), prefix) == 0) return key;
  return e.substr(0, e.find(" ("));  // a rule added later: its own text, without the numbers
}

std::string reason_id(const std::string& key) {
  static const std::vector<std::pair<std::string, std::string>> ids{
      {"tp does not divide heads", "tp_not_divide_heads"},
      {"tp does not divide kv_heads", "tp_not_divide_kv_heads"},
      {"tp does not divide ffn_hidden", "tp_not_divide_ffn_hidden"},
      {"pp x vpp does not divide layers", "pp_vpp_not_divide_layers"},
      {"dp x micro-batch does not divide global batch", "dp_micro_batch_not_divide_global_batch"},
      {"interleaved: micro-batches not a multiple of pp", "interleaved_micro_batches_not_multiple_of_pp"},
      {"sp: tp does not divide seq", "sp_tp_not_divide_seq"},
      {"seq exceeds the position table", "seq_exceeds_position_table"},
      {kDoesNotFitMemory, "does_not_fit_memory"},
  };
  for (const auto& [sentence, id] : ids)
    if (key == sentence) return id;
  std::string id;  // a rule added later: its sentence, lower case, other characters as one "_"
  for (char ch : key) {
    const bool word = std::isalnum(static_cast<unsigned char>(ch)) != 0;
    if (word) id += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    else if (!id.empty() && id.back() != '_') id += '_';
  }
  while (!id.empty() && id.back() == '_') id.pop_back();
  return id;
}

// The cost model's peak is the largest over stages of each stage's buffer total
// (sim/stage_work.hpp); the first stage's total, built from the same buffer list without its
// ops and messages, is therefore never above it.
int64_t memory_lower_bound(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p) {
  StageWork scratch;
  return memory_lower_bound(scratch, m, c, t, p);
}

int64_t memory_lower_bound(StageWork& scratch, const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                           const ParallelConfig& p) {
  build_stage_work(scratch, m, c, t, p, 0, /*memory_only=*/true);
  const int64_t first = scratch.memory().peak();
  int64_t heaviest = 0;  // the first stage holding the most layers
  for (int64_t i = 1; i < p.pp; ++i)
    if (stage_layer_count(p, m.layers, i) > stage_layer_count(p, m.layers, heaviest)) heaviest = i;
  if (heaviest == 0) return first;
  build_stage_work(scratch, m, c, t, p, heaviest, /*memory_only=*/true);
  return std::max(first, scratch.memory().peak());
}

// A floor under the step time of a candidate with tp-comm overlap on, from the estimate `off`
// of the same candidate with it off: micro-batches x the largest compute of a stage per
// micro-batch (forward + backward + recompute) + the optimizer step. It holds because
//  - the step is at least micro-batches x the slowest stage's micro-batch time (its compute,
//    its tp time less what the chunks hide, which is at most that time, and host, expert and
//    context-parallel times, none negative) + the optimizer, every other term (bubble,
//    exposed dp and pp time) being >= 0 (sim/cost_model.cpp, step_time);
//  - overlap changes no op but the paired GEMMs, each cut into tp chunks of 1/tp the FLOPs
//    and rows, tp times the calls, some slowed by sms / (sms - 16) >= 1
//    (sim/tp_overlap.hpp), and on the documented efficiency curve (OpTimer::gemm) a chunk
//    takes at least 1/tp of the whole: its FLOP term (F/tp + F_half) / (peak eff) sums to
//    F + tp F_half >= F + F_half, its bytes term to e (M K + tp K N + M N) >= e (M K + K N +
//    M N), its launches to tp >= 1; so no stage computes faster;
//  - the optimizer step does not depend on the knob.
// Where that argument does not reach (a measured profile prices bf16 GEMMs by table, FP8
// GEMMs, MoE grouped GEMMs, context parallelism's ring) the floor is not used.
bool overlap_floor_holds(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t) {
  return !(c.calibration && t.dtype == Dtype::bf16) && !t.fp8 && !m.is_moe();
}
double overlap_floor_s(const Estimate& off) {
  double compute_s = 0;
  for (const StageEstimate& s : off.stages) compute_s = std::max(compute_s, s.forward_s + s.backward_s + s.recompute_s);
  return static_cast<double>(off.micro_batches) * compute_s + off.time.optimizer_s;
}

Plan plan_of(const ModelSpec& m, const ClusterSpec& c, const Estimate& e) {
  return Plan{m, c, e.train, e.parallel, e};
}

namespace {

// One candidate that fits, with what ranking and re-evaluating it needs.
struct Candidate {
  double step_time_s = 0;
  int64_t peak_bytes = 0;
  ParallelConfig p;
  int train = 0, order = 0;
  GroupLinksSet links;
};

// The ranking: step time, then peak memory, then a fixed key over the knobs, so equal
// candidates always come out in the same order whichever thread found them.
bool better(const Candidate& a, const Candidate& b) {
  auto key = [](const Candidate& c) {
    const auto& p = c.p;
    return std::make_tuple(c.step_time_s, c.peak_bytes, p.dp, p.tp, p.pp, p.zero, p.micro_batch,
                           static_cast<int>(p.recompute), p.sp, p.tp_comm_overlap, p.overlap_param_gather,
                           p.overlap_grad_reduce, p.pp_overlapped(), p.recompute_layers, p.recompute_every, static_cast<int>(p.schedule), p.vpp, c.train,
                           c.order, static_cast<int>(p.offload), p.ep, p.etp, static_cast<int>(p.cp_comm));
  };
  const auto ka = key(a), kb = key(b);
  return ka != kb ? ka < kb : a.p.stage_layers < b.p.stage_layers;
}

bool same_links(const GroupLinks& a, const GroupLinks& b) {
  return a.size == b.size && a.busbw_bytes_per_s == b.busbw_bytes_per_s && a.latency_s == b.latency_s &&
         a.nodes_spanned == b.nodes_spanned && a.intra_latency_s == b.intra_latency_s;
}
bool same_links(const GroupLinksSet& a, const GroupLinksSet& b) {
  return same_links(a.tp, b.tp) && same_links(a.dp, b.dp) && same_links(a.pp, b.pp) && same_links(a.cp, b.cp);
}

// Which links a group crosses depends on the grid only through the group's size and stride
// (its members are r0 + i x stride for every r0 with coordinate 0): the same (size, stride)
// on the same cluster is priced once. The exhaustive search prices every grid afresh, and
// the tests compare the two.
class LinksCache {
 public:
  LinksCache(const Topology& topo, bool memo) : topo_(topo), memo_(memo) {}
  GroupLinksSet get(const RankGrid& g) {
    if (!memo_ || g.size(Dim::cp) > 1) return group_links(topo_, g);  // cp: the dp-cp group (context_parallel.hpp)
    return {one(g, Dim::tp, false), one(g, Dim::dp, false), one(g, Dim::pp, true), {}, {}, {}, {}};  // expert groups: add_moe_links
  }

 private:
  GroupLinks one(const RankGrid& g, Dim d, bool p2p) {
    int64_t stride = 1;
    for (Dim x : g.order()) {
      if (x == d) break;
      stride *= g.size(x);
    }
    const auto key = std::make_tuple(p2p, g.size(d), stride);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    GroupLinks l = p2p ? topo_.pipeline_p2p(g) : topo_.ring(g, d);
    cache_.emplace(key, l);
    return l;
  }
  const Topology& topo_;
  bool memo_;
  std::map<std::tuple<bool, int64_t, int64_t>, GroupLinks> cache_;
};

// The distinct orders of one split: an order is kept when its links differ from every
// order kept before it (canonical first).
std::vector<std::pair<int, GroupLinksSet>> distinct_orders(const SearchSpace& space, const SplitSpace& sp,
                                                           LinksCache& links) {
  std::vector<std::pair<int, GroupLinksSet>> out;
  for (size_t i = 0; i < space.orders.size(); ++i) {
    auto grid = RankGrid::make(sp.tp, sp.dp, sp.pp, space.orders[i], sp.cp);
    if (sp.cp > 1 && space.orders.size() > 1 && !dp_cp_grid(*grid)) continue;  // validate_config's order rule
    const GroupLinksSet l = links.get(*grid);
    bool dup = false;
    for (const auto& [j, k] : out) dup = dup || same_links(k, l);
    if (!dup) out.push_back({static_cast<int>(i), l});
  }
  return out;
}

// A block of candidates sharing a split, an order, a grad dtype and a ZeRO stage: what one
// thread takes at a time.
struct Unit {
  size_t split = 0;
  int order = 0;
  GroupLinksSet links;
  int train = 0;
  int zero = 0;
};

struct Tally {
  int64_t considered = 0, evaluated = 0, feasible = 0;
  std::vector<std::pair<std::string, int64_t>> rejected;
  std::vector<Candidate> top;  // sorted best first, at most k

  void reject(const std::string& key, int64_t n = 1) {
    for (auto& [k, v] : rejected)
      if (k == key) {
        v += n;
        return;
      }
    rejected.push_back({key, n});
  }
  void offer(Candidate c, size_t k) {
    if (top.size() == k && !better(c, top.back())) return;
    top.insert(std::upper_bound(top.begin(), top.end(), c, better), std::move(c));
    if (top.size() > k) top.pop_back();
  }
};

// The layer splits schedule entry i of a split tries (the even split alone without a list).
const std::vector<std::vector<int64_t>>& splits_of(const SplitSpace& sp, size_t i) {
  static const std::vector<std::vector<int64_t>> even{{}};
  return i < sp.stage_splits.size() ? sp.stage_splits[i] : even;
}

int64_t unit_size(const SearchSpace& space, const SplitSpace& sp) {
  size_t schedules = 0;  // (schedule, vpp, layer split) triples
  for (size_t i = 0; i < sp.schedules.size(); ++i) schedules += splits_of(sp, i).size();
  size_t sps = 0;  // (sp, tp comm overlap) pairs
  for (bool on : sp.sp) sps += on && sp.tp > 1 ? space.tp_comm_overlap.size() : 1;
  return static_cast<int64_t>(sp.micro_batches.size() * space.recompute.size() * sps * schedules *
                              space.offload.size() * sp.experts.size() * sp.cp_comms.size());
}

const std::vector<bool> kOverlapOff = {false};  // the overlap choices where sp is off or tp == 1

// The floor must exceed the k-th best by more than rounding (the step and the floor add up
// the same terms in other orders) for the candidate to be skipped: then it is slower than k
// candidates already found and cannot rank, nor tie.
constexpr double kFloorMargin = 1e-9;

// A floor under the step of the same candidate with less recompute (a block recompute of a full
// one): removing recompute shortens each stage's micro-batch by at most its recompute share, the
// compute and the bubble scale with the stage times, and no communication gets shorter for
// having less compute to hide behind. So step >= this step x (1 - the largest share).
double less_recompute_floor_s(const Estimate& e) {
  double share = 0;
  for (const StageEstimate& s : e.stages)
    if (s.micro_batch_s() > 0) share = std::max(share, s.recompute_s / s.micro_batch_s());
  return e.step_time_s * (1 - share);
}

bool beaten(const Tally& t, const SearchOptions& o, double floor_s) {
  return floor_s > 0 && !t.top.empty() && t.top.size() == o.top_k && floor_s > t.top.back().step_time_s * (1 + kFloorMargin);
}

// The tp-comm overlap variants `tpos` of candidate `p` (off first): evaluated in turn, the
// memory being the same for all; a variant after the first is skipped, counted as feasible but
// not evaluated, when overlap_floor_s of the first (`floor_ok`) cannot beat the k-th best.
// Returns the least less_recompute_floor_s of the variants, a floor under each variant's with
// less recompute; 0 (none) where they do not fit or one was skipped.
double evaluate_variants(const CostModel& model, ParallelConfig& p, const Unit& u, const std::vector<bool>& tpos,
                         const SearchOptions& o, bool floor_ok, Tally& t, EvalMemo& memo) {
  const auto variants = static_cast<int64_t>(tpos.size());
  double floor_s = 0, less_recompute_s = std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < variants; ++k) {
    p.tp_comm_overlap = tpos[static_cast<size_t>(k)];
    if (k > 0 && beaten(t, o, floor_s)) {
      ++t.feasible;
      less_recompute_s = 0;  // no estimate of this variant, so no floor under its block
      continue;
    }
    const Estimate e = model.evaluate(p, u.links, true, &memo);
    ++t.evaluated;
    if (!e.fits) {  // the same memory either way
      t.reject(kDoesNotFitMemory, variants - k);
      return 0;
    }
    ++t.feasible;
    t.offer({e.step_time_s, e.memory.peak(), p, u.train, u.order, u.links}, o.top_k);
    if (k == 0 && floor_ok && !p.tp_comm_overlap && p.cp == 1) floor_s = overlap_floor_s(e);
    less_recompute_s = std::min(less_recompute_s, less_recompute_floor_s(e));
  }
  return less_recompute_s;
}

// The cost model's peak exactly: the largest of every stage's buffer total (memory_lower_bound
// builds two of them).
int64_t memory_peak(StageWork& scratch, const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                    const ParallelConfig& p) {
  int64_t peak = 0;
  for (int64_t i = 0; i < p.pp; ++i) {
    build_stage_work(scratch, m, c, t, p, i, /*memory_only=*/true);
    peak = std::max(peak, scratch.memory().peak());
  }
  return peak;
}

// The block recompute (ParallelConfig::recompute_layers) of full-recompute candidate `p`: the
// fewest layers per chunk recomputed that fit memory (the activations shrink as N grows: the
// fewest whose memory_lower_bound fits by bisection, then up from there to the first whose
// exact peak fits), with `p`'s tp-comm overlap variants. Nothing where the chunks
// hold one layer, where only recomputing them all fits, or where recomputing none fits (that
// candidate is faster than any block of it). With pruning its variants are counted as feasible
// but not evaluated where `floor_s`, the full candidate's less_recompute_floor_s, cannot beat
// the k-th best (they fit: the peak is exact).
void evaluate_block_recompute(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& train, const CostModel& model,
                              ParallelConfig& p, const Unit& u, const std::vector<bool>& tpos, const SearchOptions& o,
                              bool floor_ok, double floor_s, int64_t usable, StageWork& scratch, Tally& t,
                              EvalMemo& memo) {
  const int64_t most = max_chunk_layer_count(p, m.layers);
  if (most <= 1) return;
  // memory_lower_bound (two stages) first, the exact peak (every stage) only where it fits.
  auto fits = [&](bool exact) {
    return memory_lower_bound(scratch, m, c, train, p) <= usable &&
           (!exact || memory_peak(scratch, m, c, train, p) <= usable);
  };
  p.recompute = Recompute::none;
  const bool none_fits = fits(true);
  p.recompute = Recompute::full;
  p.recompute_layers = most - 1;
  if (none_fits || !fits(true)) {
    p.recompute_layers = 0;
    return;
  }
  // The fewest whose bound fits, by bisection; the exact peak fits from there up (most - 1 does).
  int64_t lo = 1, hi = most - 1;
  while (lo < hi) {
    p.recompute_layers = lo + (hi - lo) / 2;
    if (fits(false)) hi = p.recompute_layers;
    else lo = p.recompute_layers + 1;
  }
  for (p.recompute_layers = lo; p.recompute_layers < most - 1 && !fits(true);) ++p.recompute_layers;
  t.considered += static_cast<int64_t>(tpos.size());
  if (o.prune && beaten(t, o, floor_s)) {
    t.feasible += static_cast<int64_t>(tpos.size());
  } else {
    p.tp_comm_overlap = tpos.front();
    evaluate_variants(model, p, u, tpos, o, floor_ok, t, memo);
  }
  p.recompute_layers = 0;
}

void run_unit(const ModelSpec& m, const ClusterSpec& c, const SearchSpace& space,
              const std::deque<CostModel>& models, const Unit& u, const SearchOptions& o, Tally& t,
              EvalMemo& memo) {
  static const FieldNamer as_is = [](const std::string& f) { return f; };
  const SplitSpace& sp = space.splits[u.split];
  const TrainSpec& train = space.trains[u.train];
  const int64_t usable = static_cast<int64_t>(
      std::floor(static_cast<double>(c.gpu.memory_bytes) * (1.0 - c.runtime_memory.memory_headroom)));
  ParallelConfig p;
  p.dp = sp.dp;
  p.tp = sp.tp;
  p.pp = sp.pp;
  p.cp = sp.cp;
  p.zero = u.zero;
  p.order = space.orders[u.order];
  // Off only where there are gradients to reduce (validate_config refuses it with ZeRO-3).
  p.overlap_grad_reduce = space.overlap_grad_reduce || dp_cp(p) <= 1;
  // Megatron-LM's distributed optimizer overlaps its weight gather only beside an overlapped
  // gradient reduction (arguments.py asserts --overlap-grad-reduce with --overlap-param-gather).
  p.overlap_param_gather = space.overlap_param_gather && (p.zero == 1 || p.zero == 2) && dp_cp(p) > 1 &&
                           (p.overlap_grad_reduce || p.zero == 2);
  p.pp_comm_overlap = space.pp_comm_overlap;
  p.recompute_layers = space.recompute_layers;  // only full recompute is tried where set
  p.recompute_every = space.recompute_every;    // likewise
  StageWork scratch;  // the memory bound's buffer list, its storage reused candidate after candidate
  const bool floor_ok = o.prune && overlap_floor_holds(m, c, train);
  for (CpComm cc : sp.cp_comms)
  for (const auto& [ep, etp] : sp.experts)
  for (int64_t mb : sp.micro_batches)
    for (Recompute r : space.recompute)
      for (bool on : sp.sp)
        for (size_t si = 0; si < sp.schedules.size(); ++si)
          for (const auto& split : splits_of(sp, si))
            for (Offload off : space.offload) {
            p.offload = off;
            p.cp_comm = cc;
            p.ep = ep, p.etp = etp;
            p.micro_batch = mb;
            p.recompute = r;
            p.sp = on;
            p.schedule = sp.schedules[si].first;
            p.vpp = sp.schedules[si].second;
            p.stage_layers = split;
            // tp comm overlap changes time only: one validation and memory bound for its variants
            const std::vector<bool>& tpos = on && p.tp > 1 ? space.tp_comm_overlap : kOverlapOff;
            const auto variants = static_cast<int64_t>(tpos.size());
            p.tp_comm_overlap = tpos.front();
            t.considered += variants;
            auto st = validate_config(m, c, train, p, as_is);
            if (!st) {
              t.reject(reason_key(st.error().message), variants);
              continue;
            }
            if (o.prune && memory_lower_bound(scratch, m, c, train, p) > usable) {
              t.reject(kDoesNotFitMemory, variants);
              continue;
            }
            const double less_recompute_s = evaluate_variants(models[u.train], p, u, tpos, o, floor_ok, t, memo);
            if (r == Recompute::full && space.block_recompute && p.zero3_gather == Zero3Gather::layer &&
                block_recompute_priced(m, p))
              evaluate_block_recompute(m, c, train, models[u.train], p, u, tpos, o, floor_ok, less_recompute_s, usable,
                                       scratch, t, memo);
          }
}

// Pruned search only: a split whose representative breaks a rule about tp, or pp not dividing
// the layers, breaks it in every candidate (validate_config checks those first; pp x vpp fails
// to divide the layers only where no uneven split of them exists, and then for every vpp), so
// the whole split is counted under that reason without validating each candidate.
std::optional<std::string> split_rejection(const ModelSpec& m, const ClusterSpec& c, const SearchSpace& space,
                                           const SplitSpace& sp) {
  ParallelConfig p;
  p.dp = sp.dp;
  p.tp = sp.tp;
  p.pp = sp.pp;
  p.cp = sp.cp;
  if (!sp.schedules.empty()) p.stage_layers = splits_of(sp, 0).front();
  auto st = validate_config(m, c, space.trains.front(), p, [](const std::string& f) { return f; });
  if (st) return std::nullopt;
  const std::string key = reason_key(st.error().message);
  const bool split_rule = key.rfind("tp does not divide", 0) == 0 || key == "pp x vpp does not divide layers";
  return split_rule ? std::optional<std::string>(key) : std::nullopt;
}

}  // namespace

SearchResult search(const ModelSpec& m, const ClusterSpec& c, const SearchSpace& space, const SearchOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  std::deque<CostModel> models;  // a deque: cost models are built in place, never copied
  for (const auto& t : space.trains) models.emplace_back(m, c, t);
  LinksCache links(models.front().topology(), o.prune);

  // Work units, in a fixed order; splits rejected as a whole are tallied here.
  Tally head;
  std::vector<Unit> units;
  for (size_t i = 0; i < space.splits.size(); ++i) {
    const SplitSpace& sp = space.splits[i];
    const auto orders = distinct_orders(space, sp, links);
    const int64_t per_unit = unit_size(space, sp);
    const int64_t n = per_unit * static_cast<int64_t>(orders.size() * space.trains.size() * space.zero.size());
    if (n == 0) continue;
    if (o.prune) {
      if (auto key = split_rejection(m, c, space, sp)) {
        head.considered += n;
        head.reject(*key, n);
        continue;
      }
    }
    for (const auto& [order, l] : orders)
      for (size_t t = 0; t < space.trains.size(); ++t)
        for (int z : space.zero) units.push_back({i, order, l, static_cast<int>(t), z});
  }

  // Thread k takes units k, k + T, k + 2T, ...: a fixed split of the list; the merge below
  // does not depend on it (counts add up, the ranking is a total order).
  const int threads = std::max(1, std::min<int>(o.threads, static_cast<int>(units.size())));
  std::vector<Tally> tallies(threads);
  std::atomic<int64_t> done{0};
  const auto total = static_cast<int64_t>(units.size());
  auto worker = [&](int k) {
    EvalMemo memo;  // this thread's: schedule tables compiled and played once per pattern, GEMM times
    for (size_t i = k; i < units.size(); i += threads) {
      run_unit(m, c, space, models, units[i], o, tallies[k], memo);
      const int64_t d = ++done;
      if (k == 0 && o.progress) o.progress(d, total);
    }
  };
  // A worker thread that cannot be started (no memory, thread limit) leaves its share to
  // this thread: the answer is the same, only slower, and no started thread is abandoned.
  std::vector<std::thread> pool;
  std::vector<int> not_started;
  pool.reserve(static_cast<size_t>(threads));
  for (int k = 1; k < threads; ++k) {
    try {
      pool.emplace_back(worker, k);
    } catch (const std::exception&) {
      not_started.push_back(k);
    }
  }
  worker(0);
  for (int k : not_started) worker(k);
  for (auto& th : pool) th.join();
  if (o.progress) o.progress(total, total);

  SearchResult r;
  std::vector<Candidate> best;
  tallies.push_back(std::move(head));
  for (auto& t : tallies) {
    r.considered += t.considered;
    r.evaluated += t.evaluated;
    r.feasible += t.feasible;
    for (const auto& [k, v] : t.rejected) r.rejected[k] += v;
    for (auto& cand : t.top) best.push_back(std::move(cand));
  }
  std::sort(best.begin(), best.end(), better);
  if (best.size() > o.top_k) best.resize(o.top_k);
  for (const auto& cand : best) r.top.push_back(models[cand.train].evaluate(cand.p, cand.links));
  r.search_time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

Expected<SearchResult> refine_until_settled(SearchResult result, const ModelSpec& m, const ClusterSpec& c,
                                            size_t min_k, size_t keep, const Rescorer& rescore) {
  double best_s = 0, ratio = 1;
  size_t k = 0;
  for (; k < result.top.size(); ++k) {
    const double next_s = result.top[k].step_time_s;
    if (k >= min_k && best_s > 0 && next_s / ratio >= best_s) break;
    auto e = rescore(plan_of(m, c, result.top[k]));
    if (!e) return e.error();
    result.top[k] = *e;
    const double sim_s = e->simulated_step_time_s > 0 ? e->simulated_step_time_s : e->step_time_s;
    best_s = best_s > 0 ? std::min(best_s, sim_s) : sim_s;
    ratio = std::max(ratio, e->step_time_s / sim_s);
  }
  result.refined = static_cast<int64_t>(k);
  result.shortlist_settled = k < result.top.size() || result.feasible <= static_cast<int64_t>(result.top.size());
  auto key = [](const Estimate& e) { return e.simulated_step_time_s > 0 ? e.simulated_step_time_s : e.step_time_s; };
  std::stable_sort(result.top.begin(), result.top.begin() + static_cast<std::ptrdiff_t>(k),
                   [&](const Estimate& a, const Estimate& b) { return key(a) < key(b); });
  if (result.top.size() > keep) result.top.resize(keep);
  return result;
}

}  // namespace loom
