// Memory-bound kernels by kind (sim/mem_kind.hpp): the kind every memory op of a stage carries,
// the profile's "memory_by_kind" curves `loom calibrate` measures (sim/profile.hpp), and how
// the cost model's OpTimer prices an op from its kind's curve: at a measured size, the op gets
// the measured time back, since calibrate counts a kernel's bytes with the formulas stage_work
// counts the op's with.
#include <catch2/catch.hpp>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/profile.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

HardwareProfile h100() {
  auto p = load_profile("traces/profiles/h100-sxm.json");
  REQUIRE(p);
  return **p;
}

// A norm curve as calibrate writes it for RMSNorm over (N, 4096): forward points at the bytes
// norm_bytes counts, backward at 1.5x those, with the times given.
HardwareProfile with_norm_curve(double n0, double t_fwd0, double t_fwd1, double t_bwd0) {
  HardwareProfile p = h100();
  const double b0 = norm_bytes(n0, 2), b1 = norm_bytes(4 * n0, 2);
  p.memory_by_kind = {{MemKind::norm, false, b0, b0 / t_fwd0},
                      {MemKind::norm, false, b1, b1 / t_fwd1},
                      {MemKind::norm, true, kElementwiseBackwardScale * b0, kElementwiseBackwardScale * b0 / t_bwd0}};
  return p;
}

OpTimer timer_of(const HardwareProfile& p) {
  OpTimer t;
  t.prof = &p;
  t.mem_prof = &p;
  t.launch_s = p.kernel_launch_s;
  return t;
}

// `read` refuses `j` edited by `edit`, with a message that contains `what`.
template <class Read>
void check_rejected(const nlohmann::json& j, const std::function<void(nlohmann::json&)>& edit, const std::string& what,
                    Read read) {
  nlohmann::json bad = j;
  edit(bad);
  auto r = read(bad);
  REQUIRE_FALSE(r);
  INFO(r.error().message);
  CHECK(r.error().message.find(what) != std::string::npos);
}

const Op* find_op(const StageWork& w, const std::string& name, Pass pass) {
  for (const Op& o : w.ops)
    if (o.name == name && o.pass == pass) return &o;
  return nullptr;
}

}  // namespace

TEST_CASE("memory_by_kind: read strictly, written back as read") {
  HardwareProfile p = with_norm_curve(1 << 20, 4e-6, 12e-6, 7e-6);
  p.memory_by_kind.push_back({MemKind::cast, false, 4e6, 2e12});
  const nlohmann::json j = to_json(p);
  auto back = profile_from_json(j, "p.json");
  REQUIRE(back);
  REQUIRE(back->memory_by_kind.size() == 4);
  CHECK(back->memory_by_kind[3].kind == MemKind::cast);
  CHECK(back->memory_by_kind[2].backward);
  CHECK(back->memory_by_kind[1].bytes_per_s == p.memory_by_kind[1].bytes_per_s);
  CHECK(to_json(*back) == j);
  // A profile without the table (every profile measured before it) reads as before.
  nlohmann::json none = j;
  none.erase("memory_by_kind");
  REQUIRE(profile_from_json(none, "p.json"));

  auto rejects = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& what) {
    check_rejected(j, edit, what, [](const nlohmann::json& x) { return profile_from_json(x, "p.json"); });
  };
  rejects([](nlohmann::json& b) { b["memory_by_kind"][0]["kind"] = "layernorm"; }, "memory_by_kind/0/kind");
  rejects([](nlohmann::json& b) { b["memory_by_kind"][0]["kind"] = "elementwise"; }, "memory_bound");
  rejects([](nlohmann::json& b) { b["memory_by_kind"][0]["pass"] = "recompute"; }, "must be forward or backward");
  rejects([](nlohmann::json& b) { b["memory_by_kind"][0]["bytes_per_s"] = 0; }, "memory_by_kind/0/bytes_per_s");
  rejects([](nlohmann::json& b) { b["memory_by_kind"][0]["extra"] = 1; }, "extra");
  rejects([](nlohmann::json& b) { std::swap(b["memory_by_kind"][0], b["memory_by_kind"][1]); }, "must be sorted");
  rejects([](nlohmann::json& b) { std::swap(b["memory_by_kind"][2], b["memory_by_kind"][3]); }, "must be sorted");
  rejects([](nlohmann::json& b) { b["memory_by_kind"] = nlohmann::json::array(); }, "non-empty");
}

TEST_CASE("kind_bandwidth: the kind's curve for the pass, else its forward curve, else none") {
  const double n = 1 << 20;
  const HardwareProfile p = with_norm_curve(n, 4e-6, 12e-6, 7e-6);
  const double b0 = norm_bytes(n, 2), b1 = norm_bytes(4 * n, 2);
  CHECK(p.kind_bandwidth(MemKind::norm, false, b0) == b0 / 4e-6);
  CHECK(p.kind_bandwidth(MemKind::norm, false, b1) == b1 / 12e-6);
  // Between the points: linear in ln(bytes); beyond them, the end's.
  CHECK(p.kind_bandwidth(MemKind::norm, false, 2 * b0) == Approx((b0 / 4e-6 + b1 / 12e-6) / 2).epsilon(1e-12));
  CHECK(p.kind_bandwidth(MemKind::norm, false, b0 / 10) == b0 / 4e-6);
  CHECK(p.kind_bandwidth(MemKind::norm, false, b1 * 10) == b1 / 12e-6);
  // The backward curve is one point: flat.
  CHECK(p.kind_bandwidth(MemKind::norm, true, b1) == kElementwiseBackwardScale * b0 / 7e-6);
  // A kind measured forward only: its backward takes the forward curve.
  HardwareProfile c = p;
  c.memory_by_kind.push_back({MemKind::cast, false, 4e6, 2e12});
  CHECK(c.kind_bandwidth(MemKind::cast, true, 4e6) == 2e12);
  CHECK(c.has_kind(MemKind::cast));
  CHECK_FALSE(c.has_kind(MemKind::rotary));
  CHECK(c.kind_bandwidth(MemKind::rotary, false, 4e6) == 0);
}

TEST_CASE("an op of a measured kind and size is priced at the time calibrate measured") {
  // RMSNorm over 8192 tokens x 4096: calibrate recorded norm_bytes(n, 2) and 1.5x in backward.
  const double n = 8192.0 * 4096;
  const HardwareProfile p = with_norm_curve(n, 30e-6, 110e-6, 52e-6);
  const OpTimer t = timer_of(p);
  CHECK(t.op(memory_op("norms", MemKind::norm, Pass::forward, norm_bytes(n, 2), 1)) == Approx(30e-6).epsilon(1e-12));
  CHECK(t.op(memory_op("norms", MemKind::norm, Pass::backward, norm_bytes(n, 2), 1, kElementwiseBackwardScale)) ==
        Approx(52e-6).epsilon(1e-12));
  // The recompute pass runs forward kernels: the forward curve.
  CHECK(t.op(memory_op("norms", MemKind::norm, Pass::recompute, norm_bytes(n, 2), 1)) == Approx(30e-6).epsilon(1e-12));
  // A once-per-step op (scale 1 / micro-batches) is looked up at its call's bytes, then shared.
  CHECK(t.op(memory_op("norms", MemKind::norm, Pass::forward, norm_bytes(n, 2), 1, 0.25)) ==
        Approx(7.5e-6).epsilon(1e-12));
  // A kind without a curve keeps the elementwise curve: scale x memory_s(bytes), as before.
  const Op rope = memory_op("rope", MemKind::rotary, Pass::backward, 1e8, 1, kElementwiseBackwardScale);
  CHECK(t.op(rope) == kElementwiseBackwardScale * p.memory_s(1e8));
  // Without a profile nothing changes: the cluster's bandwidth x efficiency plus a launch.
  OpTimer d;
  d.hbm = 3.35e12, d.mem_eff = 0.85, d.launch_s = 4e-6;
  CHECK(d.op(memory_op("norms", MemKind::norm, Pass::backward, 1e8, 1, 1.5)) ==
        Approx(1.5 * (1e8 / (3.35e12 * 0.85) + 4e-6)));
}

TEST_CASE("every memory op of a stage names its kind, with the bytes calibrate counts for it") {
  auto m = load_model("llama3-8b", "test", nullptr);
  REQUIRE(m);
  auto c = load_cluster("h100-sxm", "test");
  REQUIRE(c);
  TrainSpec t;
  t.global_batch = 8;
  t.seq = 4096;
  ParallelConfig p;
  p.micro_batch = 1;
  const StageWork w = build_stage_work(*m, *c, t, p, 0);
  const double T = 4096, h = 4096, f = 14336, qk = (32 + 8) * 128;
  struct Want {
    const char* name;
    MemKind kind;
    double fwd_bytes;
  };
  for (const Want& x : {Want{"norms", MemKind::norm, norm_bytes(T * h, 2)},
                        Want{"residual adds", MemKind::residual, residual_bytes(T * h, 2)},
                        Want{"swiglu", MemKind::activation, gated_unit_bytes(T * f, 2)},
                        Want{"rope", MemKind::rotary, rotary_bytes(T * qk, 2)},
                        Want{"final norm", MemKind::norm, norm_bytes(T * h, 2)}}) {
    INFO(x.name);
    const Op* fwd = find_op(w, x.name, Pass::forward);
    REQUIRE(fwd);
    CHECK(fwd->mem == x.kind);
    CHECK(fwd->bytes == x.fwd_bytes);
    // Backward: the same bytes at 1.5x (the final norm's backward carries the 1.5 in its bytes).
    const Op* bwd = find_op(w, x.name, Pass::backward);
    REQUIRE(bwd);
    CHECK(bwd->mem == x.kind);
    CHECK(bwd->bytes * bwd->scale == kElementwiseBackwardScale * x.fwd_bytes);
  }
  const Op* ce = find_op(w, "cross-entropy", Pass::forward);
  REQUIRE(ce);
  CHECK(ce->mem == MemKind::cross_entropy);
  const Op* emb = find_op(w, "embedding", Pass::forward);
  REQUIRE(emb);
  CHECK(emb->mem == MemKind::embedding);
  // FP8: the casts before each FP8 GEMM are cast-transposes of its input.
  TrainSpec f8 = t;
  f8.fp8 = true;
  const StageWork w8 = build_stage_work(*m, *c, f8, p, 0);
  const Op* cast = find_op(w8, "fp8 input cast", Pass::forward);
  REQUIRE(cast);
  CHECK(cast->mem == MemKind::cast);
  CHECK(cast->bytes == fp8_cast_bytes(T * h));  // the QKV GEMM's (T, h) input
}

TEST_CASE("a cluster carries a profile's memory-bound curves: residual adds and measured kinds only") {
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c);
  REQUIRE(c->memory_curves);
  CHECK(c->memory_curves_measured);
  const HardwareProfile p = h100();
  TrainSpec t;
  t.global_batch = 8;
  t.seq = 4096;
  const OpTimer timer = OpTimer::of(*c, t);
  CHECK(timer.prof == nullptr);  // dgx-h100 is priced by its documented defaults and models
  REQUIRE(timer.mem_prof == c->memory_curves.get());
  // A residual add is the measured a + b itself: its curve.
  const Op add = memory_op("residual adds", MemKind::residual, Pass::backward, 1e8, 2, kElementwiseBackwardScale);
  CHECK(timer.op(add) == kElementwiseBackwardScale * p.memory_s(1e8));
  // A norm without its own curve keeps the documented bandwidth x efficiency and launch.
  const Op norm = memory_op("norms", MemKind::norm, Pass::forward, 1e8, 2);
  CHECK(timer.op(norm) ==
        Approx(1e8 / (c->gpu.hbm_bytes_per_s * c->efficiency.memory_bound) + c->efficiency.kernel_launch_s)
            .epsilon(1e-12));
  // Once the profile has the norm's curve, the cluster prices norms by it.
  ClusterSpec with = *c;
  with.memory_curves = std::make_shared<const HardwareProfile>(with_norm_curve(5e7 / 4, 20e-6, 60e-6, 30e-6));
  const Op measured = memory_op("norms", MemKind::norm, Pass::forward, norm_bytes(5e7, 2), 2);
  CHECK(OpTimer::of(with, t).op(measured) == Approx(60e-6).epsilon(1e-12));
  CHECK(priced_by(*c, t).find("residual adds by the memory-bound bandwidth curves of traces/profiles/h100-sxm.json "
                              "(measured on this GPU)") != std::string::npos);
  CHECK(priced_by(with, t).find("residual adds and the norm kernels by") != std::string::npos);
  // fp32 plans keep the documented figures.
  TrainSpec f32 = t;
  f32.dtype = Dtype::fp32;
  CHECK(OpTimer::of(*c, f32).mem_prof == nullptr);
}

TEST_CASE("efficiency.memory_curves: read strictly, written back, a ratio carries the curves") {
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c);
  const nlohmann::json j = to_json(*c);
  REQUIRE(j["efficiency"]["memory_curves"]["from"] == "traces/profiles/h100-sxm.json");
  auto back = cluster_from_json(j, "c.json");
  REQUIRE(back);
  CHECK(to_json(*back) == j);
  nlohmann::json half = j;
  half["efficiency"]["memory_curves"]["bandwidth_ratio"] = 0.5;
  auto h = cluster_from_json(half, "c.json");
  REQUIRE(h);
  CHECK_FALSE(h->memory_curves_measured);
  CHECK(h->memory_curves->bandwidth(1e9) == 0.5 * c->memory_curves->bandwidth(1e9));
  CHECK(priced_by(*h, TrainSpec{}).find("carried by the stated bandwidth ratio, not measured") != std::string::npos);
  auto rejects = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& what) {
    check_rejected(j, edit, what, [](const nlohmann::json& x) { return cluster_from_json(x, "c.json"); });
  };
  rejects([](nlohmann::json& b) { b["efficiency"]["memory_curves"]["bandwidth_ratio"] = 0; },
          "memory_curves/bandwidth_ratio");
  rejects([](nlohmann::json& b) { b["efficiency"]["memory_curves"]["from"] = "no/such.json"; },
          "efficiency/memory_curves/from");
  rejects([](nlohmann::json& b) { b["efficiency"]["memory_curves"]["scale"] = 1; }, "scale");
}
