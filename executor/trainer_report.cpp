// What the run measured: every rank's row gathered to the reporting rank and turned into the
// step-result vocabulary (sim/estimate.hpp) the prediction uses, and the Chrome trace of the
// last step (the names of loom simulate --trace).
#include <algorithm>
#include <tuple>

#include "executor/trainer_impl.hpp"
#include "sim/json_reader.hpp"
#include "sim/model_math.hpp"
#include "sim/spec_json.hpp"

namespace loom::exec {

namespace {

// One rank's row in the step-result vocabulary (sim/estimate.hpp). On this backend every call
// blocks, so each time is exposed time; `pp_comm` includes waiting for the neighbour stage (what
// the prediction splits into pp_comm and bubble), and `other_s` is what no category holds (the
// loss and gradient-norm all-reduce, bookkeeping).
RankMeasurement rank_row(const std::vector<double>& v, int rank, const Coords& c) {
  auto i64 = [&](int k) { return static_cast<int64_t>(v[static_cast<size_t>(k)]); };
  RankMeasurement m;
  m.rank = rank;
  m.dp = c.dp;
  m.tp = c.tp;
  m.pp = c.pp;
  m.memory.weights = i64(kMemory);
  m.memory.grads = i64(kMemory + 1);
  m.memory.optimizer = i64(kMemory + 2);
  m.memory.activations = i64(kMemory + 3);
  m.memory.logits = i64(kMemory + 4);
  m.memory.comm_buffers = i64(kMemory + 5);
  m.memory.workspace = i64(kMemory + 6);
  m.flops = static_cast<FlopCount>(v[kFlops]);
  m.comm = {i64(kCommBytes), i64(kCommBytes + 1), i64(kCommBytes + 2)};
  m.comm.ep = i64(kCommEp);
  m.comm.cp = i64(kCommCp);
  m.comm_world_bytes = i64(kCommBytes + 3);
  m.step_time_s = v[kMeanStep];
  m.time.compute_s = v[kForward] + v[kBackward] + v[kRecompute];
  m.time.tp_comm_s = v[kTp] + v[kTpSync];
  m.time.dp_comm_s = v[kDp];
  m.time.pp_comm_s = v[kPp];
  m.time.cp_comm_s = v[kCp];
  m.time.optimizer_s = v[kOptimizer];
  m.other_s = std::max(0.0, v[kLastStep] - m.time.total_s());
  return m;
}

// The rank's stage, per micro-batch (forward, backward, recompute, tp_comm) as StageEstimate.
StageEstimate stage_row(const std::vector<double>& v, const RankMeasurement& r, int64_t m, int64_t layers) {
  const double n = static_cast<double>(m);
  StageEstimate s;
  s.index = r.pp;
  s.layers = layers;
  s.params = static_cast<int64_t>(v[kParams]);
  s.in_flight = static_cast<int64_t>(v[kInFlight]);
  s.memory = r.memory;
  s.flops = r.flops;
  s.comm = r.comm;
  s.forward_s = v[kForward] / n;
  s.backward_s = v[kBackward] / n;
  s.recompute_s = v[kRecompute] / n;
  s.tp_comm_s = v[kTp] / n;
  s.cp_comm_s = v[kCp] / n;
  s.tp_grad_sync_s = v[kTpSync];
  s.dp_comm_exposed_s = v[kDp];
  s.optimizer_s = v[kOptimizer];
  return s;
}

// The job's numbers from the reported ranks: the slowest rank's step and time by category, the
// largest peak's memory, FLOPs summed, bytes the largest per group. Host memory has no capacity
// the plan priced, so capacity_bytes and usable_bytes are 0 (not known).
Estimate measured_estimate(const Plan& plan, const std::vector<RankMeasurement>& ranks, int world, const char* device) {
  const auto& t = plan.train;
  Estimate e;
  e.source = StepSource::measured;
  e.model = plan.model.name;
  e.cluster = plan.cluster.name;
  e.params = total_params(plan.model);
  e.gpus = world;
  e.parallel = plan.parallel;
  e.train = t;
  e.micro_batches = t.global_batch / (plan.parallel.dp * plan.parallel.micro_batch);
  e.flops_model = model_flops(plan.model, t.global_batch, t.seq, AttentionFlops::causal);
  e.flops_model_paper = model_flops(plan.model, t.global_batch, t.seq, AttentionFlops::full);
  const RankMeasurement* slowest = &ranks.front();
  int64_t best_peak = -1;
  for (const auto& r : ranks) {
    if (r.memory.peak() > best_peak) {
      best_peak = r.memory.peak();
      e.memory = r.memory;
      e.peak_stage = r.pp;
    }
    if (r.step_time_s > slowest->step_time_s) slowest = &r;
    e.flops_hardware += r.flops;
    e.comm.tp = std::max(e.comm.tp, r.comm.tp);
    e.comm.dp = std::max(e.comm.dp, r.comm.dp);
    e.comm.pp = std::max(e.comm.pp, r.comm.pp);
    e.comm.cp = std::max(e.comm.cp, r.comm.cp);
  }
  e.step_time_s = slowest->step_time_s;
  e.time = slowest->time;
  e.measurement.other_s = slowest->other_s;
  // Throughput as the cost model defines it (sim/cost_model.cpp): tokens and model FLOPs per
  // step over the step time; MFU against the plan's cluster peak for the training dtype.
  if (e.step_time_s > 0) {
    e.tokens_per_s = static_cast<double>(t.global_batch * t.seq) / e.step_time_s;
    const auto& gpu = plan.cluster.gpu;
    set_flop_rates(e, t.dtype == Dtype::bf16 ? gpu.peak_flops_bf16 : gpu.peak_flops_fp32);
  }
  e.fits = true;
  e.measurement.device = device;
  return e;
}

}  // namespace

constexpr int kTraceTag = 900;  // below the pipeline's p2p tags (>= 1000), above the collectives'

Status Trainer::write_trace(double step_time_s) {
  const std::string mine = measured_trace_events(rec_.events(), rank_, coords_).dump();
  Comm& raw = host_raw();
  if (!opt_.emulated && rank_ != 0) {
    int64_t n = static_cast<int64_t>(mine.size());
    for (auto [ptr, bytes, tag] : {std::tuple<const void*, int64_t, int>{&n, 8, kTraceTag},
                                   std::tuple<const void*, int64_t, int>{mine.data(), n, kTraceTag + 1}}) {
      auto r = raw.isend(0, ptr, bytes, tag, GroupKind::world);
      if (!r) return r.error();
      if (auto st = raw.wait(*r, "trace to rank 0"); !st) return st;
    }
    return ok_status();
  }
  nlohmann::json events = nlohmann::json::parse(mine);
  for (int r = 1; !opt_.emulated && r < comm_.world(); ++r) {
    int64_t n = 0;
    if (auto st = raw.recv(r, &n, 8, kTraceTag, "trace from a rank"); !st) return st;
    std::string text(static_cast<size_t>(n), '\0');
    if (auto st = raw.recv(r, text.data(), n, kTraceTag + 1, "trace from a rank"); !st) return st;
    for (auto& e : nlohmann::json::parse(text)) events.push_back(std::move(e));
  }
  const auto& p = plan_.parallel;
  nlohmann::json other = {{"generator", "loom execute"}, {"device", compute_->device()}, {"step", opt_.steps},
                          {"step_time_s", step_time_s}, {"dp", p.dp}, {"tp", p.tp}, {"pp", p.pp}, {"vpp", p.vpp}};
  if (opt_.emulated) other["emulated_rank"] = rank_;
  const nlohmann::json doc = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}, {"otherData", other}};
  return write_text_file_atomic(opt_.trace_path, doc.dump() + "\n");
}

// Every rank's numbers to rank 0 (a sum over the world of one slot each). An emulated rank
// reports only itself.
Expected<std::vector<double>> Trainer::gather_rows(const RunRecord& rec) {
  const int W = comm_.world();
  std::vector<double> all(static_cast<size_t>(W * kFields), 0.0);
  std::copy(rec.row.begin(), rec.row.end(), all.begin() + rank_ * kFields);
  if (auto st = host_traced().all_reduce(world_, all.data(), static_cast<int64_t>(all.size())); !st) return st.error();
  return all;
}

Expected<nlohmann::json> Trainer::report(const RunRecord& rec) {
  auto all = gather_rows(rec);
  if (!all) return all.error();
  const int W = comm_.world();
  if (!opt_.emulated && rank_ != 0) return nlohmann::json::object();
  std::vector<int> reported;
  for (int r = 0; r < W; ++r)
    if (!opt_.emulated || r == rank_) reported.push_back(r);
  std::vector<RankMeasurement> ranks;
  std::vector<StageEstimate> stages(static_cast<size_t>(plan_.parallel.pp));
  for (size_t i = 0; i < stages.size(); ++i) {  // null in the report unless a rank of it reported
    stages[i].index = static_cast<int64_t>(i);
    stages[i].reported = false;
  }
  for (int r : reported) {
    const std::vector<double> v(all->begin() + r * kFields, all->begin() + (r + 1) * kFields);
    const Coords c = grid_->coords(r);
    ranks.push_back(rank_row(v, r, c));
    if ((c.dp == 0 && c.tp == 0) || opt_.emulated)
      stages[static_cast<size_t>(c.pp)] = stage_row(v, ranks.back(), m_, stage_layer_count(plan_.parallel, plan_.model.layers, c.pp));
  }
  Estimate e = measured_estimate(plan_, ranks, W, compute_->device());
  e.stages = std::move(stages);
  Measurement& m = e.measurement;
  m.steps = static_cast<int64_t>(rec.losses.size());
  m.step_times_s = rec.times_s;
  m.ranks = std::move(ranks);
  // One rank alone: its own step with local copies for communication, its share of the FLOPs,
  // and no loss of the model (partial sums stand in for reductions); the writer leaves out the
  // job's throughput and names its FLOPs "rank".
  if (opt_.emulated) m.emulated_rank = rank_;
  else m.losses = rec.losses;
  return estimate_to_json(e);
}

}  // namespace loom::exec
