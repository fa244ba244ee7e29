// Compute beside hidden data-parallel collectives runs on the SMs NCCL's channels leave it
// (cost_model.cpp, slow_compute_beside_dp): the stage's compute grows by share x hidden time.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/step_result.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

std::string check(const Job& j, const ParallelConfig& p) {
  const Status s = validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; });
  return s.ok() ? std::string() : s.error().message;
}

// GPT-2 350M over dp 16 on two DGX A100 nodes: the gradient buckets cross the node, so NCCL
// runs them over the network's channels.
ParallelConfig dp16(int zero) {
  ParallelConfig p;
  p.dp = 16;
  p.zero = zero;
  p.micro_batch = 4;
  return p;
}

}  // namespace

TEST_CASE("hidden dp collectives take share x their hidden time from the compute beside them", "[sm]") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  REQUIRE(j.cluster.inter_node.nccl_channels == 16);
  REQUIRE(j.cluster.gpu.sm_count == 108);
  Job bare = j;
  bare.cluster.intra_node.nccl_channels = 0, bare.cluster.inter_node.nccl_channels = 0;  // not stated
  for (int zero : {0, 1, 2, 3}) {
    INFO("zero " << zero);
    const ParallelConfig p = dp16(zero);
    REQUIRE(check(j, p).empty());
    const Estimate with = CostModel(j.model, j.cluster, j.train).evaluate(p);
    const Estimate without = CostModel(bare.model, bare.cluster, bare.train).evaluate(p);
    const Estimate blocking = CostModel(j.model, j.cluster, j.train).evaluate(p, false);
    CHECK(without.stages[0].sm_contention_s == 0);
    CHECK(blocking.stages[0].sm_contention_s == 0);  // nothing runs beside compute
    // Hidden: what the collectives take (all of it shows without overlap) less what shows.
    const double hidden_s = blocking.time.dp_comm_s - without.time.dp_comm_s;
    REQUIRE(hidden_s > 0);
    CHECK(with.stages[0].sm_contention_s == Approx(16.0 / 108.0 * hidden_s).epsilon(1e-9));
    // The passes grew by exactly that, and the exposed dp time was priced over the longer ones.
    CHECK(with.time.compute_s - without.time.compute_s == Approx(with.stages[0].sm_contention_s).epsilon(1e-9));
    CHECK(with.time.dp_comm_s <= without.time.dp_comm_s);
    // The simulator plays the same pass times: one answer.
    auto sim = simulate(CostModel(j.model, j.cluster, j.train), p, SimOptions{});
    REQUIRE(sim.ok());
    CHECK(sim->time.compute_s == Approx(with.time.compute_s).epsilon(1e-9));
  }
}

TEST_CASE("DeepSpeed 0.3's blocking per-tensor gathers leave the compute every SM", "[sm]") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  ParallelConfig p = dp16(3);
  p.zero3_gather = Zero3Gather::tensor;
  REQUIRE(check(j, p).empty());
  CHECK(CostModel(j.model, j.cluster, j.train).evaluate(p).stages[0].sm_contention_s == 0);
}

TEST_CASE("a stage's sm_contention_s is written and read back with the plan", "[sm]") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  const Estimate e = CostModel(j.model, j.cluster, j.train).evaluate(dp16(3));
  REQUIRE(e.stages[0].sm_contention_s > 0);
  const nlohmann::json doc = estimate_to_json(e);
  CHECK(doc["stages"][0]["sm_contention_s"].get<double>() == e.stages[0].sm_contention_s);
  auto back = estimate_from_json(doc, "test");
  REQUIRE(back.ok());
  CHECK(back->stages[0].sm_contention_s == e.stages[0].sm_contention_s);
}

TEST_CASE("nccl_channels must leave the compute some SMs", "[sm]") {
  nlohmann::json c = to_json(sized("dgx-a100", 8));
  c["intra_node"]["nccl_channels"] = 108;
  auto bad = cluster_from_json(c, "test.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("intra_node.nccl_channels") != std::string::npos);
  CHECK(bad.error().message.find("must be < gpu.sm_count (108; got 108)") != std::string::npos);
  c["intra_node"]["nccl_channels"] = 0;
  CHECK_FALSE(cluster_from_json(c, "test.json").ok());  // stated, it is at least one
  c["intra_node"].erase("nccl_channels");
  auto none = cluster_from_json(c, "test.json");
  REQUIRE(none.ok());
  CHECK(none->intra_node.nccl_channels == 0);  // not stated: no SMs taken
}
