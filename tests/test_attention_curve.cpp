// Fused attention by a kernel's published speed against sequence length and head size
// (efficiency.attention_curve, sim/attention_curve.hpp): the interpolation, the cluster file's
// rules, and what the A100's FlashAttention-2 curve prices.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>

#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/spec_json.hpp"

using namespace loom;
using namespace loom::test;

namespace {

AttentionCurve two_heads() {
  AttentionCurve c;
  c.kernel = "k";
  c.points = {{64, 512, 80e12, 40e12}, {64, 2048, 120e12, 60e12}, {128, 512, 100e12, 50e12},
              {128, 2048, 160e12, 80e12}};
  return c;
}

nlohmann::json point(int64_t head_dim, int64_t seq, double forward, double backward) {
  return {{"head_dim", head_dim}, {"seq", seq}, {"forward_flops_per_s", forward}, {"backward_flops_per_s", backward}};
}

nlohmann::json a100_json() {
  return nlohmann::json::parse(slurp(std::string(LOOM_SOURCE_DIR) + "/models/clusters/dgx-a100.json"));
}

}  // namespace

TEST_CASE("attention curve: linear in log2(seq) between points, linear in head size between head sizes, flat "
          "beyond both", "[attention_curve]") {
  const AttentionCurve c = two_heads();
  CHECK(c.forward_flops_per_s(64, 512) == 80e12);
  CHECK(c.forward_flops_per_s(64, 1024) == 100e12);  // halfway in log2 between 512 and 2048
  CHECK(c.forward_flops_per_s(128, 1024) == 130e12);
  CHECK(c.forward_flops_per_s(96, 1024) == 115e12);  // halfway between the head sizes
  CHECK(c.forward_flops_per_s(64, 128) == 80e12);    // below the shortest: held
  CHECK(c.forward_flops_per_s(64, 65536) == 120e12);
  CHECK(c.forward_flops_per_s(32, 2048) == 120e12);  // below the smallest head size: held
  CHECK(c.forward_flops_per_s(256, 2048) == 160e12);
  CHECK(c.backward_flops_per_s(96, 1024) == 57.5e12);  // the backward's own points, the same way
  AttentionCurve one;
  one.points = {{128, 4096, 50e12, 25e12}};
  CHECK(one.forward_flops_per_s(64, 100) == 50e12);
  CHECK(one.backward_flops_per_s(64, 100) == 25e12);
}

TEST_CASE("attention curve: read strictly from a cluster file and written back", "[attention_curve][cli]") {
  const nlohmann::json base = a100_json();
  auto with_points = [&](const nlohmann::json& points) {
    auto j = base;
    j["efficiency"]["attention_curve"]["points"] = points;
    return cluster_from_json(j, "c.json");
  };
  const std::string p = "c.json: /efficiency/attention_curve/points";
  auto unsorted = with_points({point(64, 1024, 1e14, 1e14), point(64, 512, 1e14, 1e14)});
  REQUIRE_FALSE(unsorted);
  CHECK(unsorted.error().message == p + "/1: must be sorted by (head_dim, seq), each pair once");
  auto twice = with_points({point(64, 512, 1e14, 1e14), point(64, 512, 2e14, 1e14)});
  REQUIRE_FALSE(twice);
  CHECK(twice.error().message == p + "/1: must be sorted by (head_dim, seq), each pair once");
  auto empty = with_points(nlohmann::json::array());
  REQUIRE_FALSE(empty);
  CHECK(empty.error().message.rfind(p + ": must be a non-empty array", 0) == 0);
  auto fast = with_points(nlohmann::json::array({point(64, 512, 1e14, 4e14)}));
  REQUIRE_FALSE(fast);
  CHECK(fast.error().message == p + "/0/backward_flops_per_s: must be <= gpu.peak_flops_bf16 (312000000000000.0)");
  auto half = with_points(nlohmann::json::array({{{"head_dim", 64}, {"seq", 512}, {"forward_flops_per_s", 1e14}}}));
  REQUIRE_FALSE(half);
  CHECK(half.error().message.rfind(p + "/0/backward_flops_per_s: ", 0) == 0);
  nlohmann::json causal = point(64, 512, 1e14, 1e14);
  causal["causal"] = true;
  auto extra = with_points(nlohmann::json::array({causal}));
  REQUIRE_FALSE(extra);
  CHECK(extra.error().message == p + "/0/causal: unknown field");
  auto zero = with_points(nlohmann::json::array({point(0, 512, 1e14, 1e14)}));
  REQUIRE_FALSE(zero);
  CHECK(zero.error().message.rfind(p + "/0/head_dim: must be >= 1", 0) == 0);

  auto not_bool = base;
  not_bool["efficiency"]["attention_curve"]["measured"] = "yes";
  auto nb = cluster_from_json(not_bool, "c.json");
  REQUIRE_FALSE(nb);
  CHECK(nb.error().message.rfind("c.json: /efficiency/attention_curve/measured: ", 0) == 0);

  auto c = cluster_from_json(base, "c.json");
  REQUIRE(c);
  REQUIRE(c->efficiency.attention_curve);
  CHECK(c->efficiency.attention_curve->points.size() == 12);
  CHECK_FALSE(c->efficiency.attention_curve->measured);  // published: absent reads as false
  auto measured = base;
  measured["efficiency"]["attention_curve"]["measured"] = true;
  auto m = cluster_from_json(measured, "c.json");
  REQUIRE(m);
  CHECK(to_json(*m)["efficiency"]["attention_curve"]["measured"] == true);
  CHECK(priced_by(*m, batch_of(8, 1024)).find("fused attention by the measured speed of FlashAttention-2") !=
        std::string::npos);
  auto back = cluster_from_json(to_json(*c), "c.json");
  REQUIRE(back);
  CHECK(to_json(*back) == to_json(*c));
}

TEST_CASE("attention curve: the A100's FlashAttention-2 curve prices bf16 fused attention, the flat efficiency "
          "prices fp32 and the clusters without one", "[attention_curve][cost_model]") {
  const ClusterSpec a100 = sized("dgx-a100", 8);
  TrainSpec bf16 = batch_of(8, 1024);
  const OpTimer t = OpTimer::of(a100, bf16);
  REQUIRE(t.attn_curve);
  // FlashAttention-2's causal forward + backward, head size 64, at 1k tokens: 119 TFLOP/s
  // (the published figure); loom's forward is 2 bh s^2 d at that speed, plus one launch.
  const double bh = 64 * 12, s = 1024, d = 64;
  CHECK(t.attention_fwd(bh, s, d) == Approx(2 * bh * s * s * d / 119e12 + t.launch_s).epsilon(1e-12));
  // The benchmark timed both passes together: the backward at the same speed, three launches.
  CHECK(t.attention_bwd(bh, s, d) == Approx(2.5 * 2 * bh * s * s * d / 119e12 + 3 * t.launch_s).epsilon(1e-12));
  // 3k tokens, head size 128: between 2k (155) and 4k (173), log2(1.5) of the way.
  const double at_3k = 155e12 + std::log2(1.5) * 18e12;
  CHECK(t.attention_fwd(16, 3072, 128) == Approx(2 * 16 * 3072.0 * 3072 * 128 / at_3k + t.launch_s).epsilon(1e-12));
  CHECK(priced_by(a100, bf16).find("fused attention by the published speed of FlashAttention-2 (bf16/fp16, causal; "
                                   "both passes at its published forward + backward speed)") != std::string::npos);
  TrainSpec fp32 = bf16;
  fp32.dtype = Dtype::fp32;
  CHECK(OpTimer::of(a100, fp32).attn_curve == nullptr);
  // A measured profile prices attention itself (h100-sxm: loom's own kernel, measured).
  CHECK(OpTimer::of(sized("h100-sxm", 1), bf16).attn_curve == nullptr);
  CHECK(priced_by(sized("h100-sxm", 1), bf16).find("fused attention by") == std::string::npos);
  // The Hopper clusters: cuDNN's published causal forward speed, head size 64 at 1k tokens 288
  // TFLOP/s, the backward at the same speed.
  const ClusterSpec h100 = sized("dgx-h100", 8);  // the time model points into its cluster
  const OpTimer h = OpTimer::of(h100, bf16);
  REQUIRE(h.attn_curve);
  CHECK(h.attention_fwd(bh, s, d) == Approx(2 * bh * s * s * d / 288e12 + h.launch_s).epsilon(1e-12));
  // The H200s carry the H100's curve (the same SMs, clocks and tensor cores).
  const nlohmann::json h100_points = to_json(sized("dgx-h100", 8))["efficiency"]["attention_curve"]["points"];
  for (const char* c : {"hgx-h200", "h200-sxm"})
    CHECK(to_json(sized(c, 1))["efficiency"]["attention_curve"]["points"] == h100_points);
}
