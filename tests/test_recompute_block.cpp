// A block recompute (ParallelConfig::recompute_layers, Megatron-LM's --recompute-method block
// --recompute-num-layers N): each model chunk's first N layers recomputed in full, the others
// keeping their activations. The memory, the recompute pass, the hardware FLOPs, the simulator,
// the rules, the CLI and the Megatron-LM flags. (The CPU executor trains it and measures its
// memory to the byte: tests/executor/test_parallel.cpp.)
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/simulator.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

std::string plain(const std::string& field) { return field; }

int64_t buffer_bytes(const StageWork& w, const char* name) {
  for (const Buffer& b : w.buffers)
    if (std::strcmp(b.name, name) == 0) return b.bytes;
  return 0;
}

double pass_flops(const StageWork& w, Pass pass) {
  double f = 0;
  for (const Op& o : w.ops)
    if (o.pass == pass) f += static_cast<double>(o.flops) * static_cast<double>(o.count);
  return f;
}

}  // namespace

TEST_CASE("block recompute: the first N layers keep their input, the rest everything", "[stage_work]") {
  // Llama 3 8B on one H100 node, tp 1, pp 1: one chunk of 32 layers, 5 recomputed (Megatron-
  // Bridge's 8B preset of 25.11).
  const Job j = job("llama3-8b", "dgx-h100", 8, 64, 8192);
  ParallelConfig p;
  p.dp = 8, p.recompute = Recompute::full, p.recompute_layers = 5;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const auto rec = layer_activation_bytes(j.model, 1, 8192, 1, false, Recompute::full, j.train.attention, j.train.dtype);
  const auto kept = layer_activation_bytes(j.model, 1, 8192, 1, false, Recompute::none, j.train.attention, j.train.dtype);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  CHECK(buffer_bytes(w, "layer activations") == 5 * rec.total() + 27 * kept.total());
  CHECK(buffer_bytes(w, "recomputed layer") == kept.total() - rec.total());  // one layer rebuilt at a time
  // The recompute pass is 5 layers' forward: 5/32 of a full recompute's.
  ParallelConfig every = p;
  every.recompute_layers = 0;
  const StageWork all = build_stage_work(j.model, j.cluster, j.train, every, 0);
  CHECK(pass_flops(w, Pass::recompute) == Approx(pass_flops(all, Pass::recompute) * 5 / 32).epsilon(1e-12));
  // Hardware FLOPs: the model's, and 5 layers' forward once more.
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate e = cm.evaluate(p);
  const double layer_fwd =
      static_cast<double>(layer_forward_flops(j.model, j.train.global_batch, 8192, AttentionFlops::full).total());
  CHECK(static_cast<double>(e.flops_hardware) ==
        Approx(static_cast<double>(model_flops(j.model, j.train.global_batch, 8192, AttentionFlops::full)) + 5 * layer_fwd)
            .epsilon(1e-12));
  // N at or beyond the chunk's layers is every layer.
  ParallelConfig beyond = p;
  beyond.recompute_layers = 40;
  CHECK(buffer_bytes(build_stage_work(j.model, j.cluster, j.train, beyond, 0), "layer activations") ==
        32 * rec.total());
  // Time and memory between recomputing none and every layer, and the simulator agrees.
  ParallelConfig none = p;
  none.recompute = Recompute::none, none.recompute_layers = 0;
  const Estimate en = cm.evaluate(none), ea = cm.evaluate(every);
  CHECK(e.step_time_s > en.step_time_s);
  CHECK(e.step_time_s < ea.step_time_s);
  CHECK(e.memory.activations > ea.memory.activations);
  CHECK(e.memory.activations < en.memory.activations);
}

TEST_CASE("block recompute over interleaved chunks: the simulator plays the same step", "[simulator]") {
  const Job j = job("llama3-8b", "dgx-h100", 16, 64, 4096);
  ParallelConfig p;
  p.dp = 2, p.tp = 2, p.pp = 4, p.sp = true, p.schedule = Schedule::interleaved, p.vpp = 2;
  p.recompute = Recompute::full, p.recompute_layers = 2;  // 2 of each chunk's 4 layers
  check_simulated_step(CostModel(j.model, j.cluster, j.train), p, 0.01);
}

TEST_CASE("block recompute: rules, CLI and Megatron-LM's flags", "[cli][import]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 64, 8192);
  ParallelConfig p;
  p.dp = 8, p.recompute = Recompute::selective, p.recompute_layers = 5;
  CHECK(validate_config(j.model, j.cluster, j.train, p, plain).error().message ==
        "recompute_layers: recomputes the first layers of each chunk in full: needs recompute full (got recompute "
        "selective)");
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 64 --seq 2048 ";
  const LoomRun bad = run_loom("predict " + job + "--tp 1 --pp 1 --recompute-layers 5");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom: --recompute-layers: recomputes the first layers of each chunk in full: needs recompute full "
                   "(got recompute none)\n");
  const LoomRun zero = run_loom("predict " + job + "--tp 1 --pp 1 --recompute full --recompute-layers 0");
  CHECK(zero.code == 2);
  const LoomRun mixtral = run_loom("predict --model mixtral-8x7b --cluster dgx-h100 --gpus 8 --global-batch 8 --tp 1 "
                                   "--pp 1 --ep 8 --recompute full --recompute-layers 4");
  CHECK(mixtral.code == 2);
  CHECK(mixtral.err == "loom: --recompute-layers: a block recompute is priced for dense layers only (the model has MoE "
                      "layers)\n");
  // plan: a pinned block makes every candidate a full recompute of those layers.
  const LoomRun planned = run_loom("plan " + job + "--recompute-layers 5 --top 1 --refine 0 --json");
  REQUIRE(planned.code == 0);
  const auto best = nlohmann::json::parse(planned.out)["top"][0];
  CHECK(best["recompute"] == "full");
  CHECK(best["recompute_layers"] == 5);
  // Megatron-LM: --recompute-method block --recompute-num-layers 5, and back.
  const RoundTrip rt = export_round_trip("megatron", job + "--tp 2 --pp 2 --zero 1 --recompute full --recompute-layers 5",
                                         "--cluster dgx-h100 --gpus 8", "rc_block",
                                         "--recompute-method block \\\n  --recompute-num-layers 5");
  CHECK(plan_configuration(rt.imported)["parallel"]["recompute_layers"] == 5);
}

TEST_CASE("plan: the block recompute of the fewest layers that fit, where recomputing none does not", "[planner]") {
  // Llama 3 8B, seq 8192, on 8 H100s with every split pinned to dp 8: no recompute does not fit,
  // and the planner finds the fewest layers of the one chunk whose recompute does.
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 128 --seq 8192 --tp 1 --pp 1 "
                          "--cp 1 --zero 1 --micro-batch 1 --grad-dtype bf16 ";
  const LoomRun planned = run_loom("plan " + job + "--top 1 --refine 0 --json");
  REQUIRE(planned.code == 0);
  const auto best = nlohmann::json::parse(planned.out)["top"][0];
  REQUIRE(best["recompute"] == "full");
  const int64_t n = best["recompute_layers"].get<int64_t>();
  CHECK(n > 1);
  CHECK(n < 32);
  auto fits = [&](int64_t layers) {
    const LoomRun r = run_loom("predict " + job + "--recompute full --recompute-layers " + std::to_string(layers) +
                               " --overlap-param-gather on --json");
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out)["fits"].get<bool>();
  };
  CHECK(fits(n));
  CHECK_FALSE(fits(n - 1));
  const LoomRun none = run_loom("predict " + job + "--overlap-param-gather on --json");
  REQUIRE(none.code == 0);
  CHECK_FALSE(nlohmann::json::parse(none.out)["fits"].get<bool>());
  // Faster than recomputing every layer.
  const LoomRun all = run_loom("predict " + job + "--recompute full --overlap-param-gather on --json");
  REQUIRE(all.code == 0);
  CHECK(best["step_time_s"].get<double>() < nlohmann::json::parse(all.out)["step_time_s"].get<double>());
}
