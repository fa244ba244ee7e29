// torchtitan's per-op selective checkpointing (Recompute::op; torchtitan v0.2.2
// distributed/activation_checkpoint.py _apply_op_sac with the Llama block's _op_sac_save_list):
// each layer keeps its input, the outputs of wq, wv, w1 and w2 (the odd-numbered of the block's
// seven aten.mm), its attention output and log-sum-exp and, with tp > 1, its two reduce-scatters'
// outputs, and reruns wk, wo, w3, the norms, RoPE, the first residual add and SwiGLU in backward.
// Pinned here by hand: the bytes kept and rebuilt, the ops and messages rerun, the hardware FLOPs,
// the rules, and what torchtitan's, Megatron-LM's and DeepSpeed's files say of it.
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "executor/trainer_plan_rules.hpp"
#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/stage_work.hpp"
#include "sim/tp_overlap.hpp"
#include "sim/validate.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

std::string plain(const std::string& field) { return field; }

const Buffer* buffer(const StageWork& w, const char* name) {
  for (const Buffer& b : w.buffers)
    if (std::strcmp(b.name, name) == 0) return &b;
  return nullptr;
}

}  // namespace

TEST_CASE("recompute op: the bytes each layer keeps, by hand", "[stage_work]") {
  // Llama 3 8B: h 4096, q 4096 (32 heads of 128), kv 1024 (8 heads), f 14336; b 2, s 8192.
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 8192);
  const ModelSpec* m = &j.model;
  const int64_t T = 2 * 8192, e = 2;
  // tp 1: x (h) + wq (q) + wv (kv) + attention output (q) + w1 (f) + w2 (h) elements per token.
  const auto one = layer_activation_bytes(*m, 2, 8192, 1, false, Recompute::op, Attention::fused, Dtype::bf16);
  CHECK(one.tensors == e * T * (4096 + 4096 + 1024 + 4096 + 14336 + 4096));  // 1040187392
  CHECK(one.tensors == 1040187392);
  CHECK(one.statistics == 4 * 32 * T);  // fp32 log-sum-exp per head and token
  // tp 2 with SP: x over tp ranks' rows; wq, wv, the attention output and w1 sharded; w2's
  // row-parallel product whole (b s x h partial sums); the two reduce-scatters' outputs (h / 2).
  const auto two = layer_activation_bytes(*m, 2, 8192, 2, true, Recompute::op, Attention::fused, Dtype::bf16);
  CHECK(two.tensors == e * T * (2048 + (4096 + 1024 + 4096 + 14336) / 2 + 4096 + 2 * 2048));
  CHECK(two.tensors == 721420288);
  CHECK(two.statistics == 4 * 16 * T);
  // Between no recompute and full, as torchtitan's table says of it.
  const auto none = layer_activation_bytes(*m, 2, 8192, 1, false, Recompute::none, Attention::fused, Dtype::bf16);
  const auto full = layer_activation_bytes(*m, 2, 8192, 1, false, Recompute::full, Attention::fused, Dtype::bf16);
  CHECK(full.total() < one.total());
  CHECK(one.total() < none.total());
}

TEST_CASE("recompute op: what the backward reruns, and what it holds while it does", "[stage_work]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 8192);
  ParallelConfig p;
  p.dp = 8, p.zero = 3, p.micro_batch = 2, p.recompute = Recompute::op;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const int64_t T = 2 * 8192, L = 32;
  int rerun_gemms = 0;
  for (const Op& o : w.ops) {
    if (o.pass != Pass::recompute) continue;
    INFO(o.name);
    const bool twice = std::strcmp(o.name, "norms") == 0 || std::strcmp(o.name, "residual adds") == 0;
    CHECK(o.count == (twice ? 2 * L : L));  // the whole block reruns (early_stop off)
    CHECK(o.kind != OpKind::attention_fwd);  // the attention output is kept
    if (o.kind != OpKind::gemm) continue;
    ++rerun_gemms;
    if (std::strcmp(o.name, "k projection") == 0) CHECK(o.flops == 2 * FlopCount(T) * 1024 * 4096);
    else if (std::strcmp(o.name, "attention projection") == 0) CHECK(o.flops == 2 * FlopCount(T) * 4096 * 4096);
    else if (std::strcmp(o.name, "mlp up") == 0) CHECK(o.flops == 2 * FlopCount(T) * 14336 * 4096);
    else FAIL("unexpected rerun GEMM");
  }
  CHECK(rerun_gemms == 3);
  // The rerun holds both norms' outputs and the first residual sum (h each), q and k after RoPE
  // (q + kv), SiLU's output, w3's and their product (f each) and the two norms' fp32 statistics
  // for its layer's backward.
  const Buffer* rebuilt = buffer(w, "recomputed layer");
  REQUIRE(rebuilt != nullptr);
  CHECK(rebuilt->bytes == 2 * T * (3 * 4096 + 4096 + 1024 + 3 * 14336) + 2 * 4 * T);
  CHECK(rebuilt->bytes == 1979842560);
  // Hardware FLOPs: the three projections' forward again, per layer and token.
  const FlopCount extra = hardware_flops(j.model, 16, 8192, Recompute::op, AttentionFlops::full) -
                          hardware_flops(j.model, 16, 8192, Recompute::none, AttentionFlops::full);
  CHECK(extra == 32 * 2 * FlopCount(16) * 8192 * 4096 * (1024 + 4096 + 14336));
  CHECK(w.flops_per_micro_batch() ==
        build_stage_work(j.model, j.cluster, j.train, [&] { auto q = p; q.recompute = Recompute::none; return q; }(), 0)
                .flops_per_micro_batch() +
            L * 2 * FlopCount(T) * 4096 * (1024 + 4096 + 14336));
}

TEST_CASE("recompute op with tp 2: the norms' all-gathers run again, the reduce-scatters do not", "[stage_work]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 8192);
  ParallelConfig p;
  p.dp = 4, p.tp = 2, p.sp = true, p.zero = 1, p.micro_batch = 1, p.recompute = Recompute::op;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  int64_t halves = -1;
  for (const Message& msg : w.messages)
    if (msg.group == Group::tp && msg.pass == Pass::recompute) halves = msg.count;
  CHECK(halves == 2 * 32);  // before wk and before w3, each layer
  // The gathered norm outputs the rerun made are kept for the weight gradients: the backward
  // gathers nothing again (Megatron's SP would, 2 per layer): 4 per layer, and the model's ends.
  int64_t backward = -1;
  for (const Message& msg : w.messages)
    if (msg.group == Group::tp && msg.pass == Pass::backward && std::strcmp(msg.name, "tp activations") == 0)
      backward = msg.count;
  CHECK(backward == 4 * 32 + 2);
  // With tp 2 the rerun holds the gathered norm outputs whole (all b s tokens) and the residual
  // sum, q, k and SwiGLU's tensors as this rank's share.
  const int64_t T = 8192;
  const Buffer* rebuilt = buffer(w, "recomputed layer");
  REQUIRE(rebuilt != nullptr);
  CHECK(rebuilt->bytes == 2 * T * (2 * 4096 + 4096 / 2 + (4096 + 1024) / 2 + 3 * 14336 / 2) + 2 * 4 * T / 2);
  // Under async TP each sits beside its GEMM, as the forward's do.
  p.tp_comm_overlap = true;
  const StageWork ov = build_stage_work(j.model, j.cluster, j.train, p, 0);
  for (const Message& msg : ov.messages)
    if (msg.group == Group::tp && msg.pass == Pass::recompute) CHECK(std::strcmp(msg.name, kTpOverlappedMessage) == 0);
  const CostModel cm(j.model, j.cluster, j.train);
  check_simulated_step(cm, p, 0.01);
}

TEST_CASE("recompute op: the rules, one line each", "[validate]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 8192);
  ParallelConfig p;
  p.dp = 4, p.tp = 2, p.recompute = Recompute::op;
  CHECK(validate_config(j.model, j.cluster, j.train, p, plain).error().message ==
        "recompute: op with tp > 1 needs sp: torchtitan's tensor parallelism keeps its norms sequence-parallel (got sp "
        "off)");
  p.dp = 8, p.tp = 1;
  TrainSpec fp8 = j.train;
  fp8.fp8 = true;
  CHECK(validate_config(j.model, j.cluster, fp8, p, plain).error().message ==
        "recompute: op is priced for bf16 GEMMs: torchao's Float8 GEMMs run as aten._scaled_mm, which torchtitan's "
        "save list leaves out (got dtype fp8)");
  TrainSpec unfused = j.train;
  unfused.attention = Attention::unfused;
  CHECK(validate_config(j.model, j.cluster, unfused, p, plain).error().message ==
        "recompute: op keeps the output of torchtitan's fused SDPA attention: needs attention fused");
  const Job gpt = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  CHECK(validate_config(gpt.model, gpt.cluster, gpt.train, p, plain).error().message.rfind(
            "recompute: op (torchtitan's per-op checkpointing) is priced for dense Llama layers", 0) == 0);
  // Neither executor runs it: one line, before either module loads.
  Plan plan;
  plan.model = j.model, plan.cluster = j.cluster, plan.train = j.train, plan.parallel = p;
  CHECK(exec::check_trainer_plan(plan, "the CPU executor").error().message ==
        "parallel.recompute: the CPU executor runs recompute none, selective or full (got op: torchtitan's per-op "
        "checkpointing is priced, not run)");
}

TEST_CASE("recompute op: plan tries it only where pinned; predict names it", "[cli]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 8192);
  auto unpinned = make_search_space(j.model, j.cluster, j.train, SearchPins{});
  REQUIRE(unpinned.ok());
  for (Recompute r : unpinned->recompute) CHECK(r != Recompute::op);
  SearchPins pins;
  pins.recompute = Recompute::op;
  auto pinned = make_search_space(j.model, j.cluster, j.train, pins);
  REQUIRE(pinned.ok());
  CHECK(pinned->recompute == std::vector<Recompute>{Recompute::op});
  const std::string jb = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 16 --seq 8192 ";
  const LoomRun planned = run_loom("plan " + jb + "--recompute op --top 1 --refine 0 --json");
  REQUIRE(planned.code == 0);
  CHECK(nlohmann::json::parse(planned.out)["top"][0]["recompute"] == "op");
  const LoomRun predicted = run_loom("predict " + jb + "--tp 1 --pp 1 --zero 3 --recompute op");
  REQUIRE(predicted.code == 0);
  CHECK(predicted.out.find("recompute op (torchtitan's per-op checkpointing)  sp off") != std::string::npos);
  const LoomRun planned_fp8 = run_loom("plan " + jb + "--recompute op --dtype fp8");
  CHECK(planned_fp8.code == 2);
  CHECK(planned_fp8.err == "loom: --recompute: op is priced for bf16 GEMMs: torchao's Float8 GEMMs run as "
                           "aten._scaled_mm, which torchtitan's save list leaves out (got dtype fp8)\n");
  const LoomRun gpt = run_loom("predict --model gpt2-350m --cluster dgx-h100 --gpus 8 --global-batch 16 --tp 1 --pp 1 "
                               "--recompute op");
  CHECK(gpt.code == 2);
  CHECK(gpt.err.rfind("loom: --recompute: op (torchtitan's per-op checkpointing) is priced for dense Llama layers", 0) ==
        0);
}

TEST_CASE("recompute op: torchtitan's selective_ac_option \"op\" both ways; Megatron-LM and DeepSpeed get full",
          "[export][import]") {
  const std::string jb = "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 64 --seq 2048 ";
  const RoundTrip tt = export_round_trip("torchtitan", jb + "--tp 2 --pp 1 --sp --zero 3 --recompute op",
                                         "--cluster dgx-h100 --gpus 8", "rc_op_tt",
                                         "mode = \"selective\"\nselective_ac_option = \"op\"");
  CHECK(plan_configuration(tt.imported)["parallel"]["recompute"] == "op");
  const std::string plan = tt.plan;
  const LoomRun mg = run_loom("export " + plan + " --to megatron");
  REQUIRE(mg.code == 0);
  CHECK(mg.out.find("--recompute-granularity full \\\n  --recompute-method uniform \\\n  --recompute-num-layers 1") !=
        std::string::npos);
  CHECK(mg.err.find("recompute op: Megatron-LM has no per-op checkpointing (torchtitan's); emitted as full recompute, "
                    "which holds less memory and costs more time than the plan priced") != std::string::npos);
  const LoomRun ds = run_loom("export " + plan + " --to deepspeed");
  REQUIRE(ds.code == 0);
  CHECK(ds.err.find("recompute op: DeepSpeed has no per-op checkpointing") != std::string::npos);
  // Where loom does not price it (Float8 GEMMs), "op" is read as loom's selective recompute, and said so.
  const RoundTrip f8 = export_round_trip("torchtitan", jb + "--tp 1 --pp 1 --zero 3 --recompute selective --dtype fp8 "
                                                            "--fp8-recipe tensorwise",
                                         "--cluster dgx-h100 --gpus 8", "rc_op_tt_fp8", "selective_ac_option = \"op\"");
  CHECK(plan_configuration(f8.imported)["parallel"]["recompute"] == "selective");
  const LoomRun again = run_loom("import torchtitan " + f8.exported + " --cluster dgx-h100 --gpus 8");
  CHECK(again.err.find("selective_ac_option \"op\": priced as loom's selective recompute (the attention core), not "
                       "torchtitan's per-op save list (recompute: op is priced for bf16 GEMMs") != std::string::npos);
}

TEST_CASE("recompute op on Qwen3: the k norm's input and the q/k norms' statistics are held by the rerun too",
          "[stage_work]") {
  const Job j = job(std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/qwen3_8b_config.json", "dgx-h100", 8, 16, 4096);
  REQUIRE(j.model.qk_norm);
  ParallelConfig p;
  p.dp = 8, p.zero = 3, p.micro_batch = 1, p.recompute = Recompute::op;
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, plain).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const int64_t T = 4096, e = 2, h = j.model.hidden, q = j.model.q_dim(), kv = j.model.kv_dim(), f = j.model.ffn_hidden;
  const Buffer* rebuilt = buffer(w, "recomputed layer");
  REQUIRE(rebuilt != nullptr);
  CHECK(rebuilt->bytes == e * T * (3 * h + q + kv + 3 * f) + 2 * 4 * T + e * T * kv +
                              4 * T * (j.model.heads + j.model.kv_heads));
}
