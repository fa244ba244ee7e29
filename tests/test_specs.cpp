// Strict loading and saving of the inputs; the rank grid.
#include <catch2/catch.hpp>

#include "sim/plan.hpp"
#include "sim/rank_grid.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

TEST_CASE("zoo models and clusters load and round-trip through JSON") {
  for (const auto& e : model_zoo()) {
    auto m = load_model(std::string(e.name), "test", nullptr);
    INFO(e.name << ": " << (m ? "" : m.error().message));
    REQUIRE(m.ok());
    auto again = model_from_json(to_json(*m), "roundtrip");
    REQUIRE(again.ok());
    CHECK(to_json(*again) == to_json(*m));
  }
  for (const auto& e : cluster_zoo()) {
    auto c = load_cluster(std::string(e.name), "test");
    INFO(e.name << ": " << (c ? "" : c.error().message));
    REQUIRE(c.ok());
    auto again = cluster_from_json(to_json(*c), "roundtrip");
    REQUIRE(again.ok());
    CHECK(to_json(*again) == to_json(*c));
  }
}

TEST_CASE("every number in a cluster file says where it comes from") {
  for (const auto& e : cluster_zoo()) {
    auto j = nlohmann::json::parse(e.json);
    INFO(e.name);
    CHECK(!j["source"].get<std::string>().empty());
    for (const char* section : {"gpu", "intra_node", "inter_node", "efficiency", "runtime_memory"}) {
      INFO(section);
      CHECK(j[section]["source"].get<std::string>().size() > 20);
    }
  }
}

TEST_CASE("H200 clusters: the H100's processor with 143771 MiB at 4.8 TB/s, one GPU or an 8-GPU HGX node") {
  auto one = load_cluster("h200-sxm", "test");
  auto node = load_cluster("hgx-h200", "test");
  auto h100 = load_cluster("dgx-h100", "test");
  REQUIRE(one.ok());
  REQUIRE(node.ok());
  REQUIRE(h100.ok());
  CHECK(one->gpu.memory_bytes == 143771LL * 1048576);
  CHECK(one->gpu.hbm_bytes_per_s == 4.8e12);
  CHECK(one->gpu.peak_flops_bf16 == h100->gpu.peak_flops_bf16);
  CHECK(one->gpus_per_node == 1);
  CHECK(node->gpus_per_node == 8);
  CHECK(node->intra_node.busbw_bytes_per_s == h100->intra_node.busbw_bytes_per_s);
  CHECK(node->inter_node.busbw_bytes_per_s == h100->inter_node.busbw_bytes_per_s);
}

TEST_CASE("cluster sizing: --gpus sets nodes; too many GPUs or partial nodes are refused") {
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, 1024, "--gpus").ok());
  CHECK(c->nodes == 128);
  CHECK(c->gpus == 1024);
  REQUIRE(size_cluster(*c, 4, "--gpus").ok());
  CHECK(c->nodes == 1);
  CHECK(size_cluster(*c, 12, "--gpus").error().message.find("whole nodes") != std::string::npos);
  CHECK(size_cluster(*c, 0, "--gpus").error().message == "--gpus: must be >= 1 (got 0)");
}

TEST_CASE("train and parallel specs: strict, with the JSON pointer of the broken field") {
  TrainSpec t;
  t.global_batch = 8;
  t.seq = 1024;
  t.dp_bucket_bytes = 1000;
  auto j = to_json(t);
  CHECK(train_from_json(j, "t.json").ok());
  j["seq"] = 0;
  CHECK(train_from_json(j, "t.json").error().message == "t.json: /seq: must be >= 1 (got 0)");
  ParallelConfig p;
  auto pj = to_json(p);
  CHECK(parallel_from_json(pj, "p.json").ok());
  pj["schedule"] = "zigzag";
  CHECK(parallel_from_json(pj, "p.json").error().message ==
        "p.json: /schedule: must be one of gpipe, 1f1b, interleaved, zb-h1, zb-v (got \"zigzag\")");
  pj = to_json(p);
  pj["extra"] = 1;
  CHECK(parallel_from_json(pj, "p.json").error().message == "p.json: /extra: unknown field");
  pj = to_json(p);
  pj["tp"] = 1.5;
  CHECK(parallel_from_json(pj, "p.json").error().message == "p.json: /tp: must be an integer");
}

TEST_CASE("cluster file: nested pointer in errors") {
  auto c = load_cluster("dgx-a100", "test");
  REQUIRE(c.ok());
  auto j = to_json(*c);
  j["intra_node"]["busbw_bytes_per_s"] = -1;
  CHECK(cluster_from_json(j, "c.json").error().message == "c.json: /intra_node/busbw_bytes_per_s: must be > 0 (got -1)");
  j = to_json(*c);
  j["gpu"].erase("memory_bytes");
  CHECK(cluster_from_json(j, "c.json").error().message == "c.json: /gpu/memory_bytes: required field is missing");
}

TEST_CASE("rank grid is a pure function of the order string (Megatron-core RankGenerator)") {
  auto g = RankGrid::make(2, 3, 4, "tp-dp-pp");
  REQUIRE(g.ok());
  // rank = tp + 2 * (dp + 3 * pp)
  CHECK(g->rank({1, 2, 3}) == 1 + 2 * (2 + 3 * 3));
  for (int64_t r = 0; r < 24; ++r) CHECK(g->rank(g->coords(r)) == r);
  CHECK(g->group(Dim::tp, 5) == std::vector<int64_t>{4, 5});
  CHECK(g->group(Dim::dp, 0) == std::vector<int64_t>{0, 2, 4});
  CHECK(g->group(Dim::pp, 1) == std::vector<int64_t>{1, 7, 13, 19});
  CHECK(g->all_groups(Dim::dp).size() == 8);
  auto h = RankGrid::make(2, 3, 4, "dp-tp-pp");
  REQUIRE(h.ok());
  CHECK(h->group(Dim::tp, 0) == std::vector<int64_t>{0, 3});
  CHECK(!RankGrid::make(2, 3, 4, "tp-dp").ok());
  CHECK(!RankGrid::make(2, 3, 4, "tp-tp-pp").ok());
}

TEST_CASE("rank grid: context parallelism between tp and dp (Megatron-core's tp-cp-ep-dp-pp)") {
  // tp 2, cp 2, dp 2, pp 2: rank = tp + 2 * (cp + 2 * (dp + 2 * pp)).
  auto g = RankGrid::make(2, 2, 2, "tp-dp-pp", 2);  // three names: cp right after tp
  REQUIRE(g.ok());
  CHECK(g->order_string() == "tp-cp-dp-pp");
  CHECK(g->world() == 16);
  CHECK(g->rank({1, 1, 1, 1}) == 1 + 2 * (1 + 2 * (1 + 2 * 1)));
  for (int64_t r = 0; r < 16; ++r) CHECK(g->rank(g->coords(r)) == r);
  CHECK(g->group(Dim::cp, 0) == std::vector<int64_t>{0, 2});
  CHECK(g->group(Dim::cp, 5) == std::vector<int64_t>{5, 7});
  CHECK(g->group(Dim::dp, 0) == std::vector<int64_t>{0, 4});
  CHECK(g->group(Dim::pp, 3) == std::vector<int64_t>{3, 11});
  CHECK(g->stride(Dim::cp) == 2);
  CHECK(g->stride(Dim::dp) == 4);
  CHECK(g->all_groups(Dim::cp).size() == 8);
  // The gradient reduction's dp-cp group: every rank sharing tp and pp coordinates.
  CHECK(g->dp_cp_group(9) == std::vector<int64_t>{9, 11, 13, 15});
  CHECK(g->all_dp_cp_groups().size() == 4);
  // Four names: cp anywhere; the three-name form equals its four-name spelling.
  auto h = RankGrid::make(2, 2, 2, "tp-dp-cp-pp", 2);
  REQUIRE(h.ok());
  CHECK(h->group(Dim::cp, 0) == std::vector<int64_t>{0, 4});
  CHECK(h->group(Dim::dp, 0) == std::vector<int64_t>{0, 2});
  auto k = RankGrid::make(2, 2, 2, "dp-tp-pp", 2);  // cp still right after tp: dp-tp-cp-pp
  REQUIRE(k.ok());
  CHECK(k->order_string() == "dp-tp-cp-pp");
  CHECK(k->group(Dim::cp, 0) == std::vector<int64_t>{0, 4});
  // cp 1 leaves every rank where it was.
  auto one = RankGrid::make(2, 3, 4, "tp-dp-pp");
  auto four = RankGrid::make(2, 3, 4, "tp-cp-dp-pp");
  REQUIRE(one.ok());
  REQUIRE(four.ok());
  for (int64_t r = 0; r < 24; ++r) CHECK(one->group(Dim::dp, r) == four->group(Dim::dp, r));
  CHECK(!RankGrid::make(2, 2, 2, "tp-cp-dp", 2).ok());
  CHECK(!RankGrid::make(2, 2, 2, "tp-cp-cp-pp", 2).ok());
  CHECK(!RankGrid::make(2, 2, 2, "tp-cp-dp-pp-ep", 2).ok());
  // The expert grid regroups a stage's tp x cp x dp ranks (tp 1, cp 2, dp 2: ranks 0-3).
  auto e = RankGrid::make(1, 2, 1, "tp-cp-dp-pp", 2);
  REQUIRE(e.ok());
  auto x = ExpertGrid::make(*e, 4, 1);
  REQUIRE(x.ok());
  CHECK(x->group(ExpertDim::ep, 2) == std::vector<int64_t>{0, 1, 2, 3});
}

TEST_CASE("layer placement: Megatron's interleaved chunks") {
  auto l = layer_placement(8, 2, 2);  // chunks of 2 layers: stage 0 gets layers 0-1 and 4-5
  CHECK(l[0].stage == 0);
  CHECK(l[2].stage == 1);
  CHECK(l[4].stage == 0);
  CHECK(l[4].chunk == 1);
  CHECK(l[7].stage == 1);
}
