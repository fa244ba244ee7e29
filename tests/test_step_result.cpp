// One step result for the cost model, the simulator and the executors (sim/step_result.hpp):
// the writer and the strict reader round-trip each producer's document; the reader refuses
// what a model file loader refuses (unknown keys, wrong types, NaN, negative sizes, totals that
// are not their parts), a plan's /prediction included; `loom compare` diffs any two results of
// one configuration and refuses two of different ones; `loom simulate` says when a plan does
// not fit.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/plan.hpp"
#include "sim/simulated_estimate.hpp"
#include "sim/simulator.hpp"
#include "sim/step_result.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
namespace fs = std::filesystem;

namespace {

ParallelConfig config(int64_t dp, int64_t tp, int64_t pp, int zero, Schedule s, int64_t vpp, Recompute rc, bool sp) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.zero = zero;
  p.schedule = s;
  p.vpp = vpp;
  p.recompute = rc;
  p.sp = sp;
  return p;
}

// Three layouts of GPT-2 350M on 8 A100s: data parallel; 3D with SP, selective recompute and
// the interleaved schedule; a gpipe pipeline with ZeRO-1 and full recompute.
std::vector<ParallelConfig> layouts() {
  return {config(8, 1, 1, 0, Schedule::one_f_one_b, 1, Recompute::none, false),
          config(2, 2, 2, 0, Schedule::interleaved, 2, Recompute::selective, true),
          config(2, 1, 4, 1, Schedule::gpipe, 1, Recompute::full, false)};
}

Plan make_plan(const std::string& model, const std::string& cluster, const ParallelConfig& p, int64_t batch,
               int64_t seq) {
  auto m = load_model(model, "--model", nullptr);
  REQUIRE(m.ok());
  auto c = load_cluster(cluster, "--cluster");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, p.gpus(), "--gpus").ok());
  Plan plan;
  plan.model = *m;
  plan.cluster = *c;
  plan.train.global_batch = batch;
  plan.train.seq = seq;
  plan.train.dp_bucket_bytes = 80'000'000;
  plan.parallel = p;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) { return f; });
  INFO((st ? std::string() : st.error().message));
  REQUIRE(st.ok());
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  return plan;
}

Plan gpt2_plan(const ParallelConfig& p) { return make_plan("gpt2-350m", "dgx-a100", p, 16, 1024); }

// The tiny model the CPU executor runs (tests/executor/data), one rank, fp32.
Plan tiny_plan(int64_t micro_batch) {
  ParallelConfig p;
  p.micro_batch = micro_batch;
  auto m = load_model(std::string(LOOM_SOURCE_DIR) + "/tests/executor/data/tiny-gpt.json", "--model", nullptr);
  REQUIRE(m.ok());
  auto c = load_cluster("cpu-mpi", "--cluster");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, 1, "--gpus").ok());
  Plan plan;
  plan.model = *m;
  plan.cluster = *c;
  plan.train.global_batch = 4;
  plan.train.seq = 16;
  plan.train.dtype = Dtype::fp32;
  plan.train.grad_dtype = Dtype::fp32;
  plan.train.attention = Attention::unfused;
  plan.train.dp_bucket_bytes = 16384;
  plan.parallel = p;
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  return plan;
}

std::string write_file(const std::string& name, const nlohmann::json& j) { return temp_file(name, j.dump(2)); }

// to_json(from_json(j)) == j, and the document read back is the one given.
Estimate round_trip(const nlohmann::json& j) {
  auto e = estimate_from_json(j, "result.json");
  INFO((e ? std::string() : e.error().message));
  REQUIRE(e.ok());
  CHECK(estimate_to_json(*e) == j);
  return *e;
}

// A measurement with every field a producer writes: per rank rows, losses, the CUDA backend's
// kernel categories and device memory, one stage no rank reported.
Estimate measured_from(const Estimate& predicted) {
  Estimate e = predicted;
  e.source = StepSource::measured;
  e.step_time_s = 1.25 * predicted.step_time_s;
  e.dp_alternatives = {};
  Measurement& m = e.measurement;
  m.device = "cpu";
  m.steps = 2;
  m.step_times_s = {0.5, 0.25};
  m.losses = {4.25, 4.125};
  m.grad_norms = {1.5, 1.25};
  m.other_s = 0.001;
  RankMeasurement r;
  r.rank = 3;
  r.pp = 1;
  r.memory = predicted.stages[1].memory;
  r.flops = predicted.stages[1].flops;
  r.comm_world_bytes = 8;
  r.step_time_s = 0.375;
  r.time.compute_s = 0.25;
  r.other_s = 0.0625;
  m.ranks = {r};
  m.op_time_s = {{"gemm", 0.5}, {"attention", 0.125}};
  m.profiled_step_s = 0.75;
  m.allocated_bytes = 1000;
  m.device_used_bytes = 2000;
  m.free_before_bytes = 3000;
  m.predicted_step_time_s = predicted.step_time_s;
  m.predicted_peak_bytes = predicted.memory.peak();
  e.stages[0].reported = false;
  return e;
}

}  // namespace

TEST_CASE("a prediction round-trips through the one writer and reader", "[step_result]") {
  for (const ParallelConfig& p : layouts()) {
    const Estimate e = gpt2_plan(p).prediction;
    const nlohmann::json j = estimate_to_json(e);
    CHECK(j["source"] == "predicted");
    const Estimate back = round_trip(j);
    CHECK(back.step_time_s == e.step_time_s);
    CHECK(back.memory.peak() == e.memory.peak());
    CHECK(back.flops_hardware == e.flops_hardware);
    REQUIRE(back.stages.size() == e.stages.size());
    CHECK(back.stages.back().tp_grad_sync_s == e.stages.back().tp_grad_sync_s);
  }
}

TEST_CASE("a simulated step is a step result: its time, the description's memory", "[step_result]") {
  for (const ParallelConfig& p : layouts()) {
    const Plan plan = gpt2_plan(p);
    CostModel cm(plan.model, plan.cluster, plan.train);
    SimOptions o;
    o.keep_tasks = false;
    auto sim = simulate(cm, p, o);
    REQUIRE(sim.ok());
    const Estimate e = simulated_estimate(plan.prediction, *sim);
    const nlohmann::json j = estimate_to_json(e);
    CHECK(j["source"] == "simulated");
    CHECK(j["step_time_s"] == sim->step_time_s);
    CHECK(j["time_s"]["bubble"] == sim->time.bubble_s);
    CHECK(j["memory_bytes"] == estimate_to_json(plan.prediction)["memory_bytes"]);
    CHECK(j["simulated_stages"].size() == static_cast<size_t>(p.pp));
    CHECK(j["analytical_step_time_s"] == plan.prediction.step_time_s);
    // Throughput follows the simulated step: tokens per step over it.
    const double tokens = static_cast<double>(plan.train.global_batch * plan.train.seq);
    CHECK(e.tokens_per_s == Approx(tokens / sim->step_time_s).epsilon(1e-12));
    round_trip(j);
  }
}

TEST_CASE("a measurement round-trips, an emulated rank's and an old GPU report too", "[step_result]") {
  const Estimate predicted = gpt2_plan(layouts()[1]).prediction;
  const Estimate m = measured_from(predicted);
  const nlohmann::json j = estimate_to_json(m);
  CHECK(j["source"] == "measured");
  CHECK(j["stages"][0].is_null());
  CHECK(j["time_s"]["other"] == 0.001);
  CHECK(j["ranks"][0]["comm_bytes"]["world"] == 8);
  const Estimate back = round_trip(j);
  CHECK_FALSE(back.stages[0].reported);
  CHECK(back.measurement.losses == m.measurement.losses);

  Estimate emulated = m;
  emulated.measurement.emulated_rank = 3;
  emulated.measurement.losses.clear();
  const nlohmann::json ej = estimate_to_json(emulated);
  CHECK(ej["tokens_per_s"].is_null());
  CHECK(ej["flops"].contains("rank"));
  CHECK_FALSE(ej["flops"].contains("hardware"));
  CHECK_FALSE(ej.contains("losses"));
  round_trip(ej);

  // A report the CUDA executor wrote before "source" existed: measured, read as strictly.
  const std::string old = std::string(LOOM_SOURCE_DIR) + "/traces/h100/gpt2-124m-b16-s512/measured.json";
  auto doc = nlohmann::json::parse(slurp(old));
  auto e = estimate_from_json(doc, old);
  INFO((e ? std::string() : e.error().message));
  REQUIRE(e.ok());
  CHECK(e->source == StepSource::measured);
  CHECK(e->measurement.device == "NVIDIA H100 80GB HBM3");
  CHECK(e->memory.peak() == doc["memory_bytes"]["peak"].get<int64_t>());
}

TEST_CASE("the reader refuses a broken step result in one line naming the field", "[step_result]") {
  const nlohmann::json good = estimate_to_json(gpt2_plan(layouts()[1]).prediction);
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"/memory_bytes/peak", -1, "x.json: /memory_bytes/peak: must be >= 0 (got -1)"},
      {"/memory_bytes/weights", 1.5, "x.json: /memory_bytes/weights: must be an integer"},
      {"/memory_bytes/peak", 12, "x.json: /memory_bytes/peak: must be the sum of the categories"},
      {"/step_time_s", std::numeric_limits<double>::quiet_NaN(), "x.json: /step_time_s: must be finite"},
      {"/step_time_s", "0.5", "x.json: /step_time_s: must be a number"},
      {"/comm_bytes/tp", int64_t{1} << 62, "x.json: /comm_bytes/tp: must be <= 72057594037927936"},
      {"/flops/model", 1.5, "x.json: /flops/model: must be a whole number of FLOPs"},
      {"/stages/1/micro_batch_time_s/forward", -0.5, "x.json: /stages/1/micro_batch_time_s/forward: must be >= 0"},
      {"/stages/1/stage", 0, "x.json: /stages/1/stage: must be its index in stages (1; got 0)"},
      {"/stages/0/bogus", 1, "x.json: /stages/0/bogus: unknown field"},
      {"/stages", nlohmann::json::object(), "x.json: /stages: must be an array"},
      {"/gpus", 4, "x.json: /gpus: must be dp x tp x pp (got 4)"},
      {"/micro_batches", 3, "x.json: /micro_batches: must be global_batch / (dp x micro_batch) (got 3)"},
      {"/source", "guessed", "x.json: /source: must be one of predicted, simulated, measured"},
      {"/ranks", nlohmann::json::array(), "x.json: /ranks: unknown field"},  // only a measurement has ranks
      {"/schedule", "zigzag", "x.json: /schedule: must be one of"},
  };
  for (const auto& [pointer, value, message] : cases) {
    INFO(pointer);
    nlohmann::json bad = good;
    bad[nlohmann::json::json_pointer(pointer)] = value;
    auto e = estimate_from_json(bad, "x.json");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.find(message) == 0);
    CHECK(e.error().message.find('\n') == std::string::npos);
  }
  nlohmann::json missing = good;
  missing.erase("fits");
  auto e = estimate_from_json(missing, "x.json");
  REQUIRE_FALSE(e.ok());
  CHECK(e.error().message == "x.json: /fits: required field is missing");
}

TEST_CASE("a plan's /prediction is validated as strictly, and must be of the plan", "[step_result]") {
  const Plan plan = gpt2_plan(layouts()[1]);
  const nlohmann::json good = plan_to_json(plan);
  REQUIRE(plan_from_json(good, "plan.json").ok());
  auto refused = [&](const std::string& pointer, const nlohmann::json& value) {
    nlohmann::json bad = good;
    bad[nlohmann::json::json_pointer(pointer)] = value;
    auto p = plan_from_json(bad, "plan.json");
    REQUIRE_FALSE(p.ok());
    return p.error().message;
  };
  CHECK(refused("/prediction/memory_bytes/peak", -1) == "plan.json: /prediction/memory_bytes/peak: must be >= 0 (got -1)");
  CHECK(refused("/prediction/stages/0/flops", "many") == "plan.json: /prediction/stages/0/flops: must be a number");
  CHECK(refused("/prediction/unknown", 1) == "plan.json: /prediction/unknown: unknown field");
  CHECK(refused("/prediction/seq", 2048) ==
        "plan.json: /prediction: /train/seq differs (prediction 2048, plan 1024): not the plan's configuration");
  CHECK(refused("/prediction/source", "measured").find("plan.json: /prediction/") == 0);
}

TEST_CASE("loom compare: any two results of one configuration, refused across configurations", "[step_result][compare]") {
  const Plan plan = tiny_plan(1);
  const std::string plan_path = write_file("sr_plan.json", plan_to_json(plan));
  // The CPU executor's report of rank 0 of this one-rank plan, emulated (no MPI needed).
  const std::string report = temp_file("sr_report.json", "");
  LoomRun run = run_loom("execute " + plan_path + " --quiet --steps 1 --emulate-rank 0 --report " + report);
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto rj = nlohmann::json::parse(slurp(report));
  CHECK(rj["source"] == "measured");
  CHECK(rj["device"] == "cpu");
  round_trip(rj);

  LoomRun cmp = run_loom("compare " + plan_path + " " + report + " --json");
  INFO(cmp.err);
  REQUIRE(cmp.code == 0);
  std::map<std::string, nlohmann::json> by;
  const auto doc = nlohmann::json::parse(cmp.out);
  CHECK(doc["schema_version"] == 1);
  for (const auto& f : doc["fields"]) by[f["name"]] = f;
  // The CPU executor's allocations are the cost model's, exactly (tests/executor).
  for (const char* exact : {"memory_bytes.weights", "memory_bytes.grads", "memory_bytes.optimizer", "stages.0.flops"}) {
    INFO(exact);
    REQUIRE(by.count(exact));
    CHECK(by[exact]["error_pct"] == 0.0);
  }
  CHECK(by["step_time_s"]["measured"].get<double>() > 0);
  // Swapped, the sign convention holds: (predicted - measured) / measured either way.
  LoomRun swapped = run_loom("compare " + report + " " + plan_path + " --json");
  REQUIRE(swapped.code == 0);
  const auto swapped_doc = nlohmann::json::parse(swapped.out);
  CHECK(swapped_doc["error_definition"] == "(predicted - measured) / measured x 100");
  for (const auto& f : swapped_doc["fields"])
    if (f["name"] == "step_time_s") CHECK(f["error_pct"] == by["step_time_s"]["error_pct"]);

  // Another micro-batch: refused in one line naming the field and both values.
  const std::string other = write_file("sr_plan_mb2.json", plan_to_json(tiny_plan(2)));
  LoomRun refused = run_loom("compare " + other + " " + report);
  CHECK(refused.code == 2);
  CHECK(refused.err == "loom: compare: /parallel/micro_batch differs (plan 2, report 1): not the same configuration\n");
  CHECK(refused.out.empty());
}

TEST_CASE("loom simulate --json is a step result; compare diffs it against the plan", "[step_result][compare]") {
  const Plan plan = gpt2_plan(layouts()[1]);
  const std::string plan_path = write_file("sr_sim_plan.json", plan_to_json(plan));
  LoomRun sim = run_loom("simulate " + plan_path + " --json");
  INFO(sim.err);
  REQUIRE(sim.code == 0);
  CHECK(sim.err.empty());  // it fits: nothing to warn about
  const auto sj = nlohmann::json::parse(sim.out);
  CHECK(sj["source"] == "simulated");
  round_trip(sj);
  const std::string sim_path = write_file("sr_sim.json", sj);
  LoomRun cmp = run_loom("compare " + plan_path + " " + sim_path + " --json");
  INFO(cmp.err);
  REQUIRE(cmp.code == 0);
  const auto c = nlohmann::json::parse(cmp.out);
  CHECK(c["error_definition"] == "(simulated - predicted) / predicted x 100");
  for (const auto& f : c["fields"])
    if (std::string(f["name"]).rfind("memory_bytes.", 0) == 0) CHECK(f["error_pct"] == 0.0);
}

TEST_CASE("loom simulate says so when the plan does not fit", "[step_result]") {
  // GPT-3 175B on one DGX A100 with tp 8: far more than 80 GB per GPU.
  ParallelConfig p;
  p.tp = 8;
  const Plan plan = make_plan("gpt3-175b", "dgx-a100", p, 8, 2048);
  REQUIRE_FALSE(plan.prediction.fits);
  const std::string path = write_file("sr_nofit.json", plan_to_json(plan));
  LoomRun sim = run_loom("simulate " + path + " --json");
  INFO(sim.err);
  REQUIRE(sim.code == 0);
  CHECK(sim.err == "loom: warning: plan does not fit: " + plan.prediction.reason + "\n");
  CHECK(nlohmann::json::parse(sim.out)["fits"] == false);
  LoomRun table = run_loom("simulate " + path);
  CHECK(table.err.find("plan does not fit") != std::string::npos);
}
