// FP8 GEMMs measured by `loom calibrate` (executor/cuda/calibrate.cpp bench_fp8_gemms): the
// profile's gemm_fp8 table and its fitted model (sim/profile.hpp), the model a cluster carries
// from it (gemm_model_fp8), and which of them prices an FP8 plan's GEMMs (sim/fp8.hpp).
#include <catch2/catch.hpp>

#include <memory>
#include <set>
#include <tuple>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/fp8.hpp"
#include "sim/gemm_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/profile.hpp"
#include "sim/spec_json.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {
// An FP8 GPU's GEMMs as a known model makes them: H100 SXM figures, the FP8 peak, 1-byte inputs.
GemmModel fp8_truth() {
  GemmModel g;
  g.hw = {1978.9e12, 132, 3.35e12};
  g.in_bytes = 1;
  g.c = {0.62, 2.5e-6, 0.8, 4e-6};
  return g;
}

// The linear layers calibrate sweeps in FP8 (layer_sweep: hidden 2048-16384, tp 1 and 8, 2048
// and 16384 tokens, GQA's QKV, SwiGLU's gate|up and down, the projection), each as forward
// (T, OC, C), input gradient (T, C, OC) and weight gradient (OC, C, T) added into fp32; each
// shape once (a square projection's forward and input gradient are one shape).
std::vector<ProfileGemm> fp8_rows(const GemmModel& truth) {
  std::vector<ProfileGemm> v;
  std::set<std::tuple<int64_t, int64_t, int64_t, bool>> seen;
  for (int64_t h : {2048, 4096, 8192, 16384})
    for (int64_t tp : {1, 8})
      for (int64_t T : {2048, 16384}) {
        const int64_t ffn = h * 7 / 2;
        for (auto [C, OC] : {std::pair{h, h * 5 / 4 / tp}, {h / tp, h}, {h, 2 * ffn / tp}, {ffn / tp, h}}) {
          if (2.0 * T * C * OC > 3e13) continue;
          for (auto [m, n, k, acc] : {std::tuple{T, OC, C, false}, {T, C, OC, false}, {OC, C, T, true}})
            if (seen.insert({m, n, k, acc}).second) v.push_back({"", m, n, k, acc, truth.seconds(double(m), double(n), double(k), acc ? 8 : 2)});
        }
      }
  return v;
}

// The H100 profile with FP8 GEMMs measured beside its bf16 ones (and the FP8 model fitted).
HardwareProfile h100_with_fp8() {
  auto p = load_profile("traces/profiles/h100-sxm.json");
  REQUIRE(p);
  HardwareProfile out = **p;
  out.gemm_fp8 = fp8_rows(fp8_truth());
  auto fit = fit_gemm_model(out.fp8_gemm_samples(), fp8_truth().hw);
  REQUIRE(fit);
  out.gemm_model_fp8 = *fit;
  out.gemm_model_fp8.source = "fitted by the test to fp8_truth()'s times";
  return out;
}

TrainSpec fp8_train() {
  TrainSpec t;
  t.global_batch = 8, t.seq = 4096, t.dtype = Dtype::bf16, t.fp8 = true;
  return t;
}
}  // namespace

TEST_CASE("fp8 gemm model: fitted to FP8 GEMMs it recovers the coefficients that made them, keeps 1-byte inputs, "
          "and one fit never mixes input widths", "[gemm_model][fp8]") {
  const GemmModel truth = fp8_truth();
  HardwareProfile p;
  p.gemm_fp8 = fp8_rows(truth);
  REQUIRE(p.gemm_fp8.size() == 178);
  std::vector<GemmSample> v = p.fp8_gemm_samples();
  CHECK(v.front().in_bytes == 1);
  auto g = fit_gemm_model(v, truth.hw);
  REQUIRE(g);
  CHECK(g->in_bytes == 1);
  CHECK(g->c.mainloop_efficiency == Approx(0.62).epsilon(1e-2));
  CHECK(g->c.tile_overhead_s == Approx(2.5e-6).epsilon(5e-2));
  CHECK(g->fit_mape < 0.01);
  // seconds() prices the model's own operands: 1 byte each at its (FP8) peak.
  CHECK(g->seconds(16384, 8192, 8192) == g->seconds_at(16384, 8192, 8192, 2, 1, truth.hw.peak_flops));
  v[2].in_bytes = 2;
  auto mixed = fit_gemm_model(v, truth.hw);
  REQUIRE_FALSE(mixed);
  CHECK(mixed.error().message == "gemm/2: input bytes 2 differ from the first sample's 1 (one model per input type)");
}

TEST_CASE("profile: gemm_fp8 and gemm_model_fp8 round-trip, and FP8 lookups read them: the exact row, else the model",
          "[profile][fp8]") {
  const HardwareProfile p = h100_with_fp8();
  CHECK(p.has_fp8_gemms());
  auto back = profile_from_json(to_json(p), "p.json");
  INFO((back ? std::string() : back.error().message));
  REQUIRE(back);
  CHECK(back->gemm_fp8.size() == p.gemm_fp8.size());
  CHECK(back->gemm_model_fp8.in_bytes == 1);
  CHECK(back->gemm_model_fp8.c.mainloop_efficiency == p.gemm_model_fp8.c.mainloop_efficiency);
  CHECK(back->gemm_model.in_bytes == 2);
  const ProfileGemm& row = p.gemm_fp8[5];
  const double out = row.accumulate_fp32 ? 8 : 2;
  REQUIRE(p.gemm_model_fp8.seconds(row.m, row.n, row.k, out) != row.seconds);  // the row, not the model
  CHECK(p.fp8_gemm_s(row.m, row.n, row.k, out) == row.seconds);
  CHECK(p.fp8_gemm_s(12288, 12288, 12288) == p.gemm_model_fp8.seconds(12288, 12288, 12288));
  // The bf16 lookups are untouched by the FP8 table.
  CHECK(p.gemm_s(12288, 12288, 12288) == p.gemm_model.seconds(12288, 12288, 12288));

  // A model in the wrong table is refused, naming the field.
  nlohmann::json j = to_json(p);
  j["gemm_model_fp8"].erase("in_bytes");
  auto wrong = profile_from_json(j, "p.json");
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().message == "p.json: /gemm_model_fp8/in_bytes: must be 1 (got 2.0)");
  j = to_json(p);
  j["gemm_fp8"].push_back(j["gemm_fp8"][0]);
  auto twice = profile_from_json(j, "p.json");
  REQUIRE_FALSE(twice);
  CHECK(twice.error().message.find("gemm_fp8/178: the same GEMM shape") != std::string::npos);
}

TEST_CASE("fp8 pricing: a profile's measured FP8 GEMMs price an FP8 plan's linear layers; without them the bf16 "
          "times are carried to the FP8 peak as before", "[fp8][cost_model]") {
  auto base = load_cluster("h100-sxm", "--cluster");
  REQUIRE(base);
  const TrainSpec t = fp8_train();
  const double M = 4096, N = 14336, K = 4096;  // Llama 3 8B's gate|up on 4096 tokens (not a measured row)
  const OpTimer before = OpTimer::of(*base, t);
  const double carried = fp8_gemm_s(before, M, N, K);
  ClusterSpec c = *base;
  auto prof = std::make_shared<const HardwareProfile>(h100_with_fp8());
  c.calibration = prof;
  const OpTimer op = OpTimer::of(c, t);
  CHECK(fp8_gemm_s(op, M, N, K) == prof->gemm_model_fp8.seconds(M, N, K));
  CHECK(fp8_gemm_s(op, M, N, K) != carried);
  CHECK(fp8_gemm_wgrad_s(op, M, N, K) == prof->gemm_model_fp8.seconds(N, K, M, op.wgrad_out));
  CHECK(op.fp8_launch_s() == prof->gemm_model_fp8.c.launch_s);
  CHECK(priced_by(c, t).find("FP8 GEMMs measured in the same profile") != std::string::npos);
  CHECK(priced_by(*base, t).find("FP8 GEMMs at the FP8 peak with 0.8822 x the bf16 efficiency of each shape "
                                 "(efficiency.fp8_gemm_efficiency_ratio, published, not measured here)") != std::string::npos);
}

TEST_CASE("fp8 pricing: a cluster carries the profile's FP8 model beside its bf16 one, measured on the same GPU or "
          "by the same ratios on another", "[fp8][gemm_model]") {
  const std::string prof = temp_file("fp8_profile.json", to_json(h100_with_fp8()).dump());
  auto with_ref = [&](const char* zoo, double scale, double clock) {
    auto j = nlohmann::json::parse(slurp(std::string(LOOM_SOURCE_DIR) + "/models/clusters/" + zoo + ".json"));
    j["efficiency"]["gemm_model"] = {{"from", prof}, {"mainloop_efficiency_scale", scale}, {"clock_ratio", clock},
                                     {"source", "test"}};
    return cluster_from_json(j, std::string(zoo) + ".json");
  };
  auto h = with_ref("dgx-h100", 1.0, 1.0);
  REQUIRE(h);
  REQUIRE(h->gemm_model_fp8);
  CHECK(h->gemm_model_fp8_measured);
  const TrainSpec t = fp8_train();
  const OpTimer op = OpTimer::of(*h, t);
  CHECK(fp8_gemm_s(op, 4096, 14336, 4096) == h->gemm_model_fp8->seconds(4096, 14336, 4096));
  CHECK(priced_by(*h, t).find("FP8 GEMMs by its FP8 model (measured on this GPU)") != std::string::npos);
  // Carried by ratios: the K loop's efficiency scaled, a tile's clocks kept.
  auto slower = with_ref("dgx-h100", 0.9, 0.8);
  REQUIRE(slower);
  REQUIRE(slower->gemm_model_fp8);
  CHECK_FALSE(slower->gemm_model_fp8_measured);
  CHECK(slower->gemm_model_fp8->c.mainloop_efficiency == Approx(0.9 * h->gemm_model_fp8->c.mainloop_efficiency));
  CHECK(slower->gemm_model_fp8->c.tile_overhead_s == Approx(h->gemm_model_fp8->c.tile_overhead_s / 0.8));
  CHECK(priced_by(*slower, t).find("FP8 GEMMs by its FP8 model (carried by the same ratios, not measured)") !=
        std::string::npos);
  // A GPU without FP8 tensor cores carries none.
  auto a100 = with_ref("dgx-a100", 1.0724, 0.7705);
  REQUIRE(a100);
  CHECK_FALSE(a100->gemm_model_fp8);
}

TEST_CASE("loom calibrate --fit-gemm fits the FP8 model beside the bf16 one, and needs an FP8 peak to do it",
          "[fp8][cli]") {
  HardwareProfile p = h100_with_fp8();
  p.gemm_model_fp8 = GemmModel{};  // as calibrate measured it: no model yet
  const std::string in = temp_file("fp8_unfitted.json", to_json(p).dump());
  const LoomRun r = run_loom("calibrate --fit-gemm " + in + " --cluster h100-sxm --quiet");
  REQUIRE(r.code == 0);
  auto written = profile_from_json(nlohmann::json::parse(r.out), "stdout");
  REQUIRE(written);
  REQUIRE(written->gemm_model_fp8.valid());
  CHECK(written->gemm_model_fp8.in_bytes == 1);
  CHECK(written->gemm_model_fp8.samples == 178);
  CHECK(written->gemm_model_fp8.hw.peak_flops == 1978.9e12);
  CHECK(written->gemm_model_fp8.c.mainloop_efficiency == Approx(0.62).epsilon(1e-2));
  CHECK(written->gemm_model_fp8.source.find("178 measured FP8 gemms, against h100-sxm's GPU figures (FP8 peak") !=
        std::string::npos);
  const LoomRun a = run_loom("calibrate --fit-gemm " + in + " --cluster dgx-a100 --quiet");
  CHECK(a.code == 2);
  CHECK(a.err == "loom: " + in +
                     ": gemm_fp8: the profile measured FP8 GEMMs but --cluster dgx-a100 has no gpu.peak_flops_fp8 to "
                     "fit them against\n");
}
