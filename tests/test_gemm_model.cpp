// The tile and wave GEMM model (sim/gemm_model.hpp): exact times by hand, the fit, the H100
// profile's fit against what it measured (held out by hidden size), and clusters that carry it.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>

#include "sim/gemm_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/op_timer.hpp"
#include "sim/stage_work.hpp"
#include "sim/profile.hpp"
#include "sim/spec_json.hpp"
#include "sim/zoo.hpp"
#include "run_loom.hpp"

using namespace loom;

namespace {
// 4 SMs of 2.5e13 FLOP/s each, HBM too fast to matter, no fixed costs.
GemmModel toy() {
  GemmModel g;
  g.hw = {1e14, 4, 1e18};
  g.c = {1.0, 0.0, 1.0, 0.0};
  return g;
}

const HardwareProfile& h100() {
  static auto p = load_profile("traces/profiles/h100-sxm.json");
  REQUIRE(p);
  return **p;
}

// The hidden size a calibrate GEMM belongs to: each (hidden, tokens) block of the sweep adds
// its new shapes in order, so the first hidden whose grid names a shape is its hidden
// (executor/cuda/calibrate.cpp bench_gemm).
std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> hidden_of_shapes() {
  std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> h;
  for (int64_t c : {768, 1024, 1280, 1600})
    for (int64_t t = 256; t <= 32768; t *= 2)
      for (auto [in, out] : {std::pair{c, 3 * c}, {c, c}, {c, 4 * c}, {4 * c, c}, {c, int64_t{50304}}})
        for (auto s : {std::tuple{t, out, in}, {t, in, out}, {out, in, t}}) h.emplace(s, c);
  return h;
}

double mean_abs_error(const std::vector<double>& e) {
  double s = 0;
  for (double x : e) s += std::abs(x);
  return s / static_cast<double>(e.size());
}
}  // namespace

TEST_CASE("gemm model: the tile, the wave, split-K and the memory bound, by hand", "[gemm_model]") {
  const GemmModel g = toy();
  // 256 x 256 x 64: 128 x 128 tiles, 4 of them, one wave; a tile 2 x 128 x 128 x 64 FLOPs at 2.5e13.
  const GemmChoice c = gemm_choice(g, 256, 256, 64);
  CHECK(c.tile_m == 128);
  CHECK(c.tile_n == 128);
  CHECK(c.waves == 1);
  CHECK(c.seconds == Approx(2.0 * 128 * 128 * 64 / 2.5e13).epsilon(1e-12));
  // Wave quantization: 528 rows instead of 512 (3% more FLOPs) need a fifth wave of 128 x 128
  // tiles (20 tiles on 4 SMs), i.e. 25% more time.
  CHECK(g.seconds(528, 512, 128) / g.seconds(512, 512, 128) == Approx(1.25).epsilon(1e-12));
  // Split-K: one 128 x 128 tile of K 65536 runs as 4 parts on the 4 SMs.
  const GemmChoice s = gemm_choice(g, 128, 128, 65536);
  CHECK(s.split_k == 4);
  CHECK(s.waves == 1);
  CHECK(s.seconds == Approx(2.0 * 128 * 128 * 16384 / 2.5e13 + 0).epsilon(1e-12));
  // Memory-bound: with 1e9 B/s of HBM at efficiency 0.5, the operands' bytes decide, plus the launch.
  GemmModel m = toy();
  m.hw.hbm_bytes_per_s = 1e9;
  m.c.memory_efficiency = 0.5;
  m.c.launch_s = 1e-6;
  const double bytes = 2.0 * (4096 * 64 + 64 * 4096) + 8.0 * 4096 * 4096;  // fp32 output read and written
  CHECK(m.seconds(4096, 4096, 64, 8) == Approx(bytes / 0.5e9 + 1e-6).epsilon(1e-12));
  // FP8: 1-byte operands at twice the peak halve a compute-bound GEMM.
  CHECK(g.seconds_at(256, 256, 64, 2, 1, 2e14) == Approx(c.seconds / 2).epsilon(1e-12));
}

TEST_CASE("gemm model: the fit recovers the coefficients that made its samples", "[gemm_model]") {
  GemmModel truth;
  truth.hw = {989.4e12, 132, 3.35e12};
  truth.c = {0.7, 2e-6, 0.8, 3e-6};
  std::vector<GemmSample> v;
  for (const auto& [shape, hidden] : hidden_of_shapes()) {
    const auto [m, n, k] = shape;
    const double out = hidden == 768 && m == n ? 8 : 2;  // some fp32 accumulators among them
    v.push_back({double(m), double(n), double(k), out, truth.seconds(m, n, k, out)});
  }
  auto g = fit_gemm_model(v, truth.hw);
  REQUIRE(g);
  CHECK(g->c.mainloop_efficiency == Approx(0.7).epsilon(1e-2));
  CHECK(g->c.tile_overhead_s == Approx(2e-6).epsilon(5e-2));
  CHECK(g->c.memory_efficiency == Approx(0.8).epsilon(1e-2));
  CHECK(g->c.launch_s == Approx(3e-6).epsilon(5e-2));
  CHECK(g->fit_mape < 0.01);
  CHECK(g->samples == static_cast<int64_t>(v.size()));
  // Errors as values.
  CHECK_FALSE(fit_gemm_model({}, truth.hw));
  CHECK_FALSE(fit_gemm_model(v, GemmHardware{}));
  v[3].seconds = 0;
  auto bad = fit_gemm_model(v, truth.hw);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message == "gemm/3: needs m, n, k >= 1 and seconds > 0");
}

TEST_CASE("gemm model: the H100 profile's model is the fit of its 379 GEMMs, and it predicts a held-out hidden size "
          "better than the nearest measured shape", "[gemm_model]") {
  const HardwareProfile& p = h100();
  REQUIRE(p.gemm_model.valid());
  CHECK(p.gemm_model.samples == 379);
  auto refit = fit_gemm_model(p.gemm_samples(), p.gemm_model.hw);
  REQUIRE(refit);
  CHECK(refit->c.mainloop_efficiency == Approx(p.gemm_model.c.mainloop_efficiency).epsilon(1e-9));
  CHECK(refit->c.tile_overhead_s == Approx(p.gemm_model.c.tile_overhead_s).epsilon(1e-9));
  CHECK(refit->fit_mape < 0.11);
  // Hold out hidden 1600 (the largest: the direction the planner extrapolates in).
  const auto hidden = hidden_of_shapes();
  std::vector<GemmSample> train, test;
  HardwareProfile nearest = p;
  nearest.gemm_model = GemmModel{};
  nearest.gemm.clear();
  for (const auto& g : p.gemm) {
    const GemmSample s{double(g.m), double(g.n), double(g.k), g.accumulate_fp32 ? 8.0 : 2.0, g.seconds};
    if (hidden.at({g.m, g.n, g.k}) == 1600) {
      test.push_back(s);
    } else {
      train.push_back(s);
      nearest.gemm.push_back(g);
    }
  }
  REQUIRE(test.size() == 96);
  auto held = fit_gemm_model(train, p.gemm_model.hw);
  REQUIRE(held);
  std::vector<double> model_err, nearest_err;
  for (const auto& s : test) {
    model_err.push_back(held->seconds(s.m, s.n, s.k, s.out_bytes) / s.seconds - 1);
    nearest_err.push_back(nearest.gemm_s(s.m, s.n, s.k, s.out_bytes == 8) / s.seconds - 1);
  }
  INFO("model " << mean_abs_error(model_err) << ", nearest " << mean_abs_error(nearest_err));
  CHECK(mean_abs_error(model_err) < 0.12);
  CHECK(mean_abs_error(model_err) < mean_abs_error(nearest_err));
  // The profile's lookup: a measured shape is its measurement, any other shape the model.
  const ProfileGemm& fwd = p.gemm[0];  // 256 x 2304 x 768, a forward GEMM
  const ProfileGemm& acc = p.gemm[2];  // 2304 x 768 x 256, its weight gradient (fp32 accumulated)
  REQUIRE_FALSE(fwd.accumulate_fp32);
  REQUIRE(acc.accumulate_fp32);
  CHECK(p.gemm_s(fwd.m, fwd.n, fwd.k) == fwd.seconds);
  CHECK(p.gemm_s(acc.m, acc.n, acc.k, 8) == acc.seconds);
  CHECK(p.measured(acc.m, acc.n, acc.k, 8));
  CHECK_FALSE(p.measured(acc.m, acc.n, acc.k, 2));  // measured only as an accumulation
  CHECK(p.gemm_s(acc.m, acc.n, acc.k, 2) == p.gemm_model.seconds(acc.m, acc.n, acc.k, 2));
  CHECK(p.gemm_s(8192, 7168, 8192) == p.gemm_model.seconds(8192, 7168, 8192, 2));
}

TEST_CASE("gemm model: clusters carry the H100 model by their stated ratios", "[gemm_model]") {
  const GemmModel& h = h100().gemm_model;
  auto a100 = load_cluster("dgx-a100", "--cluster");
  auto h100c = load_cluster("dgx-h100", "--cluster");
  auto h200 = load_cluster("h200-sxm", "--cluster");
  REQUIRE(a100);
  REQUIRE(h100c);
  REQUIRE(h200);
  REQUIRE(a100->gemm_model);
  const GemmModel want = scale_gemm_model(h, {312e12, 108, 2.039e12}, 1.0724, 0.7705);
  CHECK(a100->gemm_model->c.mainloop_efficiency == want.c.mainloop_efficiency);
  CHECK(a100->gemm_model->c.mainloop_efficiency == Approx(h.c.mainloop_efficiency * 1.0724));
  CHECK(a100->gemm_model->c.tile_overhead_s == Approx(h.c.tile_overhead_s / 0.7705));
  CHECK(a100->gemm_model->hw.sm_count == 108);
  CHECK_FALSE(a100->gemm_model_measured);
  CHECK(h100c->gemm_model_measured);
  CHECK(h100c->gemm_model->seconds(8192, 8192, 8192) == h.seconds(8192, 8192, 8192));
  CHECK_FALSE(h200->gemm_model_measured);  // the H100's model on the H200's HBM
  CHECK(h200->gemm_model->hw.hbm_bytes_per_s == 4.8e12);
  // Written back as read.
  const nlohmann::json j = to_json(*a100);
  CHECK(j["efficiency"]["gemm_model"]["clock_ratio"] == 0.7705);
}

TEST_CASE("gemm model: batched and grouped GEMMs take off the launch the model put in", "[gemm_model]") {
  // Unfused attention's score GEMMs (one launch for the batch) and MoE's grouped experts: each
  // product's time less the model's launch, times the batch, plus that launch once; never less
  // than the launch, whatever the cluster's kernel_launch_s.
  const ClusterSpec c = *load_cluster("dgx-h100", "--cluster");
  TrainSpec t;
  const OpTimer op = OpTimer::of(c, t);
  REQUIRE(op.gemm_model != nullptr);
  const double L = op.gemm_model->c.launch_s;
  REQUIRE(L != op.launch_s);
  for (const int64_t m : {64, 2048}) {
    Op b = gemm("scores", Pass::forward, m, m, 64, 1);
    b.kind = OpKind::batched_gemm;
    b.batch = 96;
    const double one = op.gemm_model->seconds(double(m), double(m), 64);
    CHECK(op.op(b) == Approx((one - L) * 96 + L).epsilon(1e-12));
    CHECK(op.op(b) > L);
    Op g = gemm("experts", Pass::forward, m, 1024, 4096, 1);
    g.batch = 8;
    CHECK(op.op(g) == Approx((op.gemm_model->seconds(m, 1024, 4096) - L) * 8 + L).epsilon(1e-12));
  }
  // The weight gradient's output: accumulated in fp32 (8 bytes read and written), in bf16 (4),
  // or written for a separate add (2).
  t.grad_dtype = Dtype::fp32;
  CHECK(OpTimer::of(c, t).wgrad_out == 8);
  t.grad_dtype = Dtype::bf16;
  CHECK(OpTimer::of(c, t).wgrad_out == 4);
  t.grad_accumulation = GradAccumulation::separate;
  CHECK(OpTimer::of(c, t).wgrad_out == 2);
  CHECK(OpTimer::of(c, t).gemm_wgrad(8192, 4096, 4096) == op.gemm_model->seconds(4096, 4096, 8192, 2));
}

TEST_CASE("gemm model: bad input is one line naming the field, exit 2", "[gemm_model][cli]") {
  auto base = nlohmann::json::parse(slurp(std::string(LOOM_SOURCE_DIR) + "/models/clusters/dgx-a100.json"));
  auto with = [&](const nlohmann::json& ref) {
    auto j = base;
    j["efficiency"]["gemm_model"] = ref;
    return cluster_from_json(j, "c.json");
  };
  auto ok = with({{"from", "traces/profiles/h100-sxm.json"}, {"mainloop_efficiency_scale", 1.0}, {"clock_ratio", 1.0},
                  {"source", "s"}});
  CHECK(ok);
  auto unknown = with({{"from", "traces/profiles/h100-sxm.json"}, {"mainloop_efficiency_scale", 1.0},
                       {"clock_ratio", 1.0}, {"source", "s"}, {"clock", 1}});
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("gemm_model/clock") != std::string::npos);
  auto zero = with({{"from", "traces/profiles/h100-sxm.json"}, {"mainloop_efficiency_scale", 0.0},
                    {"clock_ratio", 1.0}, {"source", "s"}});
  REQUIRE_FALSE(zero);
  CHECK(zero.error().message.find("mainloop_efficiency_scale") != std::string::npos);
  auto missing = with({{"from", "no/such.json"}, {"mainloop_efficiency_scale", 1.0}, {"clock_ratio", 1.0},
                       {"source", "s"}});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message.find("c.json: /efficiency/gemm_model/from: no/such.json: no such profile file") == 0);
  auto no_sms = base;
  no_sms["gpu"].erase("sm_count");
  auto nsm = cluster_from_json(no_sms, "c.json");
  REQUIRE_FALSE(nsm);
  CHECK(nsm.error().message ==
        "c.json: /gpu/sm_count: is required with efficiency.gemm_model (the model prices tiles per SM)");
  // The command line: --fit-gemm needs the GPU's cluster.
  const LoomRun r = run_loom("calibrate --fit-gemm traces/profiles/h100-sxm.json");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --fit-gemm: needs --cluster (the GPU the profile was measured on)\n");
  const LoomRun f = run_loom("calibrate --fit-gemm " + std::string(LOOM_SOURCE_DIR) +
                             "/traces/profiles/h100-sxm.json --cluster h100-sxm --quiet");
  REQUIRE(f.code == 0);
  auto written = profile_from_json(nlohmann::json::parse(f.out), "stdout");
  REQUIRE(written);
  CHECK(written->gemm_model.c.mainloop_efficiency == Approx(h100().gemm_model.c.mainloop_efficiency).epsilon(1e-9));
}
