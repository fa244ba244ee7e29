// Megatron-LM's tensor-parallel backward (TrainSpec::tp_backward_overlap): a column-parallel
// layer's backward collectives run beside its own gradient GEMMs (sim/tp_overlap.hpp).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/rank_grid.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/tp_overlap.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

// Korthikanti et al.'s 22B layer setting: tp 8 on one DGX A100, micro-batch 4 of 2048 tokens.
struct Setting {
  Job j = job("megatron-18.4b", "dgx-a100", 8, 4, 2048);
  ParallelConfig p;
  Setting(bool sp) {
    p.tp = 8, p.micro_batch = 4, p.sp = sp;
  }
  GroupLinks tp_links() const {
    Topology topo(j.cluster);
    return group_links(topo, *RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp)).tp;
  }
};

// The hidden time written out: per column-parallel layer (qkv, fc1), with c one tp half.
double expected_hidden_s(const Setting& x, bool sp) {
  const StageWork w = build_stage_work(x.j.model, x.j.cluster, x.j.train, x.p, 0);
  const GroupLinks tp = x.tp_links();
  const OpTimer op = OpTimer::of(x.j.cluster, x.j.train);
  const Message* half = nullptr;
  for (const Message& m : w.messages)
    if (std::strcmp(m.name, "tp activations") == 0 && m.pass == Pass::backward) half = &m;
  REQUIRE(half != nullptr);
  const double c = message_time_s(*half, tp);
  double out = 0;
  int pairs = 0;
  for (const Op& o : w.ops) {
    if (o.pass != Pass::backward || o.kind != OpKind::gemm_bwd) continue;
    if (o.tp_slot != TpOverlapSlot::qkv && o.tp_slot != TpOverlapSlot::fc1) continue;
    const double wg = o.scale * op.wgrad(o), dg = op.op(o) - wg;
    out += static_cast<double>(o.count) * (sp ? std::min(c, dg) + std::min(c, wg) : std::min(2 * c, wg));
    ++pairs;
  }
  CHECK(pairs == 2);  // QKV and fc1
  return out;
}

}  // namespace

TEST_CASE("tp backward: the column-parallel layers' collectives hide behind their gradient GEMMs", "[tp_backward]") {
  for (bool sp : {false, true}) {
    INFO("sp " << sp);
    Setting on(sp), off(sp);
    off.j.train.tp_backward_overlap = false;
    const double hidden = expected_hidden_s(on, sp);
    REQUIRE(hidden > 0);
    const Estimate a = CostModel(on.j.model, on.j.cluster, on.j.train).evaluate(on.p);
    const Estimate b = CostModel(off.j.model, off.j.cluster, off.j.train).evaluate(off.p);
    // One micro-batch: the exposed tp time falls by what hides, and the backward, on the SMs
    // NCCL's 24 channels leave of the A100's 108, grows by that share of it.
    CHECK(b.stages[0].tp_comm_s - a.stages[0].tp_comm_s == Approx(hidden).epsilon(1e-9));
    CHECK(a.stages[0].backward_s - b.stages[0].backward_s == Approx(24.0 / 108 * hidden).epsilon(1e-9));
    CHECK(a.stages[0].sm_contention_s == Approx(24.0 / 108 * hidden).epsilon(1e-9));
    CHECK(b.stages[0].sm_contention_s == 0);
    CHECK(a.step_time_s < b.step_time_s);
    // The simulator plays the same in-line remainder.
    const CostModel cm(on.j.model, on.j.cluster, on.j.train);
    auto sim = simulate(cm, on.p, SimOptions{});
    REQUIRE(sim.ok());
    CHECK(std::fabs(sim->step_time_s / a.step_time_s - 1) <= 1e-9);
  }
}

TEST_CASE("tp backward overlap in a plan and the engines", "[tp_backward]") {
  TrainSpec t = batch_of(8, 1024);
  CHECK_FALSE(to_json(t).contains("tp_backward_overlap"));  // on: plans stay as they were
  t.tp_backward_overlap = false;
  nlohmann::json j = to_json(t);
  CHECK(j["tp_backward_overlap"] == false);
  auto back = train_from_json(j, "plan.json");
  REQUIRE(back.ok());
  CHECK_FALSE(back->tp_backward_overlap);
  j["tp_backward_overlap"] = "no";
  CHECK_FALSE(train_from_json(j, "plan.json").ok());
  const std::string plan = "tp_backward_plan.json";
  const std::string base = "predict --model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 2 --pp 1 ";
  REQUIRE(run_loom(base + "-o " + plan).code == 0);
  LoomRun tt = run_loom("export " + plan + " --to torchtitan");
  REQUIRE(tt.code == 0);
  CHECK(tt.err.find("tp_backward_overlap on: torchtitan's tensor-parallel backward runs its collectives in-line") !=
        std::string::npos);
  REQUIRE(run_loom(base + "--tp-backward-overlap off -o " + plan).code == 0);
  LoomRun mg = run_loom("export " + plan + " --to megatron");
  REQUIRE(mg.code == 0);
  CHECK(mg.err.find("tp_backward_overlap off: Megatron-LM's column-parallel layers always overlap") != std::string::npos);
  LoomRun bad = run_loom(base + "--tp-backward-overlap maybe");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--tp-backward-overlap") != std::string::npos);
  std::remove(plan.c_str());
}

TEST_CASE("tp backward: schedules that split the backward hide nothing that way", "[tp_backward]") {
  // zb-h1 and zb-v defer the weight-gradient GEMMs to the W pass: Megatron-LM's column-parallel
  // backward then waits for its collective at once (nothing computes beside it).
  Setting on(true), off(true);
  off.j.train.tp_backward_overlap = false;
  for (Setting* x : {&on, &off}) x->p.tp = 4, x->p.pp = 2, x->p.schedule = Schedule::zb_v, x->p.vpp = 2;
  const Estimate a = CostModel(on.j.model, on.j.cluster, on.j.train).evaluate(on.p);
  const Estimate b = CostModel(off.j.model, off.j.cluster, off.j.train).evaluate(off.p);
  CHECK(a.step_time_s == b.step_time_s);
  CHECK(a.stages[0].tp_comm_s == b.stages[0].tp_comm_s);
  on.p.schedule = Schedule::one_f_one_b, off.p.schedule = Schedule::one_f_one_b, on.p.vpp = off.p.vpp = 1;
  CHECK(CostModel(on.j.model, on.j.cluster, on.j.train).evaluate(on.p).step_time_s <
        CostModel(off.j.model, off.j.cluster, off.j.train).evaluate(off.p).step_time_s);
}
