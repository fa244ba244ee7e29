// Fixtures the cost-model and simulator tests share: a job loaded from the zoo (model, cluster
// sized to its GPUs, a batch), links that cost nothing so only the pipeline's compute is left,
// the simulator without overlap, GPT-2 350M priced on a cluster, equal pipeline stages, and a
// plan exported to an engine's names and imported back.
#pragma once
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::test {

struct Job {
  ModelSpec model;
  ClusterSpec cluster;
  TrainSpec train;
};

// `batch` sequences of `seq` tokens, data-parallel buckets of 80 MB (Megatron-core's 40e6 bf16
// elements; validate_config asks for one, the CLI sets that default).
inline TrainSpec batch_of(int64_t batch, int64_t seq) {
  TrainSpec t;
  t.global_batch = batch;
  t.seq = seq;
  t.dp_bucket_bytes = 80'000'000;
  return t;
}

// The zoo's `cluster` sized to `gpus`.
inline ClusterSpec sized(const std::string& cluster, int64_t gpus) {
  auto c = load_cluster(cluster, "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

// `model` on `gpus` GPUs of `cluster` (zoo names or paths), trained as batch_of(batch, seq).
inline Job job(const std::string& model, const std::string& cluster, int64_t gpus, int64_t batch, int64_t seq) {
  auto m = load_model(model, "test", nullptr);
  REQUIRE(m.ok());
  return {*m, sized(cluster, gpus), batch_of(batch, seq)};
}

// The simulator's step for `p` against the cost model's, within `rel` of it.
inline void check_simulated_step(const CostModel& cm, const ParallelConfig& p, double rel) {
  const Estimate e = cm.evaluate(p);
  auto sim = simulate(cm, p, SimOptions{});
  REQUIRE(sim.ok());
  INFO("analytical " << e.step_time_s << " s, simulated " << sim->step_time_s << " s");
  CHECK(std::fabs(sim->step_time_s / e.step_time_s - 1) <= rel);
}

// Links at 1e30 bytes/s without latency: every collective and send takes ~1e-21 s, so only the
// pipeline's compute is left and the simulated timeline and the analytical step compare exactly.
inline void free_links(ClusterSpec& c) {
  for (FabricSpec* f : {&c.intra_node, &c.inter_node}) {
    f->busbw_bytes_per_s = 1e30;
    f->link_bytes_per_s = 1e30;
    f->latency_s = 0;
  }
}

// dgx-a100 with free links, sized to `gpus`.
inline ClusterSpec ideal_cluster(int64_t gpus) {
  auto c = load_cluster("dgx-a100", "test");
  REQUIRE(c.ok());
  free_links(*c);
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

inline SimOptions no_overlap() {
  SimOptions o;
  o.overlap = false;
  return o;
}

// GPT-2 350M on `c`, trained as batch_of(batch, 1024).
inline CostModel gpt2_350m(const ClusterSpec& c, int64_t batch) {
  auto m = load_model("gpt2-350m", "test", nullptr);
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  return CostModel(*m, c, batch_of(batch, 1024));
}

// Equal pipeline stages without communication: pp copies of `stage` under schedule `s` with
// vpp chunks a rank and m micro-batches (dp = tp = 1, micro-batch 1).
inline SimInputs equal_stages(Schedule s, int64_t pp, int64_t vpp, int64_t m, const StageInputs& stage) {
  SimInputs in;
  in.parallel.pp = pp;
  in.parallel.schedule = s;
  in.parallel.vpp = vpp;
  in.micro_batches = m;
  in.stages.assign(pp, stage);
  return in;
}

// A plan's gradient bucket as the bytes it resolves to: 0 is Megatron-core's default for the
// plan's dp (sim/specs.hpp dp_bucket_bytes_for), which an engine's file states as a number.
inline void resolve_bucket(nlohmann::json& j) {
  auto& b = j["train"]["dp_bucket_bytes"];
  if (b == 0)
    b = loom::megatron_bucket_elements(j["parallel"]["dp"].get<int64_t>()) * (j["train"]["grad_dtype"] == "bf16" ? 2 : 4);
}

// A plan file's configuration: its model (less the descriptive keys), train and parallel.
inline nlohmann::json plan_configuration(const std::string& plan_path) {
  auto j = nlohmann::json::parse(slurp(plan_path));
  for (auto* k : {"name", "source", "published_params", "published_params_precision"}) j["model"].erase(k);
  resolve_bucket(j);
  return {{"model", j["model"]}, {"train", j["train"]}, {"parallel", j["parallel"]}};
}

struct RoundTrip {
  std::string plan, exported, imported;  // the files' paths
};

// `loom predict <predict_args> -o`, `loom export --to <engine>` of that plan, `loom import
// <engine>` of the export with `import_args` (what the engine's file does not hold): each must
// succeed, and the export hold `must_contain`. Files named after `name`.
inline RoundTrip export_round_trip(const std::string& engine, const std::string& predict_args,
                                   const std::string& import_args, const std::string& name,
                                   const std::string& must_contain) {
  const RoundTrip t{temp_file(name + "_plan.json", ""), temp_file(name + "_" + engine + ".out", ""),
                    temp_file(name + "_imported.json", "")};
  LoomRun pr = run_loom("predict " + predict_args + " -o " + t.plan);
  INFO(pr.err);
  REQUIRE(pr.code == 0);
  LoomRun e = run_loom("export " + t.plan + " --to " + engine + " -o " + t.exported);
  INFO(e.err);
  REQUIRE(e.code == 0);
  CHECK(slurp(t.exported).find(must_contain) != std::string::npos);
  LoomRun i = run_loom("import " + engine + " " + t.exported + " " + import_args + " -o " + t.imported);
  INFO(i.err);
  REQUIRE(i.code == 0);
  return t;
}

}  // namespace loom::test
