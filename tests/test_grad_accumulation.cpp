// GradAccumulation (sim/specs.hpp): fused adds micro-batches' gradients inside the
// weight-gradient GEMM; separate adds them with a memory-bound kernel of its own.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "planner/export.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

const Op* accumulation_op(const StageWork& w) {
  for (const Op& o : w.ops)
    if (std::strcmp(o.name, "gradient accumulation") == 0) return &o;
  return nullptr;
}

// GPT-2 350M, dp 4 of 16 GPUs with tp 2 and pp 2, 8 micro-batches of 2 per step.
ParallelConfig three_d(int zero) {
  ParallelConfig p;
  p.dp = 4, p.tp = 2, p.pp = 2, p.zero = zero, p.micro_batch = 2, p.sp = true;
  return p;
}

}  // namespace

TEST_CASE("separate accumulation: every micro-batch but the first reads both and writes the sum", "[accumulation]") {
  Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  for (int zero : {0, 1, 2, 3}) {
    INFO("zero " << zero);
    const ParallelConfig p = three_d(zero);
    j.train.grad_accumulation = GradAccumulation::fused;
    CHECK(accumulation_op(build_stage_work(j.model, j.cluster, j.train, p, 0)) == nullptr);
    j.train.grad_accumulation = GradAccumulation::separate;
    const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
    const Op* add = accumulation_op(w);
    REQUIRE(add != nullptr);
    CHECK(add->pass == Pass::backward);
    CHECK(add->kind == OpKind::memory);
    CHECK(add->count == 1);
    // 8 micro-batches: 7 adds of 3 bf16 reads and writes per gradient, a share per micro-batch;
    // ZeRO 2 and 3 hold a quarter of the gradients (their shard over dp 4).
    const double held = static_cast<double>(w.params) / (zero >= 2 ? 4 : 1);
    CHECK(add->bytes == Approx(3.0 * 2 * held * 7 / 8).epsilon(1e-12));
  }
  // One micro-batch per step: nothing to add.
  ParallelConfig one = three_d(1);
  one.micro_batch = 16;
  CHECK(accumulation_op(build_stage_work(j.model, j.cluster, j.train, one, 0)) == nullptr);
}

TEST_CASE("separate accumulation lengthens the step by the adds' time, in both engines", "[accumulation]") {
  Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  const ParallelConfig p = three_d(1);
  const Estimate fused = CostModel(j.model, j.cluster, j.train).evaluate(p, false);
  j.train.grad_accumulation = GradAccumulation::separate;
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate separate = cm.evaluate(p, false);
  const OpTimer op = OpTimer::of(j.cluster, j.train);
  const Op* add = accumulation_op(build_stage_work(j.model, j.cluster, j.train, p, 0));
  REQUIRE(add != nullptr);
  CHECK(separate.stages[0].backward_s - fused.stages[0].backward_s == Approx(op.op(*add)).epsilon(1e-9));
  CHECK(separate.step_time_s > fused.step_time_s);
  auto sim = simulate(cm, p, SimOptions{});
  REQUIRE(sim.ok());
  CHECK(std::fabs(sim->step_time_s / cm.evaluate(p).step_time_s - 1) <= 0.03);
}

TEST_CASE("grad_accumulation in a plan: written when separate, read back, refused when unknown", "[accumulation]") {
  TrainSpec t = batch_of(64, 1024);
  CHECK_FALSE(to_json(t).contains("grad_accumulation"));  // fused: plans stay as they were
  t.grad_accumulation = GradAccumulation::separate;
  nlohmann::json j = to_json(t);
  CHECK(j["grad_accumulation"] == "separate");
  auto back = train_from_json(j, "plan.json");
  REQUIRE(back.ok());
  CHECK(back->grad_accumulation == GradAccumulation::separate);
  j["grad_accumulation"] = "sometimes";
  auto bad = train_from_json(j, "plan.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("grad_accumulation") != std::string::npos);
}

TEST_CASE("Megatron-LM's --no-gradient-accumulation-fusion is separate accumulation, out and back", "[accumulation]") {
  const std::string plan = "accumulation_plan.json", launch = "accumulation_launch.sh", back = "accumulation_back.json";
  const LoomRun pr = run_loom(
      "predict --model gpt2-350m --cluster dgx-a100 --gpus 16 --global-batch 64 --tp 2 --pp 2 --zero 1 --sp on "
      "--micro-batch 2 --grad-accumulation separate -o " + plan);
  REQUIRE(pr.code == 0);
  const LoomRun ex = run_loom("export " + plan + " --to megatron -o " + launch);
  REQUIRE(ex.code == 0);
  CHECK(slurp(launch).find("--no-gradient-accumulation-fusion") != std::string::npos);
  const LoomRun im = run_loom("import megatron " + launch + " --cluster dgx-a100 --gpus 16 -o " + back);
  REQUIRE(im.code == 0);
  CHECK(nlohmann::json::parse(slurp(back))["train"]["grad_accumulation"] == "separate");
  // torchtitan accumulates in autograd: a fused plan over several micro-batches says so.
  const LoomRun fused = run_loom(
      "predict --model gpt2-350m --cluster dgx-a100 --gpus 16 --global-batch 64 --tp 2 --pp 1 --micro-batch 2 -o " + plan);
  REQUIRE(fused.code == 0);
  const LoomRun tt = run_loom("export " + plan + " --to torchtitan");
  REQUIRE(tt.code == 0);
  CHECK(tt.err.find("grad_accumulation fused") != std::string::npos);
  const LoomRun bad = run_loom(
      "predict --model gpt2-350m --cluster dgx-a100 --gpus 16 --global-batch 64 --tp 2 --pp 1 --grad-accumulation maybe");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--grad-accumulation") != std::string::npos);
  for (const std::string& f : {plan, launch, back}) std::remove(f.c_str());
}
