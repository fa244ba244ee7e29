// Every K-th layer of each model chunk recomputed in full (ParallelConfig::recompute_every,
// torchtitan's activation_checkpoint selective_ac_option = "K"): a chunk of n layers recomputes
// its layers K, 2K, ... (n / K of them), the others keeping their activations. For a dense model
// that costs what a block recompute of as many layers costs, chunk by chunk, which is what these
// tests pin (the simulator: tests/test_recompute_block.cpp); then the rules, the CLI, and torchtitan's and Megatron-LM's files. (The CPU executor
// trains it and measures it to the byte: tests/executor/test_parallel.cpp.)
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

std::string plain(const std::string& field) { return field; }

// Two stages' work equal buffer by buffer and op by op (names, passes, counts, bytes, FLOPs).
void check_same_work(const StageWork& a, const StageWork& b) {
  REQUIRE(a.buffers.size() == b.buffers.size());
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    INFO(a.buffers[i].name);
    CHECK(std::strcmp(a.buffers[i].name, b.buffers[i].name) == 0);
    CHECK(a.buffers[i].bytes == b.buffers[i].bytes);
  }
  REQUIRE(a.ops.size() == b.ops.size());
  for (size_t i = 0; i < a.ops.size(); ++i) {
    INFO(a.ops[i].name);
    CHECK(std::strcmp(a.ops[i].name, b.ops[i].name) == 0);
    CHECK(a.ops[i].pass == b.ops[i].pass);
    CHECK(a.ops[i].count == b.ops[i].count);
    CHECK(a.ops[i].flops == b.ops[i].flops);
  }
  REQUIRE(a.messages.size() == b.messages.size());
  for (size_t i = 0; i < a.messages.size(); ++i) CHECK(a.messages[i].count == b.messages[i].count);
}

}  // namespace

TEST_CASE("recompute every K-th layer: which layers, and how many of a chunk", "[specs]") {
  ParallelConfig p;
  p.recompute = Recompute::full, p.recompute_every = 2;
  // torchtitan counts a model part's blocks from 1 and checkpoints those whose count K divides.
  for (int64_t i = 0; i < 7; ++i) CHECK(p.layer_recomputed(i, 7) == (i == 1 || i == 3 || i == 5));
  CHECK(p.recomputed_layers(7) == 3);
  CHECK(p.recomputed_layers(8) == 4);
  CHECK(p.recomputed_layers(1) == 0);
  CHECK(p.partial_recompute());
  p.recompute_every = 3;
  CHECK(p.recomputed_layers(2) == 0);
  CHECK(p.recomputed_layers(9) == 3);
  p.recompute = Recompute::selective;  // only a full recompute chooses layers
  CHECK(p.recomputed_layers(9) == 0);
  CHECK_FALSE(p.layer_recomputed(2, 9));
}

TEST_CASE("recompute every K-th layer: each stage's work is a block recompute of as many layers", "[stage_work]") {
  // Llama 3 8B over pp 4 with torchtitan-like uneven stages (7, 9, 9, 7 layers): every 2nd layer
  // recomputes 3 of the outer stages' layers and 4 of the inner ones', which no single block
  // recompute does; each stage is the block of its own count exactly.
  const Job j = job("llama3-8b", "dgx-h100", 8, 64, 4096);
  ParallelConfig every;
  every.dp = 2, every.pp = 4, every.stage_layers = {7, 9, 9, 7};
  every.recompute = Recompute::full, every.recompute_every = 2;
  REQUIRE(validate_config(j.model, j.cluster, j.train, every, plain).ok());
  for (int64_t stage = 0; stage < 4; ++stage) {
    INFO("stage " << stage);
    ParallelConfig block = every;
    block.recompute_every = 0, block.recompute_layers = stage == 0 || stage == 3 ? 3 : 4;
    check_same_work(build_stage_work(j.model, j.cluster, j.train, every, stage),
                    build_stage_work(j.model, j.cluster, j.train, block, stage));
  }
  // One chunk of 32 layers: every 2nd is the block of 16 (time, memory and FLOPs), and every 3rd
  // the block of 10.
  const CostModel cm(j.model, j.cluster, j.train);
  for (auto [k, n] : {std::pair<int64_t, int64_t>{2, 16}, {3, 10}}) {
    ParallelConfig e, b;
    e.dp = b.dp = 8;
    e.recompute = b.recompute = Recompute::full;
    e.recompute_every = k, b.recompute_layers = n;
    const Estimate ee = cm.evaluate(e), eb = cm.evaluate(b);
    CHECK(ee.step_time_s == eb.step_time_s);
    CHECK(ee.memory.peak() == eb.memory.peak());
    CHECK(ee.memory.activations == eb.memory.activations);
    CHECK(ee.flops_hardware == eb.flops_hardware);
  }
}

TEST_CASE("recompute every K-th layer: a chunk shorter than K recomputes nothing and rebuilds nothing", "[stage_work]") {
  // Llama 3 8B over pp 8 (chunks of 4 layers) with every 5th layer: no layer is recomputed, so
  // the step is recompute none's, to the second and the byte (no rebuilt layer held either).
  const Job j = job("llama3-8b", "dgx-h100", 16, 64, 4096);
  ParallelConfig none;
  none.dp = 2, none.pp = 8;
  ParallelConfig every = none;
  every.recompute = Recompute::full, every.recompute_every = 5;
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate en = cm.evaluate(none), ee = cm.evaluate(every);
  CHECK(ee.step_time_s == en.step_time_s);
  CHECK(ee.memory.peak() == en.memory.peak());
  CHECK(ee.flops_hardware == en.flops_hardware);
  // (Interleaved chunks of which some recompute none, whose backward then holds no rebuilt
  // layer: the CPU executor measures that peak to the byte, tests/executor/test_parallel.cpp.)
}

TEST_CASE("recompute every K-th layer: rules and CLI", "[cli]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 64, 8192);
  ParallelConfig p;
  p.dp = 8, p.recompute = Recompute::selective, p.recompute_every = 2;
  CHECK(validate_config(j.model, j.cluster, j.train, p, plain).error().message ==
        "recompute_every: recomputes every K-th layer of each chunk in full: needs recompute full (got recompute "
        "selective)");
  p.recompute = Recompute::full, p.recompute_layers = 4;
  CHECK(validate_config(j.model, j.cluster, j.train, p, plain).error().message ==
        "recompute_every: and recompute_layers choose the recomputed layers two ways: set one (got recompute_layers 4)");
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 64 --seq 2048 ";
  const LoomRun bad = run_loom("predict " + job + "--tp 1 --pp 1 --recompute-every 2");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom: --recompute-every: recomputes every K-th layer of each chunk in full: needs recompute full "
                   "(got recompute none)\n");
  CHECK(run_loom("predict " + job + "--tp 1 --pp 1 --recompute full --recompute-every 0").code == 2);
  // A block longer than any chunk is a full recompute said another way: refused, with the bound.
  const LoomRun long_block = run_loom("predict " + job + "--tp 1 --pp 2 --recompute full --recompute-layers 17");
  CHECK(long_block.code == 2);
  CHECK(long_block.err == "loom: --recompute-layers: must be at most the layers of a model chunk, 16 (got 17; for every "
                          "layer, leave it 0)\n");
  const std::string mixtral = "--model mixtral-8x7b --cluster dgx-h100 --gpus 32 --global-batch 32 ";
  const LoomRun moe = run_loom("predict " + mixtral + "--tp 1 --pp 4 --ep 8 --recompute full --recompute-every 2");
  CHECK(moe.code == 2);
  CHECK(moe.err == "loom: --recompute-every: every K-th layer is priced for dense models only (a MoE model's recomputed "
                   "layers depend on which are MoE layers)\n");
  const LoomRun moe_plan = run_loom("plan " + mixtral + "--recompute-every 2");
  CHECK(moe_plan.code == 2);
  CHECK(moe_plan.err == "loom: --recompute-every: every K-th layer is priced for dense models only (a MoE model's "
                        "recomputed layers depend on which are MoE layers; got mixtral-8x7b)\n");
  const LoomRun predicted = run_loom("predict " + job + "--tp 1 --pp 1 --recompute full --recompute-every 2");
  REQUIRE(predicted.code == 0);
  CHECK(predicted.out.find("recompute full (layers 2, 4, ... of each chunk)") != std::string::npos);
  // plan: pinned, every candidate recomputes every 2nd layer in full; with a block pinned too, refused.
  const LoomRun planned = run_loom("plan " + job + "--recompute-every 2 --top 1 --refine 0 --json");
  REQUIRE(planned.code == 0);
  const auto best = nlohmann::json::parse(planned.out)["top"][0];
  CHECK(best["recompute"] == "full");
  CHECK(best["recompute_every"] == 2);
  const LoomRun both = run_loom("plan " + job + "--recompute-every 2 --recompute-layers 3 --top 1");
  CHECK(both.code == 2);
  CHECK(both.err == "loom: --recompute-every: and --recompute-layers choose the recomputed layers two ways: give one\n");
}

TEST_CASE("recompute every K-th layer: torchtitan's selective_ac_option and Megatron-LM's block", "[export][import]") {
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 64 --seq 2048 ";
  // torchtitan: mode "selective" with "2", and back.
  const RoundTrip tt = export_round_trip("torchtitan", job + "--tp 2 --pp 2 --zero 3 --recompute full --recompute-every 2",
                                         "--cluster dgx-h100 --gpus 8", "rc_every_tt",
                                         "mode = \"selective\"\nselective_ac_option = \"2\"");
  CHECK(plan_configuration(tt.imported)["parallel"]["recompute_every"] == 2);
  CHECK(plan_configuration(tt.imported)["parallel"]["recompute"] == "full");
  // Megatron-LM has no every-K-th: the block of as many (each stage's 16 layers recompute 8).
  const std::string plan = temp_file("rc_every_mg_plan.json", "");
  const LoomRun pr = run_loom("predict " + job + "--tp 2 --pp 2 --zero 1 --recompute full --recompute-every 2 -o " + plan);
  REQUIRE(pr.code == 0);
  const LoomRun mg = run_loom("export " + plan + " --to megatron");
  REQUIRE(mg.code == 0);
  CHECK(mg.out.find("--recompute-method block \\\n  --recompute-num-layers 8") != std::string::npos);
  CHECK(mg.err.find("recompute_every 2: Megatron-LM recomputes a block of each chunk's first layers, not every K-th; "
                    "emitted as the block of as many (8), which costs a dense model the same") != std::string::npos);
  // Every 20th of 16-layer stages recomputes nothing, as loom prices it: no recompute flags.
  const std::string none = temp_file("rc_every_none_plan.json", "");
  REQUIRE(run_loom("predict " + job + "--tp 2 --pp 2 --zero 1 --recompute full --recompute-every 20 -o " + none).code ==
          0);
  const LoomRun mg_none = run_loom("export " + none + " --to megatron");
  REQUIRE(mg_none.code == 0);
  CHECK(mg_none.out.find("--recompute-") == std::string::npos);
  CHECK(mg_none.err.find("no chunk holds 20 layers, so none is recomputed; emitted without recompute") !=
        std::string::npos);
  // And back: a block of each 16-layer stage's first 5 is torchtitan's every 3rd (16 / 3 = 5); a
  // block of 7 has no such K (16 / 2 = 8, 16 / 3 = 5) and is written as full recompute.
  const RoundTrip b5 = export_round_trip("torchtitan", job + "--tp 2 --pp 2 --zero 3 --recompute full --recompute-layers 5",
                                         "--cluster dgx-h100 --gpus 8", "rc_block5_tt",
                                         "mode = \"selective\"\nselective_ac_option = \"3\"");
  CHECK(plan_configuration(b5.imported)["parallel"]["recompute_every"] == 3);
  const std::string b7 = temp_file("rc_block7_plan.json", "");
  REQUIRE(run_loom("predict " + job + "--tp 2 --pp 2 --zero 3 --recompute full --recompute-layers 7 -o " + b7).code == 0);
  const LoomRun tt7 = run_loom("export " + b7 + " --to torchtitan");
  REQUIRE(tt7.code == 0);
  CHECK(tt7.out.find("mode = \"full\"") != std::string::npos);
  CHECK(tt7.err.find("recompute_layers 7: torchtitan's full activation checkpointing recomputes every layer") !=
        std::string::npos);
}
