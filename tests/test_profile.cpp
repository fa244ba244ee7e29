// The hardware profile (sim/profile.hpp): strict loading, the lookups, and a cluster that
// names one (ClusterSpec::profile) changing the cost model's time and runtime memory.
#include <catch2/catch.hpp>

#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/profile.hpp"
#include "sim/spec_json.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {
nlohmann::json small_profile() {
  return nlohmann::json::parse(R"({
    "schema": "loom-profile-1", "name": "t", "device": "test", "source": "hand-written",
    "kernel_launch_s": 2e-6,
    "gemm": [{"m": 1024, "n": 1024, "k": 1024, "seconds": 1e-5},
             {"m": 4096, "n": 1024, "k": 1024, "seconds": 2e-5}],
    "attention": [{"bh": 12, "seq": 1024, "head_dim": 64, "fwd_s": 1e-4, "bwd_s": 3e-4},
                  {"bh": 48, "seq": 1024, "head_dim": 64, "fwd_s": 3e-4, "bwd_s": 9e-4}],
    "memory_bound": [{"bytes": 1e6, "bytes_per_s": 1e12}, {"bytes": 1e8, "bytes_per_s": 3e12}],
    "optimizer": {"params": 1000000, "adamw_s": 1e-5, "grad_norm_s": 1e-6, "bytes_per_param": 34},
    "memory": {"cuda_context_bytes": 500000000, "cublaslt_handle_bytes": 2000000, "kernel_modules_bytes": 6000000,
               "workspace_bytes": 33554432, "malloc_granularity_bytes": 2097152}})");
}
}  // namespace

TEST_CASE("profile: strict loading", "[profile]") {
  auto p = profile_from_json(small_profile(), "p.json");
  REQUIRE(p);
  CHECK(p->gemm.size() == 2);
  CHECK(to_json(*p)["gemm"].size() == 2);
  auto round = profile_from_json(to_json(*p), "round");
  REQUIRE(round);
  CHECK(round->memory.runtime_bytes() == 508000000);

  auto j = small_profile();
  j["extra"] = 1;
  auto bad = profile_from_json(j, "p.json");
  REQUIRE(!bad);
  CHECK(bad.error().message.find("extra") != std::string::npos);
  j = small_profile();
  j["gemm"][1]["seconds"] = -1;
  bad = profile_from_json(j, "p.json");
  REQUIRE(!bad);
  CHECK(bad.error().message.find("/gemm/1/seconds") != std::string::npos);
  j = small_profile();
  j["schema"] = "other";
  CHECK(!profile_from_json(j, "p.json"));
  j = small_profile();
  j["attention"] = nlohmann::json::array();
  CHECK(!profile_from_json(j, "p.json"));
}

TEST_CASE("profile: lookups", "[profile]") {
  auto p = profile_from_json(small_profile(), "p.json");
  REQUIRE(p);
  // Exact shape; otherwise the nearest shape's FLOP/s.
  CHECK(p->gemm_s(1024, 1024, 1024) == Approx(1e-5));
  CHECK(p->gemm_s(4096, 1024, 1024) == Approx(2e-5));
  CHECK(p->gemm_s(1024, 1024, 2048) == Approx(2e-5));        // nearest (1024^3), twice the FLOPs
  CHECK(p->gemm_s(8192, 1024, 1024) == Approx(4e-5));        // nearest 4096 x 1024 x 1024
  // Attention: linear in bh at the nearest seq, proportional beyond, (s/s')^2 across seq.
  CHECK(p->attention_fwd_s(30, 1024, 64) == Approx(2e-4));
  CHECK(p->attention_bwd_s(96, 1024, 64) == Approx(18e-4));
  CHECK(p->attention_fwd_s(6, 1024, 64) == Approx(0.5e-4));
  CHECK(p->attention_fwd_s(12, 2048, 64) == Approx(4e-4));
  // Bandwidth: linear in ln(bytes) between points, clamped.
  CHECK(p->bandwidth(1e7) == Approx(2e12));
  CHECK(p->bandwidth(1e3) == Approx(1e12));
  CHECK(p->memory_s(1e9) == Approx(1e9 / 3e12));
  CHECK(p->optimizer_s(2e6) == Approx(2.2e-5));
}

TEST_CASE("profile: a cluster names one; the cost model uses it", "[profile]") {
  auto c = load_cluster("h100-sxm", "--cluster");
  REQUIRE(c);
  REQUIRE(c->profile == "traces/profiles/h100-sxm.json");
  REQUIRE(c->calibration);
  CHECK(to_json(*c)["profile"] == "traces/profiles/h100-sxm.json");
  // Round trip through JSON keeps the field and loads the profile again.
  auto again = cluster_from_json(to_json(*c), "cluster.json");
  REQUIRE(again);
  CHECK(again->calibration);

  ClusterSpec plain = *c;
  plain.profile.clear();
  plain.calibration.reset();
  auto m = load_model("gpt2-124m", "--model", nullptr);
  REQUIRE(m);
  TrainSpec t;
  t.global_batch = 8;
  t.seq = 1024;
  t.grad_dtype = Dtype::fp32;
  t.dp_bucket_bytes = 1 << 20;
  ParallelConfig p;
  p.micro_batch = 8;
  plain.gpus = c->gpus = 1;
  const Estimate with = CostModel(*m, *c, t).evaluate(p);
  const Estimate without = CostModel(*m, plain, t).evaluate(p);
  CHECK(with.step_time_s > 0);
  CHECK(with.step_time_s != without.step_time_s);
  CHECK(with.memory.runtime == c->calibration->memory.runtime_bytes() + c->calibration->memory.malloc_granularity_bytes);
  CHECK(with.memory.workspace - without.memory.workspace ==
        c->calibration->memory.workspace_bytes - c->runtime_memory.workspace_bytes);

  // Strict: a missing file, an empty name, a wrong type are one line naming the field.
  auto j = to_json(*c);
  j["profile"] = "traces/profiles/no-such.json";
  auto bad = cluster_from_json(j, "cluster.json");
  REQUIRE(!bad);
  CHECK(bad.error().message.find("/profile") != std::string::npos);
  j["profile"] = "";
  CHECK(!cluster_from_json(j, "cluster.json"));
  j["profile"] = 3;
  CHECK(!cluster_from_json(j, "cluster.json"));
}

// A profile is read as strictly as a model file: every size bounded, every time finite and
// positive, each point of a table once and the interpolated tables in order. Two attention
// points of one (seq, head_dim, bh) used to divide by zero (a NaN step time); a byte count of
// 2^62 or a zero bandwidth used to load.
TEST_CASE("profile: tables and sizes are validated, one line naming the pointer", "[profile][robustness]") {
  auto error_of = [](const nlohmann::json& j) {
    auto p = profile_from_json(j, "p.json");
    return p ? std::string() : p.error().message;
  };
  auto j = small_profile();
  j["attention"][1] = j["attention"][0];
  CHECK(error_of(j) == "p.json: /attention/1: must be sorted by (seq, head_dim, bh), each point once");
  j = small_profile();
  std::swap(j["memory_bound"][0], j["memory_bound"][1]);
  CHECK(error_of(j) == "p.json: /memory_bound/1: must be sorted by bytes, each size once");
  j = small_profile();
  j["gemm"][1] = j["gemm"][0];
  CHECK(error_of(j) == "p.json: /gemm/1: the same GEMM shape (and accumulate_fp32) appears twice");
  j = small_profile();
  j["memory_bound"][0]["bytes_per_s"] = 0;
  CHECK(error_of(j) == "p.json: /memory_bound/0/bytes_per_s: must be >= 1 (got 0)");
  j = small_profile();
  j["memory"]["workspace_bytes"] = int64_t{1} << 62;
  CHECK(error_of(j) == "p.json: /memory/workspace_bytes: must be <= 1125899906842624 (got 4611686018427387904)");
  j = small_profile();
  j["gemm"][0]["m"] = "1024";
  CHECK(error_of(j) == "p.json: /gemm/0/m: must be an integer");
  j = small_profile();
  j["kernel_launch_s"] = 1e300;
  CHECK(error_of(j) == "p.json: /kernel_launch_s: must be <= 1 (got 1e+300)");
  j = small_profile();
  j["memory_bound"] = nlohmann::json::array();
  CHECK(error_of(j) == "p.json: /memory_bound: must be a non-empty array");
  // The committed profile meets every rule.
  CHECK(load_cluster("h100-sxm", "--cluster"));
}
