// One description of a step's work (sim/stage_work.hpp): the cost model, the event simulator
// and the planner's memory bound read it, so over a matrix of configurations they agree term
// by term. Each of the three drifts the description replaced has a test of its own below.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>

#include "planner/search.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/stage_split.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

// The simulator and the cost model add the same per-op and per-message times in a different
// order (a few thousand additions of doubles), so they agree to ~1e-12 relative; 1e-9 still
// catches any task or message one of them leaves out (the smallest, a cross-entropy
// all-reduce, is ~1e-6 of a step).
constexpr double kExact = 1e-9;
bool close(double a, double b, double rel = kExact) {
  return std::fabs(a - b) <= rel * std::max({std::fabs(a), std::fabs(b), 1e-30});
}

struct Job {
  ModelSpec model;
  ClusterSpec cluster;
  TrainSpec train;
};

// `cluster` "dgx-h100+profile": a DGX H100 node whose GPUs run on the measured H100 profile
// (h100-sxm's), so that a profile is tried with tp, pp and dp > 1.
Job job(const std::string& model, const std::string& cluster, int64_t gpus, int64_t batch, int64_t seq) {
  auto m = load_model(model, "test", nullptr);
  REQUIRE(m.ok());
  const bool profiled = cluster == "dgx-h100+profile";
  auto c = load_cluster(profiled ? "dgx-h100" : cluster, "test");
  REQUIRE(c.ok());
  if (profiled) {
    auto h100 = load_cluster("h100-sxm", "test");
    REQUIRE(h100.ok());
    REQUIRE(h100->calibration != nullptr);
    c->calibration = h100->calibration;
  }
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  TrainSpec t;
  t.global_batch = batch;
  t.seq = seq;
  t.dp_bucket_bytes = 40'000'000 * 2;
  return {*m, *c, t};
}

bool valid(const Job& j, const ParallelConfig& p) {
  return validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; }).ok();
}

// Every configuration of the matrix on one job: dp/tp/pp splits, SP on and off, ZeRO 0-3,
// each schedule, recompute none and full.
void for_each_config(const Job& j, const std::function<void(const ParallelConfig&)>& f) {
  const int64_t n = j.cluster.gpus;
  for (int64_t tp = 1; tp <= n; tp *= 2)
    for (int64_t pp = 1; tp * pp <= n; pp *= 2)
      for (bool sp : {false, true})
        for (int zero : {0, 1, 2, 3})
          for (Schedule s : {Schedule::one_f_one_b, Schedule::gpipe, Schedule::interleaved})
            for (Recompute r : {Recompute::none, Recompute::full}) {
              ParallelConfig p;
              p.tp = tp;
              p.pp = pp;
              p.dp = n / (tp * pp);
              p.sp = sp;
              p.zero = zero;
              p.schedule = s;
              p.vpp = s == Schedule::interleaved ? 2 : 1;
              p.recompute = r;
              p.micro_batch = 1;
              if ((s != Schedule::one_f_one_b && pp == 1) || (sp && tp == 1) || !valid(j, p)) continue;
              f(p);
              // And the last balanced split the planner tries (lighter first and last stages).
              p.stage_layers = stage_split_candidates(j.model.layers, pp, p.vpp).back();
              if (pp > 1 && !p.stage_layers.empty() && valid(j, p)) f(p);
            }
}

// Bytes each stage sends per step over the pipeline, from the simulator's tasks.
std::vector<int64_t> simulated_pp_bytes(const SimResult& r, int64_t pp) {
  std::vector<int64_t> out(pp, 0);
  for (const SimTask& t : r.tasks)
    if (t.kind == TaskKind::pp_send) out[t.stage] += t.bytes;
  return out;
}

void check_agreement(const Job& j, const ParallelConfig& p) {
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate est = cm.evaluate(p, /*overlap=*/false);
  SimOptions o;
  o.overlap = false;
  o.contention = false;
  auto r = simulate(cm, p, o);
  REQUIRE(r.ok());
  INFO(j.model.name << " on " << j.cluster.name << ": dp " << p.dp << " tp " << p.tp << " pp " << p.pp << " sp "
                    << p.sp << " zero " << p.zero << " schedule " << static_cast<int>(p.schedule) << " recompute "
                    << static_cast<int>(p.recompute) << "; simulated " << r->step_time_s << " s, analytical "
                    << est.step_time_s << " s");
  // Term by term: compute, tensor-parallel (with SP's per-step all-reduce), data-parallel
  // with nothing hidden, and the optimizer are the same sums of the same prices.
  // Stage by stage, and for the step (the slowest stage's compute and tp, the largest
  // optimizer; the step's dp term is the largest stage's in the analytical model and the
  // slowest stage's in the simulator, so dp is compared per stage).
  CHECK(close(r->time.compute_s, est.time.compute_s));
  CHECK(close(r->time.tp_comm_s, est.time.tp_comm_s));
  CHECK(close(r->time.ep_comm_s, est.time.ep_comm_s));  // MoE all-to-alls and expert tp
  CHECK(close(r->time.optimizer_s, est.time.optimizer_s));
  const double m = static_cast<double>(est.micro_batches);
  for (int64_t i = 0; i < p.pp; ++i) {
    const StageEstimate& se = est.stages[i];
    const TimeBreakdown& st = r->stages[i].time;
    CHECK(close(st.compute_s, m * (se.forward_s + se.backward_s + se.recompute_s)));
    CHECK(close(st.tp_comm_s, m * se.tp_comm_s + se.tp_grad_sync_s));
    CHECK(close(st.ep_comm_s, m * se.ep_comm_s));
    CHECK(close(st.dp_comm_s, se.dp_comm_exposed_s));
    CHECK(close(st.optimizer_s, se.optimizer_s));
  }
  if (p.pp == 1) CHECK(close(r->time.dp_comm_s, est.time.dp_comm_s));
  // Pipeline bytes per stage: the simulator's sends are the description's messages.
  const auto pp_bytes = simulated_pp_bytes(*r, p.pp);
  for (int64_t i = 0; i < p.pp; ++i) CHECK(pp_bytes[i] == est.stages[i].comm.pp);
  // The rest of the step is the pipeline's fill, drain and transfers, which the analytical
  // model writes in closed form ((p-1)/v micro-batch times and (m v + p - 1) transfers each
  // way, Narayanan et al. 2021) and the simulator plays out; without a pipeline both are zero.
  const double rest_sim = r->time.pp_comm_s + r->time.bubble_s, rest_est = est.time.pp_comm_s + est.time.bubble_s;
  if (p.pp == 1) {
    CHECK(rest_sim <= kExact * r->step_time_s);
    CHECK(rest_est == 0);
    CHECK(close(r->step_time_s, est.step_time_s));
  }
}

}  // namespace

TEST_CASE("stage work: the simulator without overlap equals the analytical step term by term") {
  const std::vector<Job> jobs = {
      job("gpt2-350m", "dgx-h100", 8, 16, 1024),     // GPT, the pipeline-bytes case among them
      job("tinyllama-1.1b", "dgx-a100", 8, 16, 512),  // Llama: GQA, SwiGLU, RoPE
      job("gpt2-124m", "dgx-h100+profile", 8, 8, 1024),  // with the H100 calibration profile
  };
  int64_t configs = 0;
  for (const Job& j : jobs)
    for_each_config(j, [&](const ParallelConfig& p) {
      check_agreement(j, p);
      ++configs;
    });
  CHECK(configs > 300);
}

// Mixture of experts (sim/moe.hpp): a Mixtral-shaped model of 4 layers, the first dense (so
// stages differ in their MoE layers), on 16 GPUs of two nodes (the ep group crosses the NICs
// at ep 16): every ep and etp the rules allow, with tp, pp, ZeRO 0/1 and recompute.
TEST_CASE("stage work: MoE configurations agree between the simulator and the cost model", "[moe]") {
  Job j = job("mixtral-8x7b", "dgx-h100", 16, 32, 256);
  j.model.layers = 4;
  j.model.dense_layers = 1;
  int64_t configs = 0;
  for (int64_t tp : {1, 2, 4})
    for (int64_t pp : {1, 2})
      for (int64_t ep : {1, 2, 4, 8})
        for (int64_t etp : {1, 2})
          for (int zero : {0, 1})
            for (Recompute r : {Recompute::none, Recompute::full}) {
              ParallelConfig p;
              p.tp = tp, p.pp = pp, p.dp = 16 / (tp * pp), p.sp = tp > 1, p.ep = ep, p.etp = etp;
              p.zero = zero, p.recompute = r;
              if (!valid(j, p)) continue;
              check_agreement(j, p);
              ++configs;
            }
  CHECK(configs > 50);
}

TEST_CASE("stage work: pipeline messages carry what each tp rank holds (b s h, b s h / t with SP)") {
  // The reproduction: gpt2-350m on 8 dgx-h100 GPUs, global batch 16, tp 4, pp 2, no SP.
  // The simulator used to send b s h / t (a quarter): 0.0096 ms against the cost model's 0.31 ms.
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  const CostModel cm(j.model, j.cluster, j.train);
  for (bool sp : {false, true}) {
    ParallelConfig p;
    p.tp = 4;
    p.pp = 2;
    p.sp = sp;
    REQUIRE(valid(j, p));
    const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
    const Message* send = w.find(Group::pp, "pp send");
    REQUIRE(send != nullptr);
    CHECK(send->bytes == 2 * 1024 * 1024 / (sp ? 4 : 1));  // bf16 x b s h (/ t with SP)
    auto r = simulate(cm, p, SimOptions{});
    REQUIRE(r.ok());
    for (const SimTask& t : r->tasks)
      if (t.kind == TaskKind::pp_send) CHECK(t.bytes == send->bytes);
    const Estimate est = cm.evaluate(p);
    CHECK(simulated_pp_bytes(*r, 2)[0] == est.stages[0].comm.pp);
  }
}

TEST_CASE("stage work: the simulator schedules SP's all-reduce of replicated gradients") {
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  const CostModel cm(j.model, j.cluster, j.train);
  ParallelConfig p;
  p.tp = 8;
  p.sp = true;
  REQUIRE(valid(j, p));
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const Message* sync = w.find(Group::tp, "tp replicated gradients");
  REQUIRE(sync != nullptr);
  CHECK(sync->cadence == Cadence::step);
  // Norm gains and biases (4h), row-parallel biases (2h) per layer, positions and the final norm.
  const int64_t h = 1024;
  CHECK(sync->bytes == 2 * (24 * 6 * h + 1024 * h + 2 * h));
  SimOptions o;
  o.overlap = false;
  auto r = simulate(cm, p, o);
  REQUIRE(r.ok());
  const Estimate est = cm.evaluate(p, false);
  CHECK(est.stages[0].tp_grad_sync_s > 0);
  CHECK(close(r->time.tp_comm_s, est.time.tp_comm_s));
  bool found = false;
  for (const SimTask& t : r->tasks)
    if (t.kind == TaskKind::tp && t.micro_batch < 0) found = found || close(t.dur_s, est.stages[0].tp_grad_sync_s);
  CHECK(found);
}

TEST_CASE("stage work: the memory bound is the first and the heaviest stage's buffers, never above the peak") {
  // With uneven stages the first stage (most micro-batches in flight) may hold fewer layers
  // than a middle one whose peak is larger: the bound takes both.
  for (const Job& j : {job("gpt2-350m", "dgx-h100", 8, 16, 1024), job("gpt2-124m", "dgx-h100+profile", 8, 8, 1024)})
    for_each_config(j, [&](const ParallelConfig& p) {
      const Estimate est = CostModel(j.model, j.cluster, j.train).evaluate(p);
      const int64_t bound = memory_lower_bound(j.model, j.cluster, j.train, p);
      size_t heaviest = 0;
      for (size_t i = 1; i < est.stages.size(); ++i)
        if (est.stages[i].layers > est.stages[heaviest].layers) heaviest = i;
      CHECK(bound <= est.memory.peak());
      CHECK(bound == std::max(est.stages[0].memory.peak(), est.stages[heaviest].memory.peak()));
    });
}

TEST_CASE("stage work: the pruned search counts and ranks as the exhaustive one, at several headrooms") {
  // The reproduction: gpt2-1.5b on one h100-sxm (with its calibration profile), global
  // batch 1, headroom 0.665: the bound skipped the profile's workspace and rejected 20 where
  // the exhaustive search rejected 12.
  struct Case {
    const char* model;
    const char* cluster;
    int64_t gpus, batch;
  };
  for (const Case& k : {Case{"gpt2-1.5b", "h100-sxm", 1, 1}, Case{"gpt2-350m", "dgx-h100+profile", 4, 8},
                        Case{"tinyllama-1.1b", "dgx-h100", 8, 16}})
    for (double headroom : {0.0, 0.5, 0.665, 0.9}) {
      Job j = job(k.model, k.cluster, k.gpus, k.batch, 1024);
      j.cluster.runtime_memory.memory_headroom = headroom;
      auto space = make_search_space(j.model, j.cluster, j.train, SearchPins{});
      REQUIRE(space.ok());
      SearchOptions pruned, exhaustive;
      exhaustive.prune = false;
      const SearchResult a = search(j.model, j.cluster, *space, pruned);
      const SearchResult b = search(j.model, j.cluster, *space, exhaustive);
      INFO(k.model << " on " << k.gpus << " " << k.cluster << ", headroom " << headroom);
      CHECK(a.considered == b.considered);
      CHECK(a.feasible == b.feasible);
      CHECK(a.rejected == b.rejected);
      REQUIRE(a.top.size() == b.top.size());
      for (size_t i = 0; i < a.top.size(); ++i) {
        CHECK(a.top[i].step_time_s == b.top[i].step_time_s);
        CHECK(a.top[i].memory.peak() == b.top[i].memory.peak());
      }
    }
}

TEST_CASE("stage work: ops add up to the published FLOP counts, buffers to the categories") {
  // GPT-3-like layer (Narayanan et al. 2021, appendix): forward 24 b s h^2 + 4 b s^2 h per
  // layer, backward twice; logits 2 b s h V, backward twice; the stage's ops sum to that / t.
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  ParallelConfig p;
  p.tp = 2;
  p.pp = 2;
  p.dp = 2;
  REQUIRE(valid(j, p));
  const int64_t b = 1, s = 1024, h = 1024, L = 12;
  const FlopCount layer = 24 * FlopCount(b) * s * h * h + 4 * FlopCount(b) * s * s * h;
  const StageWork first = build_stage_work(j.model, j.cluster, j.train, p, 0);
  CHECK(first.flops_per_micro_batch() == 3 * L * layer / 2);
  const StageWork last = build_stage_work(j.model, j.cluster, j.train, p, 1);
  const FlopCount logits = 2 * FlopCount(b) * s * h * vocab_per_rank(j.model.vocab, 2);
  CHECK(last.flops_per_micro_batch() == 3 * L * layer / 2 + 3 * logits);
  int64_t total = 0;
  for (const Buffer& buf : first.buffers) total += buf.bytes;
  CHECK(total == first.memory().peak());
}

TEST_CASE("simulate: a step with more tasks than the limit is refused before anything is built") {
  // A global batch of 2^28 sequences used to make `loom simulate` allocate until it died
  // (bad_alloc, exit 134): 2^26 micro-batches per replica, ~10^9 tasks.
  Job j = job("gpt2-124m", "dgx-a100", 4, int64_t{1} << 28, 64);
  ParallelConfig p;
  p.pp = 4;
  REQUIRE(valid(j, p));
  const CostModel cm(j.model, j.cluster, j.train);
  auto r = simulate(cm, p, SimOptions{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("over the limit of 20000000") != std::string::npos);
  CHECK(r.error().message.find("use a larger micro-batch or dp") != std::string::npos);
}
