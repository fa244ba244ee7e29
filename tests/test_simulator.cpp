// The event simulator: schedule tables, exactness against the analytical model where the
// two must agree, the bubble formulas, in-flight micro-batches, the trace format and the CLI.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <tuple>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/schedule.hpp"
#include "sim/shared_sweep.hpp"
#include "sim/simulator.hpp"
#include "sim/trace.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
using namespace loom::test;

namespace {

// Relative tolerance of the exactness checks: the simulator and the cost model add the same
// per-micro-batch times in a different order (a few hundred additions of doubles), so they
// agree to ~1e-13 relative; 1e-9 leaves room and still catches any missing task.
constexpr double kExact = 1e-9;

bool close(double a, double b, double rel = kExact) { return std::fabs(a - b) <= rel * std::max(std::fabs(a), std::fabs(b)); }

ParallelConfig config(int64_t dp, int64_t tp, int64_t pp, Schedule s, int64_t vpp, int64_t mb = 1) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.schedule = s;
  p.vpp = vpp;
  p.micro_batch = mb;
  return p;
}

// Uniform stages, no communication: t = 3 per micro-batch (forward 1, backward 2).
SimInputs uniform(Schedule s, int64_t pp, int64_t vpp, int64_t m) {
  StageInputs st;
  st.forward_s = 1;
  st.backward_s = 2;
  st.layers = 4 * vpp;
  return equal_stages(s, pp, vpp, m, st);
}

ClusterSpec a100(int64_t gpus) {
  auto c = load_cluster("dgx-a100", "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

}  // namespace

TEST_CASE("schedule tables: every slot once, forward before backward, Megatron's warm-up") {
  for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::interleaved})
    for (int64_t p : {1, 2, 3, 4, 8})
      for (int64_t v : {1, 2, 3})
        for (int64_t m : {1, 2, 4, 8, 12, 16}) {
          if ((s == Schedule::interleaved) != (v > 1)) continue;
          if (s == Schedule::interleaved && (p < 2 || m % p != 0)) continue;
          const auto t = make_schedule(s, p, v, m);
          REQUIRE(static_cast<int64_t>(t.size()) == p);
          for (int64_t r = 0; r < p; ++r) {
            INFO("schedule " << static_cast<int>(s) << " p " << p << " v " << v << " m " << m << " rank " << r);
            REQUIRE(static_cast<int64_t>(t[r].size()) == 2 * m * v);
            std::set<std::tuple<int, int, int>> seen;
            for (const Slot& x : t[r]) {
              CHECK(seen.insert({x.micro_batch, x.chunk, static_cast<int>(x.phase)}).second);
              if (x.phase == Phase::backward) CHECK(seen.count({x.micro_batch, x.chunk, 0}) == 1);
            }
            int64_t warm = 0;
            while (warm < static_cast<int64_t>(t[r].size()) && t[r][warm].phase == Phase::forward) ++warm;
            CHECK(std::min(warm, m * v) == std::min(warmup_slots(s, p, v, r, m) + (s == Schedule::gpipe ? 0 : 1), m * v));
            // The simulator's in-flight count is the memory model's.
            CHECK(peak_in_flight(t[r]) == in_flight_chunks(s, p, v, r, m));
          }
        }
}

TEST_CASE("interleaved table of Megatron-LM: pp 2, vpp 2, 4 micro-batches, rank 0") {
  // Warm-up (2 - 0 - 1) * 2 + (2 - 1) * 2 = 4 forwards; chunks visited in groups of pp
  // micro-batches; backward visits chunk 1 first.
  using P = Phase;
  const std::vector<Slot> want = {
      {0, 0, P::forward},  {1, 0, P::forward},  {0, 1, P::forward},  {1, 1, P::forward},
      {2, 0, P::forward},  {0, 1, P::backward}, {3, 0, P::forward},  {1, 1, P::backward},
      {2, 1, P::forward},  {0, 0, P::backward}, {3, 1, P::forward},  {1, 0, P::backward},
      {2, 1, P::backward}, {3, 1, P::backward}, {2, 0, P::backward}, {3, 0, P::backward}};
  CHECK(make_schedule(Schedule::interleaved, 2, 2, 4)[0] == want);
  // 1F1B, pp 4, rank 1: warm-up 2, then F B pairs, then the last 2 backwards.
  const auto t = make_schedule(Schedule::one_f_one_b, 4, 1, 4)[1];
  const std::vector<Slot> want1 = {{0, 0, P::forward},  {1, 0, P::forward},  {2, 0, P::forward},  {0, 0, P::backward},
                                   {3, 0, P::forward},  {1, 0, P::backward}, {2, 0, P::backward}, {3, 0, P::backward}};
  CHECK(t == want1);
}

TEST_CASE("uniform stages: bubble fraction (p-1)/m for 1F1B and GPipe, (p-1)/(v m) interleaved") {
  // Narayanan et al. 2021 Sec. 2.2: step = (m + (p - 1)/v) (t_f + t_b) with equal stages.
  for (int64_t p : {2, 4, 8})
    for (int64_t m : {8, 16, 64}) {
      for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b}) {
        auto r = simulate(uniform(s, p, 1, m), no_overlap());
        REQUIRE(r.ok());
        INFO("p " << p << " m " << m << " schedule " << static_cast<int>(s));
        CHECK(close(r->step_time_s, 3.0 * (m + p - 1)));
        CHECK(close(r->time.bubble_s / (3.0 * m), static_cast<double>(p - 1) / m));
        CHECK(close(r->time.compute_s, 3.0 * m));
      }
      for (int64_t v : {2, 3, 4}) {
        auto r = simulate(uniform(Schedule::interleaved, p, v, m), no_overlap());
        REQUIRE(r.ok());
        INFO("interleaved p " << p << " v " << v << " m " << m);
        CHECK(close(r->step_time_s, 3.0 * (m + static_cast<double>(p - 1) / v)));
        CHECK(close(r->time.bubble_s / (3.0 * m), static_cast<double>(p - 1) / (v * m)));
      }
    }
}

TEST_CASE("GPipe and 1F1B: same step, different peak in-flight micro-batches (the memory model's)") {
  const int64_t p = 4, m = 16;
  auto g = simulate(uniform(Schedule::gpipe, p, 1, m), SimOptions{});
  auto f = simulate(uniform(Schedule::one_f_one_b, p, 1, m), SimOptions{});
  REQUIRE(g.ok());
  REQUIRE(f.ok());
  CHECK(g->step_time_s == f->step_time_s);  // both (m + p - 1) * 3, exact in binary
  for (int64_t i = 0; i < p; ++i) {
    CHECK(g->stages[i].peak_in_flight == m);
    CHECK(f->stages[i].peak_in_flight == p - i);
    CHECK(g->stages[i].peak_in_flight == in_flight_chunks(Schedule::gpipe, p, 1, i, m));
    CHECK(f->stages[i].peak_in_flight == in_flight_chunks(Schedule::one_f_one_b, p, 1, i, m));
  }
}

TEST_CASE("with overlap off and free links the simulated step is CostModel's step") {
  // GPT-2 350M, 24 layers on pp 4: stages 1 and 2 are equal, stage 0 adds the embedding and
  // stage 3 the logits (the slowest). With free links the analytical model is exact for 1F1B
  // and GPipe: the last stage runs m micro-batches without waiting and the pipeline fills and
  // drains through the others once, m t_3 + sum_{i<3} t_i, then the optimizer (stage 0's,
  // the largest, ends the step). Interleaved is compared on uniform stages above: the
  // analytical (sum - slowest)/v is exact only when the stages are equal.
  const ClusterSpec c = ideal_cluster(8);
  const CostModel cm = gpt2_350m(c, 64);
  for (Schedule s : {Schedule::one_f_one_b, Schedule::gpipe})
    for (Recompute rc : {Recompute::none, Recompute::full}) {
      ParallelConfig p = config(1, 2, 4, s, 1, 2);
      p.recompute = rc;
      REQUIRE(validate_config(cm.model(), c, cm.train(), p, [](const std::string& f) { return f; }).ok());
      auto r = simulate(cm, p, no_overlap());
      REQUIRE(r.ok());
      const Estimate est = cm.evaluate(p);
      INFO("schedule " << static_cast<int>(s) << " recompute " << static_cast<int>(rc) << " sim " << r->step_time_s
                       << " analytical " << est.step_time_s);
      CHECK(close(r->step_time_s, est.step_time_s));
      CHECK(close(r->analytical_step_s, est.step_time_s));
      CHECK(close(r->time.compute_s, est.time.compute_s));
      CHECK(close(r->time.bubble_s, est.time.bubble_s, 1e-6));  // bubble is a difference of ~1 s terms
      for (int64_t i = 0; i < p.pp; ++i) CHECK(r->stages[i].peak_in_flight == est.stages[i].in_flight);
    }
}

TEST_CASE("communication: overlap hides what the analytical model exposes, never more than compute") {
  const ClusterSpec c = a100(64);
  const CostModel cm = gpt2_350m(c, 256);
  for (int zero : {0, 1, 2, 3}) {
    ParallelConfig p = config(8, 2, 4, Schedule::interleaved, 2, 2);
    p.zero = zero;
    auto on = simulate(cm, p, SimOptions{});
    auto off = simulate(cm, p, no_overlap());
    REQUIRE(on.ok());
    REQUIRE(off.ok());
    INFO("zero " << zero << " overlap " << on->step_time_s << " no overlap " << off->step_time_s);
    CHECK(on->step_time_s <= off->step_time_s);
    CHECK(on->step_time_s >= on->time.compute_s);
    CHECK(on->time.total_s() == Approx(on->step_time_s).epsilon(1e-9));
    for (const StageSim& s : on->stages)  // each stage's breakdown adds up to the step
      CHECK(s.time.total_s() == Approx(on->step_time_s).epsilon(1e-9));
    auto again = simulate(cm, p, SimOptions{});  // deterministic
    CHECK(again->step_time_s == on->step_time_s);
  }
}

TEST_CASE("dp buckets of stages sharing a node's NICs stretch each other") {
  // 16 GPUs, order tp-pp-dp: node 0 holds every stage of replica 0, node 1 of replica 1, so
  // the dp rings of all 8 stages cross the same NICs; when their buckets overlap they share.
  // ZeRO-2 reduce-scatters every micro-batch, so in 1F1B's steady state the stages' buckets
  // overlap.
  const ClusterSpec c = a100(16);
  const CostModel cm = gpt2_350m(c, 64);
  ParallelConfig p = config(2, 1, 8, Schedule::one_f_one_b, 1, 2);
  p.order = "tp-pp-dp";
  p.zero = 2;
  SimOptions plain;
  plain.contention = false;
  auto shared = simulate(cm, p, SimOptions{});
  auto alone = simulate(cm, p, plain);
  REQUIRE(shared.ok());
  REQUIRE(alone.ok());
  CHECK(shared->contention_s > 0);
  CHECK(alone->contention_s == 0);
  CHECK(shared->step_time_s >= alone->step_time_s);
}

TEST_CASE("trace: Chrome trace event format, one process per rank, one thread per stream") {
  const ClusterSpec c = a100(64);
  const CostModel cm = gpt2_350m(c, 256);
  ParallelConfig p = config(8, 2, 4, Schedule::interleaved, 2, 2);
  p.zero = 1;
  p.recompute = Recompute::selective;
  auto r = simulate(cm, p, SimOptions{});
  REQUIRE(r.ok());
  const auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  const std::vector<int64_t> ranks = {0, 1, 16, 63};
  const std::string path = temp_file("trace.json", trace_json(*r, p, *grid, ranks).dump());
  const auto j = nlohmann::json::parse(slurp(path));  // what a viewer reads
  REQUIRE(j.is_object());
  REQUIRE(j["traceEvents"].is_array());
  const std::regex compute_name(R"((F|B|R) mb\d+ c\d+|optimizer)");
  const std::regex process(R"(rank (\d+) \(dp (\d+), pp (\d+), tp (\d+)\))");
  std::set<int64_t> pids;
  std::map<std::pair<int64_t, int64_t>, double> last_end;  // (pid, tid) -> end of the previous event
  std::set<std::string> names;
  for (const auto& e : j["traceEvents"]) {
    REQUIRE(e["name"].is_string());
    REQUIRE(e["ph"].is_string());
    REQUIRE(e["pid"].is_number_integer());
    REQUIRE(e["tid"].is_number_integer());
    const std::string ph = e["ph"];
    if (ph == "M") {
      REQUIRE(e["args"].is_object());
      if (e["name"] == "process_name") {
        std::smatch sm;
        const std::string n = e["args"]["name"];
        REQUIRE(std::regex_match(n, sm, process));
        const Coords co = grid->coords(std::stoll(sm[1]));
        CHECK(std::stoll(sm[1]) == e["pid"].get<int64_t>());
        CHECK((co.dp == std::stoll(sm[2]) && co.pp == std::stoll(sm[3]) && co.tp == std::stoll(sm[4])));
        pids.insert(e["pid"].get<int64_t>());
      }
      if (e["name"] == "thread_name") CHECK(e["args"]["name"].is_string());
      continue;
    }
    REQUIRE(ph == "X");
    REQUIRE(e["ts"].is_number());
    REQUIRE(e["dur"].is_number());
    CHECK(e["ts"].get<double>() >= 0);
    CHECK(e["dur"].get<double>() > 0);
    const int64_t tid = e["tid"];
    CHECK((tid >= 0 && tid < trace_names::kStreams));
    const std::string name = e["name"];
    names.insert(name.substr(0, name.find(' ')));
    if (tid == 0) {
      CHECK(std::regex_match(name, compute_name));
      // A stream runs one task at a time (the compute events are in stream order).
      auto key = std::make_pair(e["pid"].get<int64_t>(), tid);
      CHECK(e["ts"].get<double>() >= last_end[key] - 1e-6);
      last_end[key] = e["ts"].get<double>() + e["dur"].get<double>();
    }
  }
  CHECK(pids == std::set<int64_t>(ranks.begin(), ranks.end()));
  for (const char* n : {"F", "B", "R", "optimizer", "tp", "dp", "pp"}) CHECK(names.count(n) == 1);
  CHECK(slurp(path).find("\"dp reduce_scatter bucket 0\"") != std::string::npos);
  CHECK(slurp(path).find("\"pp send F mb3\"") != std::string::npos);
  CHECK(slurp(path).find("\"pp recv B mb3\"") != std::string::npos);
}

TEST_CASE("loom simulate: a saved plan, --json, --trace, --ranks") {
  const std::string plan = temp_file("sim_plan.json", "");
  LoomRun a = run_loom("predict --model gpt2-350m --cluster dgx-a100 --gpus 32 --global-batch 128 --tp 2 --pp 4 "
                       "--zero 1 --schedule interleaved --vpp 2 -o " + plan);
  REQUIRE(a.code == 0);
  const std::string trace = temp_file("sim_trace.json", "");
  LoomRun r = run_loom("simulate " + plan + " --json --trace " + trace + " --ranks 0-1,31");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["step_time_s"].get<double>() > 0);
  CHECK(j["analytical_step_time_s"].get<double>() > 0);
  CHECK(j["stages"].size() == 4);
  for (const char* k : {"compute", "tp_comm", "dp_comm", "pp_comm", "bubble", "optimizer"}) CHECK(j["time_s"].contains(k));
  std::set<int64_t> pids;
  const auto tj = nlohmann::json::parse(slurp(trace));
  for (const auto& e : tj["traceEvents"]) pids.insert(e["pid"].get<int64_t>());
  CHECK(pids == std::set<int64_t>{0, 1, 31});

  LoomRun t = run_loom("simulate " + plan);
  CHECK(t.code == 0);
  CHECK(t.out.find("simulated step") != std::string::npos);

  LoomRun bad = run_loom("simulate " + plan + " --ranks 0-99");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--ranks") != std::string::npos);
  CHECK(bad.out.empty());
  LoomRun missing = run_loom("simulate /nonexistent/plan.json");
  CHECK(missing.code == 2);
}

namespace {

SimTask comm_task(TaskKind k, int32_t stage, double dur) {
  SimTask t;
  t.kind = k;
  t.stage = stage;
  t.dur_s = dur;
  return t;
}

}  // namespace

TEST_CASE("shared links: processor sharing gives each running collective an equal share") {
  // One stage: a gradient reduction of 4 s of work and a gather of 2 s start together on the
  // same rings. Both run at half speed until the gather ends at 4 s (2 s of work done each);
  // the reduction's last 2 s then run alone: it ends at 6 s. A compute task of 1 s after the
  // gather starts at 4 s.
  NicSharing ns;
  ns.solo_bytes_per_s = {1e9};
  ns.tp_shares_nic = {0};
  std::vector<SimTask> tasks = {comm_task(TaskKind::dp_grad, 0, 4), comm_task(TaskKind::dp_gather, 0, 2),
                                comm_task(TaskKind::forward, 0, 1)};
  auto added = sweep_shared(tasks, {{1, 2, 1.0}}, ns);
  REQUIRE(added.ok());
  CHECK(tasks[1].start_s == 0);
  CHECK(tasks[1].end_s() == Approx(4).epsilon(1e-12));
  CHECK(tasks[0].end_s() == Approx(6).epsilon(1e-12));
  CHECK(tasks[2].start_s == Approx(4).epsilon(1e-12));
  CHECK(*added == Approx(4).epsilon(1e-12));  // (6 - 4) + (4 - 2)
}

TEST_CASE("shared links: an edge at frac f fires once the sharing task has done f of its work") {
  // A 4 s gather shares the rings with a 4 s reduction from 0 s: each runs at half speed. A
  // forward that may start a quarter of the way into the gather (ZeRO 1/2's first bucket
  // landed) starts when 1 s of its work is done, at 2 s, not at the gather's end (8 s).
  NicSharing ns;
  ns.solo_bytes_per_s = {1e9};
  ns.tp_shares_nic = {0};
  std::vector<SimTask> tasks = {comm_task(TaskKind::dp_grad, 0, 4), comm_task(TaskKind::dp_gather_params, 0, 4),
                                comm_task(TaskKind::forward, 0, 1)};
  REQUIRE(sweep_shared(tasks, {{1, 2, 0.25}}, ns).ok());
  CHECK(tasks[2].start_s == Approx(2).epsilon(1e-12));
  CHECK(tasks[1].end_s() == Approx(8).epsilon(1e-12));
  // frac 0 at the start, frac 1 at the end, as before.
  std::vector<SimTask> ends = {comm_task(TaskKind::dp_grad, 0, 4), comm_task(TaskKind::dp_gather_params, 0, 4),
                               comm_task(TaskKind::forward, 0, 1), comm_task(TaskKind::forward, 0, 1)};
  REQUIRE(sweep_shared(ends, {{1, 2, 0.0}, {1, 3, 1.0}}, ns).ok());
  CHECK(ends[2].start_s == 0);
  CHECK(ends[3].start_s == Approx(8).epsilon(1e-12));
}

TEST_CASE("shared links: a node's NICs split between two stages' dp rings by their ring edges") {
  // Two stages, each priced alone at 100 GB/s; a node carries 1 ring edge of stage 0 and 3 of
  // stage 1 on 200 GB/s of NICs. Together each edge gets 200/4 = 50 GB/s: stage 0 runs at half
  // speed, stage 1 too. Two 1 s reductions started together end at 2 s.
  NicSharing ns;
  ns.solo_bytes_per_s = {100e9, 100e9};
  ns.tp_shares_nic = {0, 0};
  ns.nic_bytes_per_s = 200e9;
  ns.node_patterns = {{1, 3}};
  std::vector<SimTask> tasks = {comm_task(TaskKind::dp_grad, 0, 1), comm_task(TaskKind::dp_grad, 1, 1)};
  auto added = sweep_shared(tasks, {}, ns);
  REQUIRE(added.ok());
  CHECK(tasks[0].end_s() == Approx(2).epsilon(1e-12));
  CHECK(tasks[1].end_s() == Approx(2).epsilon(1e-12));
  // A tensor-parallel collective shares the stage's rings only where tp_shares_nic says so.
  ns.tp_shares_nic = {1, 0};
  std::vector<SimTask> two = {comm_task(TaskKind::dp_grad, 0, 1), comm_task(TaskKind::tp, 0, 1),
                              comm_task(TaskKind::tp, 1, 1)};
  REQUIRE(sweep_shared(two, {}, ns).ok());
  CHECK(two[0].end_s() == Approx(2).epsilon(1e-12));
  CHECK(two[1].end_s() == Approx(2).epsilon(1e-12));
  CHECK(two[2].end_s() == 1);  // stage 1's tp stays inside its node
  // A cycle is an error, not a hang.
  std::vector<SimTask> loop = {comm_task(TaskKind::forward, 0, 1), comm_task(TaskKind::forward, 0, 1)};
  CHECK_FALSE(sweep_shared(loop, {{0, 1, 1.0}, {1, 0, 1.0}}, ns).ok());
}

TEST_CASE("ZeRO-3 with recompute: each layer's recompute runs under that layer's gather, before its backward") {
  // FSDP gathers a layer in its pre-backward hook, then the checkpointed forward reruns: the
  // recompute of piece l directly precedes the backward of piece l, one gather for both.
  const ClusterSpec c = a100(16);
  const CostModel cm = gpt2_350m(c, 64);
  ParallelConfig p = config(8, 2, 1, Schedule::one_f_one_b, 1, 2);
  p.zero = 3;
  p.recompute = Recompute::selective;
  auto r = simulate(cm, p, SimOptions{});
  REQUIRE(r.ok());
  std::vector<TaskKind> compute;
  int64_t gathers = 0;
  for (const SimTask& t : r->tasks) {
    if (t.micro_batch != 0 || t.phase != Phase::backward) continue;
    if (t.kind == TaskKind::recompute || t.kind == TaskKind::backward) compute.push_back(t.kind);
    gathers += t.kind == TaskKind::dp_gather;
  }
  REQUIRE(compute.size() == 2 * 24);  // 24 layers, one piece each
  for (size_t i = 0; i < compute.size(); i += 2) {
    CHECK(compute[i] == TaskKind::recompute);
    CHECK(compute[i + 1] == TaskKind::backward);
  }
  CHECK(gathers == 24);
}

TEST_CASE("analytical and simulated steps agree within 3% on the ten best of the README's plans") {
  // The searches README.md shows (`loom plan` for GPT-3 175B, GPT-2 350M and Llama 3 70B at
  // 8192 tokens, whose ten best mix zb-v, ZeRO-3 and context parallelism): the ten best by the
  // simulator, what the planner ranks by, each priced by both models.
  struct Job {
    const char *model, *cluster;
    int64_t gpus, batch, seq;
  };
  for (const Job& j : {Job{"gpt3-175b", "dgx-a100", 1024, 1536, 0}, Job{"gpt2-350m", "dgx-a100", 16, 64, 0},
                       Job{"llama3-70b", "dgx-h100", 1024, 512, 8192}}) {
    const LoomRun run = run_loom(std::string("plan --model ") + j.model + " --cluster " + j.cluster + " --gpus " +
                                 std::to_string(j.gpus) + " --global-batch " + std::to_string(j.batch) +
                                 (j.seq > 0 ? " --seq " + std::to_string(j.seq) : std::string()) +
                                 " --top 10 --refine 10 --json");
    REQUIRE(run.code == 0);
    const auto doc = nlohmann::json::parse(run.out);
    REQUIRE(doc["shortlist_settled"].get<bool>());
    for (const auto& row : doc["top"]) {
      const double an = row["step_time_s"].get<double>(), sim = row["simulated_step_time_s"].get<double>();
      INFO(j.model << " dp " << row["dp"] << " tp " << row["tp"] << " pp " << row["pp"] << " zero " << row["zero"]
                   << " vpp " << row["vpp"] << " analytical " << an << " simulated " << sim);
      CHECK(std::fabs(sim / an - 1) <= 0.03);
    }
  }
}

// ---- ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", arXiv 2401.10241) ----------

namespace {

// Uniform stages with the backward split evenly: F = 1, B = 1 (input gradient), W = 1.
SimInputs uniform_split(Schedule s, int64_t pp, int64_t m) {
  SimInputs in = uniform(s, pp, 1, m);
  for (StageInputs& st : in.stages) st.weight_grad_s = 1;
  return in;
}

}  // namespace

TEST_CASE("zb-h1 tables: every (micro-batch, phase) once per rank, F before B before W, 1F1B's warm-up") {
  for (int64_t p : {1, 2, 3, 4, 8})
    for (int64_t m : {1, 2, 3, 4, 8, 12, 16}) {
      const auto t = make_schedule(Schedule::zb_h1, p, 1, m);
      REQUIRE(static_cast<int64_t>(t.size()) == p);
      for (int64_t r = 0; r < p; ++r) {
        INFO("p " << p << " m " << m << " rank " << r);
        REQUIRE(static_cast<int64_t>(t[r].size()) == 3 * m);
        std::set<std::pair<int, int>> seen;
        int32_t next_w = 0;
        for (const Slot& x : t[r]) {
          CHECK(x.chunk == 0);
          CHECK(seen.insert({x.micro_batch, static_cast<int>(x.phase)}).second);
          if (x.phase != Phase::forward)  // a B after its F, a W after its B
            CHECK(seen.count({x.micro_batch, static_cast<int>(x.phase) - 1}) == 1);
          if (x.phase == Phase::weight) CHECK(x.micro_batch == next_w++);  // W's in micro-batch order
        }
        int64_t warm = 0;
        while (t[r][warm].phase == Phase::forward) ++warm;
        CHECK(warm == std::min(warmup_slots(Schedule::zb_h1, p, 1, r, m) + 1, m));
        CHECK(warmup_slots(Schedule::zb_h1, p, 1, r, m) == warmup_slots(Schedule::one_f_one_b, p, 1, r, m));
        CHECK(peak_in_flight(t[r]) == in_flight_chunks(Schedule::zb_h1, p, 1, r, m));
        // Freed by its W: every rank holds what 1F1B's first rank holds.
        CHECK(peak_in_flight(t[r]) == std::min(p, m));
      }
    }
  // pp 4, rank 1, 8 micro-batches, as sail-sg's ZeroBubbleH1Pipeline orders it: 2 warm-up
  // forwards, 1 F B pair whose W waits, F B W triples, B W pairs, the waiting W.
  using P = Phase;
  std::vector<Slot> want = {{0, 0, P::forward}, {1, 0, P::forward}, {2, 0, P::forward}, {0, 0, P::backward},
                            {3, 0, P::forward}, {1, 0, P::backward}, {0, 0, P::weight}};
  for (int32_t k = 4; k < 8; ++k)
    for (Slot x : {Slot{k, 0, P::forward}, Slot{k - 2, 0, P::backward}, Slot{k - 3, 0, P::weight}}) want.push_back(x);
  for (Slot x : {Slot{6, 0, P::backward}, Slot{5, 0, P::weight}, Slot{7, 0, P::backward}, Slot{6, 0, P::weight},
                 Slot{7, 0, P::weight}})
    want.push_back(x);
  CHECK(make_schedule(Schedule::zb_h1, 4, 1, 8)[1] == want);
  // A weight slot sends nothing and receives nothing.
  CHECK(slot_destination(1, 0, Phase::weight, 4, 1) == StageChunk{});
  CHECK(slot_source(1, 0, Phase::weight, 4, 1) == StageChunk{});
}

TEST_CASE("zb-h1 with F = B = W: step m(F+B+W) + (p-1)(F+B-W), a third of 1F1B's bubble at 1F1B's memory") {
  // Qi et al. 2023, Sec. 3.1: ZB-H1's bubble is (p-1)(T_F + T_B - T_W); with equal times,
  // (p-1)/(3m) of the m(F+B+W) of compute, where 1F1B's is (p-1)/m. Exact in binary.
  for (int64_t p : {2, 4, 8})
    for (int64_t m : {8, 16}) {
      INFO("p " << p << " m " << m);
      auto zb = simulate(uniform_split(Schedule::zb_h1, p, m), no_overlap());
      auto f = simulate(uniform_split(Schedule::one_f_one_b, p, m), no_overlap());
      REQUIRE(zb.ok());
      REQUIRE(f.ok());
      CHECK(zb->step_time_s == 3.0 * m + (p - 1) * (1.0 + 1.0 - 1.0));
      CHECK(zb->time.compute_s == 3.0 * m);
      CHECK(zb->time.bubble_s / zb->time.compute_s == static_cast<double>(p - 1) / (3.0 * m));
      CHECK(zb->time.bubble_s * 3 == f->time.bubble_s);
      // Stashes live until their W: each stage holds 1F1B's first stage's p, the largest 1F1B holds.
      for (int64_t i = 0; i < p; ++i) CHECK(zb->stages[i].peak_in_flight == f->stages[0].peak_in_flight);
      CHECK(f->stages[0].peak_in_flight == p);
      // Every stage's W tasks add up to its m W's.
      double w = 0;
      for (const SimTask& t : zb->tasks) w += t.kind == TaskKind::weight && t.stage == 0 ? t.dur_s : 0;
      CHECK(w == static_cast<double>(m));
    }
}

// ---- ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory"), as data ----------

namespace {

using SlotKey = std::tuple<int32_t, int64_t, int>;  // (micro-batch, virtual stage, phase)

// Plays the ZB-V tables with F, B, W taking f, b, w per chunk and free links: a slot starts when
// its rank is free and its input is ready (a forward after the previous virtual stage's, a B
// after the next one's, or the last virtual stage's own forward, a W after its B). Returns
// the step's makespan; REQUIREs that every slot ran (no deadlock).
double replay_zb_v(int64_t p, int64_t m, double f, double b, double w) {
  std::vector<std::vector<Slot>> t;
  for (int64_t r = 0; r < p; ++r) t.push_back(zb_v_rank(p, r, m));
  std::map<SlotKey, double> done;
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::vector<double> free_at(static_cast<size_t>(p), 0.0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int64_t r = 0; r < p; ++r)
      for (; next[r] < t[r].size(); ++next[r], moved = true) {
        const Slot& x = t[r][next[r]];
        const int64_t v = zb_v_virtual_stage(r, x.chunk, p);
        SlotKey dep{-1, 0, 0};
        if (x.phase == Phase::forward && v > 0) dep = {x.micro_batch, v - 1, 0};
        if (x.phase == Phase::backward)  // the last virtual stage's B follows its own F
          dep = v < 2 * p - 1 ? SlotKey{x.micro_batch, v + 1, 1} : SlotKey{x.micro_batch, v, 0};
        if (x.phase == Phase::weight) dep = {x.micro_batch, v, 1};
        double ready = 0;
        if (std::get<0>(dep) >= 0) {
          const auto it = done.find(dep);
          if (it == done.end()) break;
          ready = it->second;
        }
        free_at[r] = std::max(free_at[r], ready) + (x.phase == Phase::forward ? f : x.phase == Phase::backward ? b : w);
        done[{x.micro_batch, v, static_cast<int>(x.phase)}] = free_at[r];
      }
  }
  for (int64_t r = 0; r < p; ++r) REQUIRE(next[r] == t[r].size());
  return *std::max_element(free_at.begin(), free_at.end());
}

}  // namespace

TEST_CASE("zb-v tables: PyTorch's ZBVZeroBubble order on a V; 1F1B's first-rank memory on every rank") {
  // The V: rank r holds virtual stages r and 2p - 1 - r.
  CHECK(zb_v_virtual_stage(0, 1, 4) == 7);
  CHECK(zb_v_virtual_stage(3, 0, 4) == 3);
  CHECK(zb_v_virtual_stage(3, 1, 4) == 4);
  for (int64_t p : {1, 2, 3, 4, 8})
    for (int64_t m : {1, 2, 3, 5, 8, 15, 16}) {
      for (int64_t r = 0; r < p; ++r) {
        INFO("p " << p << " m " << m << " rank " << r);
        const std::vector<Slot> t = zb_v_rank(p, r, m);
        REQUIRE(static_cast<int64_t>(t.size()) == 6 * m);
        std::set<std::tuple<int, int, int>> seen;
        int32_t next_b[2] = {0, 0}, next_w[2] = {0, 0};
        for (const Slot& x : t) {
          CHECK(seen.insert({x.micro_batch, x.chunk, static_cast<int>(x.phase)}).second);
          if (x.phase != Phase::forward)  // a B after its F, a W after its B
            CHECK(seen.count({x.micro_batch, x.chunk, static_cast<int>(x.phase) - 1}) == 1);
          // Each chunk's B's and W's in micro-batch order: its weights' gradients add up as 1F1B's.
          if (x.phase == Phase::backward) CHECK(x.micro_batch == next_b[x.chunk]++);
          if (x.phase == Phase::weight) CHECK(x.micro_batch == next_w[x.chunk]++);
        }
        // From 2p - 1 micro-batches on, every rank holds 2p chunks of half a stage: what 1F1B's
        // first rank holds (p stages' worth), and 1F1B's largest.
        if (m >= 2 * p - 1) CHECK(peak_in_flight(t) == 2 * p);
      }
      REQUIRE(replay_zb_v(p, m, 1, 1, 1) > 0);  // the tables never wait on each other forever
    }
  // p 2, rank 1, 3 micro-batches, as PyTorch orders it: F0 c0; then F c1 and F c0 pairs; the
  // chunk-1 F, B, W; both chunks' turns; the cool-down's B's, then the W's.
  using P = Phase;
  const std::vector<Slot> want = {{0, 0, P::forward},  {0, 1, P::forward},  {1, 0, P::forward},  {1, 1, P::forward},
                                  {0, 1, P::backward}, {0, 1, P::weight},   {2, 0, P::forward},  {0, 0, P::backward},
                                  {0, 0, P::weight},   {2, 1, P::forward},  {1, 1, P::backward}, {1, 1, P::weight},
                                  {1, 0, P::backward}, {2, 1, P::backward}, {2, 0, P::backward}, {1, 0, P::weight},
                                  {2, 1, P::weight},   {2, 0, P::weight}};
  CHECK(zb_v_rank(2, 1, 3) == want);
}

TEST_CASE("zb-v with F = B = W per chunk: step 6m + (p-1), a bubble of (p-1)/(6m), half of ZB-H1's") {
  // Each rank computes 2 chunks x m x (F + B + W) = 6m; what is left is the first forward's
  // walk down the V to the rank, p - 1 chunk forwards at most. ZB-H1's (p-1)/(3m) is in
  // stage passes, twice a chunk's: the same p - 1 units of a stage's forward, halved.
  for (int64_t p : {2, 3, 4, 8})
    for (int64_t m : {2 * p - 1, 2 * p, int64_t{16}, int64_t{32}}) {
      INFO("p " << p << " m " << m);
      const double step = replay_zb_v(p, m, 1, 1, 1);
      CHECK(step == 6.0 * m + (p - 1));
      CHECK((step - 6.0 * m) / (6.0 * m) == static_cast<double>(p - 1) / (6.0 * m));
    }
}

TEST_CASE("the weight-gradient split changes only zb-h1: gpipe, 1f1b and interleaved steps are as before") {
  for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::interleaved}) {
    const int64_t v = s == Schedule::interleaved ? 2 : 1;
    SimInputs plain = uniform(s, 4, v, 8), split = plain;
    for (StageInputs& st : split.stages) st.weight_grad_s = 1;
    auto a = simulate(plain, no_overlap());
    auto b = simulate(split, no_overlap());
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->step_time_s == b->step_time_s);
    CHECK(a->task_count == b->task_count);
    for (const SimTask& t : b->tasks) CHECK(t.kind != TaskKind::weight);
  }
}

TEST_CASE("zb-h1, GPT-2 350M on pp 4, overlap off and free links: the simulated step is CostModel's") {
  // Stage 3 (the logits) is the slowest: it runs without waiting once its first forward
  // arrives, and the step ends with the longest tail after its last B (zb_h1_bubble_s).
  const ClusterSpec c = ideal_cluster(8);
  const CostModel cm = gpt2_350m(c, 64);
  for (Recompute rc : {Recompute::none, Recompute::full}) {
    ParallelConfig p = config(1, 2, 4, Schedule::zb_h1, 1, 2);
    p.recompute = rc;
    REQUIRE(validate_config(cm.model(), c, cm.train(), p, [](const std::string& f) { return f; }).ok());
    auto r = simulate(cm, p, no_overlap());
    REQUIRE(r.ok());
    const Estimate est = cm.evaluate(p);
    INFO("recompute " << static_cast<int>(rc) << " sim " << r->step_time_s << " analytical " << est.step_time_s);
    CHECK(close(r->step_time_s, est.step_time_s));
    CHECK(close(r->time.compute_s, est.time.compute_s));
    CHECK(close(r->time.bubble_s, est.time.bubble_s, 1e-6));  // bubble is a difference of ~1 s terms
    for (int64_t i = 0; i < p.pp; ++i) CHECK(r->stages[i].peak_in_flight == est.stages[i].in_flight);
    // W is the weight-gradient half of the GEMMs' backward, less than the whole backward.
    CHECK(est.stages[1].weight_grad_s > 0);
    CHECK(est.stages[1].weight_grad_s < 0.5 * est.stages[1].backward_s);
    ParallelConfig q = p;
    q.schedule = Schedule::one_f_one_b;
    const Estimate f = cm.evaluate(q);
    CHECK(est.time.bubble_s < f.time.bubble_s);
    // A stash lives until its W: every stage holds 1F1B's first stage's micro-batches, so the
    // first stage's memory is 1F1B's and the later ones hold more (the last one's logits too).
    CHECK(est.stages[0].memory.peak() == f.stages[0].memory.peak());
    for (int64_t i = 0; i < p.pp; ++i) CHECK(est.stages[i].in_flight == f.stages[0].in_flight);
    CHECK(est.memory.peak() > f.memory.peak());
  }
}

TEST_CASE("zb-h1: gradient buckets and ZeRO-3 reduce-scatters follow W; W gathers no weights") {
  const ClusterSpec c = a100(16);
  const CostModel cm = gpt2_350m(c, 64);
  for (int zero : {0, 2, 3}) {
    ParallelConfig p = config(4, 1, 4, Schedule::zb_h1, 1, 2);
    p.zero = zero;
    auto r = simulate(cm, p, SimOptions{});
    REQUIRE(r.ok());
    INFO("zero " << zero);
    int64_t grads = 0, weights = 0;
    for (const SimTask& t : r->tasks) {
      if (t.kind == TaskKind::dp_grad) {
        CHECK(t.phase == Phase::weight);
        ++grads;
      }
      if (t.kind == TaskKind::dp_gather) CHECK(t.phase != Phase::weight);
      weights += t.kind == TaskKind::weight;
    }
    CHECK(grads > 0);
    CHECK(weights > 0);
  }
}

TEST_CASE("zb-h1 on the command line: predict, vpp refused, searched where pp > 1, export, execute") {
  const std::string base = "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 32 --tp 2 --pp 4 ";
  const std::string plan = temp_file("zb_h1_plan.json", "");
  LoomRun a = run_loom("predict " + base + "--schedule zb-h1 --json -o " + plan);
  INFO(a.err);
  REQUIRE(a.code == 0);
  CHECK(nlohmann::json::parse(a.out)["schedule"] == "zb-h1");
  LoomRun v = run_loom("predict " + base + "--schedule zb-h1 --vpp 2");
  CHECK(v.code == 2);
  CHECK(v.err.find("vpp") != std::string::npos);
  LoomRun s = run_loom("simulate " + plan + " --json");
  CHECK(s.code == 0);
  // The CPU executor runs zb-h1 (tests/executor); this bf16 plan it refuses for its dtype.
  LoomRun e = run_loom("execute " + plan);
  CHECK(e.code == 2);
  CHECK(e.err.find("dtype") != std::string::npos);
  CHECK(e.err.find('\n') == e.err.size() - 1);  // one line
  LoomRun t = run_loom("export " + plan + " --to torchtitan");
  CHECK(t.code == 0);
  CHECK(t.out.find("pipeline_parallel_schedule = \"1F1B\"") != std::string::npos);
  CHECK((t.out + t.err).find("schedule zb-h1") != std::string::npos);
  LoomRun pl = run_loom("plan " + base + "--schedule zb-h1 --json");
  INFO(pl.err);
  REQUIRE(pl.code == 0);
  for (const auto& row : nlohmann::json::parse(pl.out)["top"]) CHECK(row["schedule"] == "zb-h1");
  // Unpinned, the search tries zb-h1 (vpp 1) wherever there is a pipeline, and only there.
  auto model = load_model("gpt2-350m", "test", nullptr);
  REQUIRE(model.ok());
  TrainSpec tr;
  tr.global_batch = 32;
  tr.seq = 1024;
  auto space = make_search_space(*model, a100(8), tr, {});
  REQUIRE(space.ok());
  for (const SplitSpace& sp : space->splits) {
    const auto zb = std::find(sp.schedules.begin(), sp.schedules.end(), std::pair<Schedule, int64_t>{Schedule::zb_h1, 1});
    CHECK((zb != sp.schedules.end()) == (sp.pp > 1));
  }
}

TEST_CASE("trace: no two events of one track overlap, so Perfetto nests them (receives on their own tracks)") {
  // The README's interleaved GPT-2 350M plan on 16 GPUs: each stage sends and receives
  // activations and gradients while it computes. Sends stay on `pp`; receives go to
  // `pp recv activations` or `pp recv gradients`, and each track holds one event at a time.
  const std::string plan = temp_file("trace_tracks.plan.json", "");
  REQUIRE(run_loom("predict --model gpt2-350m --cluster dgx-a100 --gpus 16 --global-batch 64 --tp 2 --pp 4 --zero 1 "
                   "--schedule interleaved --vpp 2 --micro-batch 4 -o " + plan)
              .code == 0);
  const std::string trace = temp_file("trace_tracks.json", "");
  REQUIRE(run_loom("simulate " + plan + " --ranks 0-15 --trace " + trace).code == 0);
  const auto doc = nlohmann::json::parse(slurp(trace));
  std::map<std::pair<int64_t, int64_t>, std::vector<std::pair<double, double>>> tracks;
  std::set<std::string> recv_tracks;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") {
      const std::string n = e["args"]["name"];
      if (n.rfind("pp recv", 0) == 0) recv_tracks.insert(n);
    }
    if (e["ph"] != "X") continue;
    const int64_t tid = e["tid"];
    if (std::string(e["name"]).rfind("pp recv", 0) == 0)
      CHECK((tid == static_cast<int>(trace_names::Stream::pp_recv_activations) ||
             tid == static_cast<int>(trace_names::Stream::pp_recv_gradients)));
    tracks[{e["pid"].get<int64_t>(), tid}].push_back({e["ts"].get<double>(), e["dur"].get<double>()});
  }
  CHECK(recv_tracks == std::set<std::string>{"pp recv activations", "pp recv gradients"});
  int64_t overlaps = 0;
  for (auto& [key, ev] : tracks) {
    std::sort(ev.begin(), ev.end());
    for (size_t i = 1; i < ev.size(); ++i) overlaps += ev[i].first < ev[i - 1].first + ev[i - 1].second - 1e-3;
  }
  CHECK(overlaps == 0);
}

TEST_CASE("trace: the event count announced before writing equals the events written") {
  const ClusterSpec c = a100(16);
  const CostModel cm = gpt2_350m(c, 64);
  ParallelConfig p = config(2, 2, 4, Schedule::interleaved, 2, 4);
  p.zero = 3;
  auto r = simulate(cm, p, SimOptions{});
  REQUIRE(r.ok());
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  REQUIRE(grid.ok());
  for (const std::vector<int64_t>& ranks : {std::vector<int64_t>{0}, std::vector<int64_t>{0, 5, 9, 15}}) {
    const auto doc = trace_json(*r, p, *grid, ranks);
    CHECK(trace_event_count(*r, p, *grid, ranks) == static_cast<int64_t>(doc["traceEvents"].size()));
  }
}

// ZeRO 1/2 with the updated weights' all-gather under the next step's first forward
// (--overlap-param-gather, Megatron-LM's flag): less exposed data-parallel time than after the
// optimizer, never more, the simulator playing the same; the rules, the plan file, the search
// (on wherever it applies unless pinned) and the Megatron-LM export and import.
TEST_CASE("overlap-param-gather: ZeRO 1/2's weight gather under the next forward", "[simulator][planner]") {
  const test::Job j = test::job("llama3-8b", "dgx-h100", 64, 512, 4096);
  const CostModel cm(j.model, j.cluster, j.train);
  ParallelConfig p;
  p.dp = 64, p.zero = 2, p.micro_batch = 2;
  const auto rules = [&](const ParallelConfig& q) {
    auto st = validate_config(j.model, j.cluster, j.train, q, [](const std::string& f) { return f; });
    return st ? std::string() : st.error().message;
  };
  REQUIRE(rules(p).empty());
  const Estimate off = cm.evaluate(p);
  p.overlap_param_gather = true;
  REQUIRE(rules(p).empty());
  const Estimate on = cm.evaluate(p);
  CHECK(on.time.dp_comm_s < off.time.dp_comm_s);
  CHECK(on.step_time_s < off.step_time_s);
  for (const Estimate* e : {&off, &on}) {
    ParallelConfig q = e->parallel;
    auto sim = simulate(cm, q, SimOptions{});
    REQUIRE(sim.ok());
    INFO("overlap " << q.overlap_param_gather << ": analytical " << e->step_time_s << ", simulated " << sim->step_time_s);
    CHECK(std::fabs(sim->step_time_s / e->step_time_s - 1) <= 0.01);
  }
  ParallelConfig zero3 = p;
  zero3.zero = 3;
  CHECK(rules(zero3) ==
        "overlap_param_gather: overlapping the updated weights' all-gather needs zero 1 or 2 with dp x cp > 1 on the ring "
        "(got zero 3, dp x cp 64)");
  // The plan file keeps it; the search turns it on where it applies, or as pinned.
  const std::string dir = std::filesystem::temp_directory_path().string();
  const std::string planned = dir + "/loom_opg_" + std::to_string(::getpid()) + ".json";
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 64 --global-batch 512 --seq 4096 --top 1 ";
  REQUIRE(run_loom("plan " + job + "--zero 1 -o " + planned).code == 0);
  CHECK(plan_configuration(planned)["parallel"]["overlap_param_gather"] == true);
  REQUIRE(run_loom("plan " + job + "--zero 1 --overlap-param-gather off -o " + planned).code == 0);
  CHECK_FALSE(plan_configuration(planned)["parallel"].contains("overlap_param_gather"));
  const LoomRun bad = run_loom("plan " + job + "--zero 3 --overlap-param-gather on");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom: --overlap-param-gather: overlaps ZeRO 1/2's weight all-gather: needs --zero 1 or 2 (got 3)\n");
  // Megatron-LM: --overlap-param-gather beside the distributed optimizer, and back.
  const RoundTrip rt = export_round_trip("megatron", job.substr(0, job.find("--top")) + "--tp 1 --pp 1 --zero 1 "
                                                     "--overlap-param-gather on",
                                         "--cluster dgx-h100 --gpus 64", "opg", "--overlap-param-gather");
  CHECK(plan_configuration(rt.imported)["parallel"]["overlap_param_gather"] == true);
  std::filesystem::remove(planned);
}

TEST_CASE("interleaved over few micro-batches: the transfers each chunk waits for are played on the tables",
          "[simulator]") {
  // GPT-2 350M, dp 8, pp 2 across two nodes, 12 chunks per rank and 2 micro-batches per step:
  // every chunk's output goes straight to the rank waiting for it, so the fill and the drain
  // each wait for v p - 1 transfers (pp_exposed_s's closed form counted 2 (p - 1)).
  const Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  ParallelConfig p;
  p.dp = 8, p.pp = 2, p.micro_batch = 4, p.schedule = Schedule::interleaved, p.vpp = 12;
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate e = cm.evaluate(p);
  auto sim = simulate(cm, p, SimOptions{});
  REQUIRE(sim.ok());
  INFO("analytical " << e.step_time_s << " s, simulated " << sim->step_time_s << " s");
  CHECK(std::fabs(sim->step_time_s / e.step_time_s - 1) <= 0.01);  // was +15.6%
  CHECK(std::fabs(sim->time.pp_comm_s / e.time.pp_comm_s - 1) <= 0.05);
  CHECK(e.time.pp_comm_s > 0.1 * e.step_time_s);  // the regime: transfers are a tenth of the step
}
