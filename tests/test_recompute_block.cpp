// A block recompute (ParallelConfig::recompute_layers, Megatron-LM's --recompute-method block
// --recompute-num-layers N): each model chunk's first N layers recomputed in full, the others
// keeping their activations. The memory, the recompute pass, the hardware FLOPs, the simulator,
// the rules, the CLI and the Megatron-LM flags, for dense and MoE layers. (The CPU executor
// trains it and measures its memory to the byte: tests/executor/test_parallel.cpp and, MoE,
// test_moe_mpi.cpp.)
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/moe.hpp"
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

int64_t op_count(const StageWork& w, const char* name, Pass pass) {
  for (const Op& o : w.ops)
    if (std::strcmp(o.name, name) == 0 && o.pass == pass) return o.count;
  return 0;
}

int64_t message_count(const StageWork& w, const char* name, Pass pass) {
  for (const Message& m : w.messages)
    if (std::strcmp(m.name, name) == 0 && m.pass == pass) return m.count;
  return 0;
}

double pass_flops(const StageWork& w, Pass pass) {
  double f = 0;
  for (const Op& o : w.ops)
    if (o.pass == pass) f += static_cast<double>(o.flops) * static_cast<double>(o.count);
  return f;
}

// `loom plan` for `job` (every split pinned, one chunk of `layers`), where recomputing none does
// not fit: its best recomputes the fewest first layers that fit, in full. Returns that row.
nlohmann::json check_fewest_block_that_fits(const std::string& job, int64_t layers) {
  const LoomRun planned = run_loom("plan " + job + "--top 1 --refine 0 --json");
  REQUIRE(planned.code == 0);
  const auto best = nlohmann::json::parse(planned.out)["top"][0];
  REQUIRE(best["recompute"] == "full");
  const int64_t n = best["recompute_layers"].get<int64_t>();
  CHECK(n > 1);
  CHECK(n < layers);
  auto fits = [&](const std::string& recompute) {
    const LoomRun r = run_loom("predict " + job + recompute + " --overlap-param-gather on --json");
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out)["fits"].get<bool>();
  };
  CHECK(fits("--recompute full --recompute-layers " + std::to_string(n)));
  CHECK_FALSE(fits("--recompute full --recompute-layers " + std::to_string(n - 1)));
  CHECK_FALSE(fits("--recompute none"));
  return best;
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

TEST_CASE("block and every-K-th recompute over interleaved chunks: the simulator plays the same step", "[simulator]") {
  const Job j = job("llama3-8b", "dgx-h100", 16, 64, 4096);
  ParallelConfig p;
  p.dp = 2, p.tp = 2, p.pp = 4, p.sp = true, p.schedule = Schedule::interleaved, p.vpp = 2;
  p.recompute = Recompute::full, p.recompute_layers = 2;  // 2 of each chunk's 4 layers
  check_simulated_step(CostModel(j.model, j.cluster, j.train), p, 0.01);
  p.recompute_layers = 0, p.recompute_every = 2;  // torchtitan's choice: layers 2 and 4 of each chunk
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
  // MoE layers: priced (tests below), but only over equal interleaved chunks.
  const std::string mixtral =
      "predict --model mixtral-8x7b --cluster dgx-h100 --gpus 32 --global-batch 32 --tp 1 --pp 4 "
      "--ep 8 --schedule interleaved --vpp 2 --recompute full --recompute-layers 2";
  CHECK(run_loom(mixtral).code == 0);
  const LoomRun short_chunk = run_loom(mixtral + " --stage-layers 7,8,8,9");
  CHECK(short_chunk.code == 2);
  CHECK(short_chunk.err ==
        "loom: --recompute-layers: a block recompute of MoE layers is priced with equal interleaved "
        "chunks only (stage_layers leaves a short chunk)\n");
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
  const nlohmann::json best = check_fewest_block_that_fits(job, 32);
  // Faster than recomputing every layer.
  const LoomRun all = run_loom("predict " + job + "--recompute full --overlap-param-gather on --json");
  REQUIRE(all.code == 0);
  CHECK(best["step_time_s"].get<double>() < nlohmann::json::parse(all.out)["step_time_s"].get<double>());
}

TEST_CASE("plan: a MoE model's block recompute, the fewest layers that fit", "[planner][moe]") {
  // DeepSeek-V2-Lite, seq 8192, on 8 H100s pinned to dp 8 x ep 8: no recompute does not fit; the
  // planner recomputes the fewest of the 27 layers (the dense first one among them) that do.
  check_fewest_block_that_fits("--model deepseek-v2-lite --cluster dgx-h100 --gpus 8 --global-batch 64 --seq 8192 "
                               "--tp 1 --pp 1 --cp 1 --ep 8 --zero 1 --micro-batch 1 --grad-dtype bf16 ",
                               27);
}

TEST_CASE("block recompute of MoE layers: each chunk's first N layers, dense or MoE, run again", "[stage_work][moe]") {
  // DeepSeek-V2-Lite: 27 layers, the first dense, the rest MoE (64 experts, 2 shared); 8 GPUs,
  // ep 8, one chunk; the first 5 layers recomputed: the dense one and 4 MoE layers.
  const Job j = job("deepseek-v2-lite", "dgx-h100", 8, 8, 4096);
  ParallelConfig p;
  p.dp = 8, p.ep = 8, p.recompute = Recompute::full, p.recompute_layers = 5;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  CHECK(op_count(w, "router", Pass::recompute) == 4);
  CHECK(op_count(w, "router", Pass::forward) == 26);
  CHECK(op_count(w, "mlp gate|up", Pass::recompute) == 1);
  CHECK(op_count(w, "swiglu", Pass::recompute) == 1);
  CHECK(op_count(w, "qkv", Pass::recompute) == 0);  // latent attention: its own projections
  CHECK(op_count(w, "attention projection", Pass::recompute) == 5);
  CHECK(message_count(w, "ep all-to-all", Pass::recompute) == 2 * 4);
  CHECK(message_count(w, "ep all-to-all", Pass::forward) == 2 * 26);
  // Memory: the recomputed layers keep their input (a MoE layer as a dense one), the rest all.
  const auto rec =
      layer_activation_bytes(j.model, 1, 4096, 1, false, Recompute::full, j.train.attention, j.train.dtype);
  const MoeStage ms = moe_stage(j.model, j.train, p, 0);
  CHECK(ms.rec_layers == 4);
  const int64_t moe_rec =
      moe_layer_activation_bytes(j.model, ms, 1, 4096, false, Recompute::full, j.train.attention, j.train.dtype);
  const int64_t moe_kept =
      moe_layer_activation_bytes(j.model, ms, 1, 4096, false, Recompute::none, j.train.attention, j.train.dtype);
  CHECK(buffer_bytes(w, "layer activations") == rec.total());  // the dense layer, recomputed
  CHECK(buffer_bytes(w, "moe layer activations") == 4 * moe_rec + 22 * moe_kept);
  // N at or beyond the chunk's layers is a full recompute, to the byte and the second.
  ParallelConfig beyond = p, every = p;
  beyond.recompute_layers = 27, every.recompute_layers = 0;
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate eb = cm.evaluate(beyond), ea = cm.evaluate(every), e = cm.evaluate(p);
  CHECK(eb.step_time_s == ea.step_time_s);
  CHECK(eb.memory.peak() == ea.memory.peak());
  CHECK(eb.flops_hardware == ea.flops_hardware);
  ParallelConfig none = p;
  none.recompute = Recompute::none, none.recompute_layers = 0;
  const Estimate en = cm.evaluate(none);
  CHECK(e.step_time_s > en.step_time_s);
  CHECK(e.step_time_s < ea.step_time_s);
  CHECK(e.memory.activations < en.memory.activations);
  CHECK(e.memory.activations > ea.memory.activations);
  check_simulated_step(cm, p, 0.01);
}

TEST_CASE("block recompute of MoE layers with tensor parallelism: the recompute's tp halves", "[stage_work][moe]") {
  // Mixtral 8x7B, tp 2 with SP, ep 4, interleaved 2 x 8 layers per stage over pp 2, the first 3
  // of each chunk recomputed: 6 MoE layers, each with 4 tp halves less the 2 its MLP (experts
  // over ep, none over tp) does not have.
  const Job j = job("mixtral-8x7b", "dgx-h100", 16, 32, 4096);
  ParallelConfig p;
  p.dp = 4, p.tp = 2, p.pp = 2, p.sp = true, p.ep = 4, p.schedule = Schedule::interleaved, p.vpp = 2;
  p.recompute = Recompute::full, p.recompute_layers = 3;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 1);
  CHECK(message_count(w, "tp activations", Pass::recompute) == 6 * 4 - 6 * 2);
  CHECK(message_count(w, "ep all-to-all", Pass::recompute) == 2 * 6);
  CHECK(op_count(w, "expert gate|up", Pass::recompute) == 6);
  CHECK(op_count(w, "mlp gate|up", Pass::recompute) == 0);
  check_simulated_step(CostModel(j.model, j.cluster, j.train), p, 0.01);
}
