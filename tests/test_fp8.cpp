// FP8 training (sim/fp8.hpp): the input names, the FP8 GEMMs and their casts in the one
// description of a step, their time, the planner, the engines' names, and the executors'
// refusals. Exact values are worked out by hand in the comments.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "executor/cuda/plan_limits.hpp"
#include "planner/export.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/fp8.hpp"
#include "sim/moe.hpp"
#include "sim/op_timer.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

// A small Llama: 2 layers, hidden 64, 4 heads of 16, 2 KV heads (kv 32), SwiGLU 128, vocab 256.
ModelSpec tiny_llama() {
  ModelSpec m;
  m.name = "tiny";
  m.family = Family::llama;
  m.layers = 2;
  m.hidden = 64;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn_hidden = 128;
  m.vocab = 256;
  m.seq_len = 32;
  m.tied_embeddings = false;
  return m;
}

ClusterSpec cluster(const std::string& name, int64_t gpus) {
  auto c = load_cluster(name, "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

TrainSpec train(int64_t batch, int64_t seq, bool fp8) {
  TrainSpec t;
  t.global_batch = batch;
  t.seq = seq;
  t.dp_bucket_bytes = 80'000'000;
  t.fp8 = fp8;
  return t;
}

double op_bytes(const StageWork& w, const char* name) {
  double b = 0;
  for (const Op& o : w.ops)
    if (std::strcmp(o.name, name) == 0) b += o.bytes * static_cast<double>(o.count);
  return b;
}

int64_t buffer_bytes(const StageWork& w, const char* name) {
  int64_t b = 0;
  for (const Buffer& x : w.buffers)
    if (std::strcmp(x.name, name) == 0) b += x.bytes;
  return b;
}

}  // namespace

TEST_CASE("fp8: \"dtype\": \"fp8\" reads as bf16 with FP8 GEMMs and is written back as fp8", "[fp8]") {
  const nlohmann::json j = {{"global_batch", 8},       {"seq", 128},          {"dtype", "fp8"},
                            {"grad_dtype", "fp32"},    {"attention", "fused"}, {"dp_bucket_bytes", 1000}};
  auto t = train_from_json(j, "plan.json", "/train");
  REQUIRE(t.ok());
  CHECK(t->dtype == Dtype::bf16);
  CHECK(t->fp8);
  CHECK(to_json(*t)["dtype"] == "fp8");
  nlohmann::json bad = j;
  bad["dtype"] = "fp4";
  auto b = train_from_json(bad, "plan.json", "/train");
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().message.find("/train/dtype") != std::string::npos);
  // The cluster's FP8 peak: read, written back, and absent on the A100 (no FP8 tensor cores).
  const ClusterSpec h100 = cluster("dgx-h100", 8), a100 = cluster("dgx-a100", 8);
  CHECK(h100.gpu.peak_flops_fp8 == 1978.9e12);
  CHECK(to_json(h100)["gpu"]["peak_flops_fp8"] == 1978.9e12);
  CHECK(a100.gpu.peak_flops_fp8 == 0);
  CHECK_FALSE(to_json(a100)["gpu"].contains("peak_flops_fp8"));
}

TEST_CASE("fp8: a plan on a GPU without FP8 is refused naming the field and the rule", "[fp8]") {
  ParallelConfig p;
  p.dp = 8;
  auto m = load_model("gpt2-124m", "test", nullptr);
  REQUIRE(m.ok());
  auto st = validate_config(*m, cluster("dgx-a100", 8), train(8, 1024, true), p, [](const std::string& f) { return f; });
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message ==
        "dtype: fp8 needs a GPU with FP8 tensor cores: the cluster's gpu.peak_flops_fp8 is not set (got NVIDIA "
        "A100-SXM4-80GB)");
  CHECK(validate_config(*m, cluster("dgx-h100", 8), train(8, 1024, true), p, [](const std::string& f) { return f; }).ok());
}

TEST_CASE("fp8: the linear GEMMs are FP8, with their casts, weight copies and FP8 saved inputs", "[fp8]") {
  // tp 2, one replica, micro-batch 1 of 32 tokens, 2 micro-batches a step. Per layer and rank
  // the FP8 GEMMs (M, N, K) are qkv (32, 64, 64), projection (32, 64, 32), gate|up (32, 128, 64)
  // and down (32, 64, 64); their weights N K: 4096 + 2048 + 8192 + 4096 = 18432.
  const ModelSpec m = tiny_llama();
  const ClusterSpec c = cluster("dgx-h100", 2);
  ParallelConfig p;
  p.tp = 2;
  const StageWork bf16 = build_stage_work(m, c, train(2, 32, false), p, 0);
  const StageWork fp8 = build_stage_work(m, c, train(2, 32, true), p, 0);
  int64_t fp8_ops = 0;
  for (const Op& o : fp8.ops) {
    fp8_ops += o.fp8;
    if (std::strcmp(o.name, "logits") == 0) CHECK_FALSE(o.fp8);  // the output layer stays bf16
  }
  CHECK(fp8_ops == 8);  // four GEMMs, forward and backward
  CHECK(fp8.flops_per_micro_batch() == bf16.flops_per_micro_batch());  // the same matrix work
  // Input casts 4 M K per call: (8192 + 4096 + 8192 + 8192) x 2 layers.
  CHECK(op_bytes(fp8, "fp8 input cast") == 57344);
  // Output-gradient casts 4 M N: (8192 + 8192 + 16384 + 8192) x 2 layers.
  CHECK(op_bytes(fp8, "fp8 gradient cast") == 81920);
  // Weight casts once per step: 4 bytes x 36864 weights over 8 calls of 18432 bytes.
  CHECK(op_bytes(fp8, "fp8 weight cast") == 147456);
  // Amax histories: 8 FP8 GEMM calls x 3 tensors x 1024 fp32 values, read and written.
  CHECK(op_bytes(fp8, "fp8 amax and scale update") == 196608);
  CHECK(fp8_weight_params(m, 2, 2, MoeStage{}) == 36864);
  CHECK(buffer_bytes(fp8, "fp8 weight copies") == 73728);  // FP8 copy + transpose
  CHECK(fp8.memory().weights - bf16.memory().weights == 73728);
  // Saved inputs (one layer, one rank): qkv and gate|up inputs -2 x 32 x 64, the projection's
  // FP8 copy beside the bf16 attention output +32 x 64 / 2, down's input -32 x 128 / 2 = -5120;
  // one chunk of 2 layers in flight.
  CHECK(fp8_layer_activation_delta_bytes(m, 1, 32, 2, false, Recompute::none, Attention::fused, true) == -5120);
  CHECK(buffer_bytes(fp8, "layer activations") - buffer_bytes(bf16, "layer activations") == -10240);
}

TEST_CASE("fp8: tensorwise (current) scaling reads each cast tensor once more for its amax, no history", "[fp8]") {
  // The layers of the case above: the amax passes read the bf16 tensors (2 bytes per element),
  // half a cast's 4 bytes per element; the weights' once per step; no amax history to roll.
  const ModelSpec m = tiny_llama();
  const ClusterSpec c = cluster("dgx-h100", 2);
  ParallelConfig p;
  p.tp = 2;
  TrainSpec cs = train(2, 32, true);
  cs.fp8_recipe = Fp8Recipe::tensorwise;
  const StageWork delayed = build_stage_work(m, c, train(2, 32, true), p, 0), current = build_stage_work(m, c, cs, p, 0);
  CHECK(op_bytes(current, "fp8 input amax") == 57344 / 2);
  CHECK(op_bytes(current, "fp8 gradient amax") == 81920 / 2);
  CHECK(op_bytes(current, "fp8 weight amax") == 147456 / 2);
  CHECK(op_bytes(current, "fp8 input cast") == 57344);
  CHECK(op_bytes(current, "fp8 amax and scale update") == 0);
  CHECK(op_bytes(delayed, "fp8 input amax") == 0);
  CHECK(current.memory().weights == delayed.memory().weights);
  // Plans write the recipe when it is not the default, and refuse it without fp8.
  CHECK(to_json(cs)["fp8_recipe"] == "tensorwise");
  CHECK_FALSE(to_json(train(2, 32, true)).contains("fp8_recipe"));
  auto back = train_from_json(to_json(cs), "plan.json", "/train");
  REQUIRE(back.ok());
  CHECK(back->fp8_recipe == Fp8Recipe::tensorwise);
  nlohmann::json bf16 = to_json(train(2, 32, false));
  bf16["fp8_recipe"] = "tensorwise";
  auto refused = train_from_json(bf16, "plan.json", "/train");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message == "plan.json: /train/fp8_recipe: only with dtype \"fp8\" (got dtype \"bf16\")");
  nlohmann::json odd = to_json(cs);
  odd["fp8_recipe"] = "mxfp8";
  CHECK_FALSE(train_from_json(odd, "plan.json", "/train").ok());
}

TEST_CASE("fp8: --fp8-param-gather stores the FP8 GEMMs' weights in FP8 and gathers them so", "[fp8]") {
  // The layers of the cases above (36864 FP8 weights on the stage), dp 2 with ZeRO-1: the
  // weights lose a byte each of the FP8 ones, the copies keep the transpose alone (1 byte), and
  // the distributed optimizer's all-gather moves one byte less per FP8 weight.
  const ModelSpec m = tiny_llama();
  const ClusterSpec c = cluster("dgx-h100", 4);
  ParallelConfig p;
  p.tp = 2, p.dp = 2, p.zero = 1;
  TrainSpec on = train(4, 32, true);
  on.fp8_param_gather = true;
  const StageWork plain = build_stage_work(m, c, train(4, 32, true), p, 0), fp8w = build_stage_work(m, c, on, p, 0);
  CHECK(buffer_bytes(plain, "fp8 weight copies") == 73728);
  CHECK(buffer_bytes(fp8w, "fp8 weight copies") == 36864);
  CHECK(buffer_bytes(plain, "weights") - buffer_bytes(fp8w, "weights") == 36864);
  auto gather = [](const StageWork& w) {
    for (const Message& x : w.messages)
      if (std::strcmp(x.name, "dp gather params") == 0) return x.bytes;
    return int64_t{-1};
  };
  CHECK(gather(plain) - gather(fp8w) == 36864);
  CHECK(op_bytes(fp8w, "fp8 weight cast") == op_bytes(plain, "fp8 weight cast") / 2);  // the transpose alone
  // Written and read back; refused without fp8, on the command line too.
  CHECK(to_json(on)["fp8_param_gather"] == true);
  auto back = train_from_json(to_json(on), "plan.json", "/train");
  REQUIRE(back.ok());
  CHECK(back->fp8_param_gather);
  nlohmann::json bf16 = to_json(train(4, 32, false));
  bf16["fp8_param_gather"] = true;
  auto refused = train_from_json(bf16, "plan.json", "/train");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message == "plan.json: /train/fp8_param_gather: only with dtype \"fp8\" (got dtype \"bf16\")");
  LoomRun r = run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 8 --tp 8 --pp 1 "
                       "--fp8-param-gather on");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --fp8-param-gather: only with --dtype fp8 (got --dtype bf16)\n");
  // Megatron-LM's flag, written and read back.
  const std::string plan = temp_file("fp8pg_plan.json", ""), mg = temp_file("fp8pg.sh", ""),
                    back_plan = temp_file("fp8pg_back.json", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 4096 --tp 4 --pp 1 "
                   "--zero 1 --sp on --grad-dtype fp32 --dtype fp8 --fp8-param-gather on -o " + plan).code == 0);
  REQUIRE(run_loom("export " + plan + " --to megatron -o " + mg).code == 0);
  CHECK(slurp(mg).find("--fp8-param-gather") != std::string::npos);
  REQUIRE(run_loom("import megatron " + mg + " --cluster dgx-h100 --gpus 16 -o " + back_plan).code == 0);
  CHECK(nlohmann::json::parse(slurp(back_plan))["train"]["fp8_param_gather"] == true);
}

TEST_CASE("fp8: the weight copy counts exactly the FP8 GEMMs' weights", "[fp8]") {
  // fp8_weight_params (from the parameter counts) against the GEMM shapes (N K per call) of the
  // forward pass, on models with biases (GPT), GQA (Llama 3) and q/k/v biases (Qwen2).
  struct Case {
    const char* model;
    int64_t tp;
  };
  for (const Case& k : {Case{"gpt2-124m", 2}, Case{"llama3-8b", 8}, Case{"tinyllama-1.1b", 4}}) {
    auto m = load_model(k.model, "test", nullptr);
    REQUIRE(m.ok());
    ParallelConfig p;
    p.tp = k.tp;
    const StageWork w = build_stage_work(*m, cluster("dgx-h100", k.tp), train(1, 1024, true), p, 0);
    int64_t shapes = 0;
    for (const Op& o : w.ops)
      if (o.fp8 && o.kind == OpKind::gemm && o.pass == Pass::forward)
        shapes += static_cast<int64_t>(o.n * o.k) * o.count;
    INFO(k.model);
    CHECK(fp8_weight_params(*m, k.tp, m->layers, MoeStage{}) == shapes);
  }
  std::vector<std::string> ignored;
  auto qwen = load_model(std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/qwen2.5_0.5b_config.json", "test", &ignored);
  REQUIRE(qwen.ok());
  REQUIRE(qwen->qkv_bias);
  ParallelConfig p;
  p.tp = 2;
  const StageWork w = build_stage_work(*qwen, cluster("dgx-h100", 2), train(1, 1024, true), p, 0);
  int64_t shapes = 0;
  for (const Op& o : w.ops)
    if (o.fp8 && o.kind == OpKind::gemm && o.pass == Pass::forward) shapes += static_cast<int64_t>(o.n * o.k) * o.count;
  CHECK(fp8_weight_params(*qwen, 2, qwen->layers, MoeStage{}) == shapes);
}

TEST_CASE("fp8: GEMMs at the FP8 peak with bf16's efficiency times the cluster's FP8 ratio; the casts make a step "
          "less than 2x faster", "[fp8]") {
  const ClusterSpec c = cluster("dgx-h100", 8);
  const OpTimer t = OpTimer::of(c, train(8, 2048, true));
  // The Hopper clusters state the published H100 FP8 / bf16 best-shape ratio (0.7087 / 0.8033).
  const double r = c.efficiency.fp8_gemm_efficiency_ratio;
  CHECK(r == 0.8822);
  // With the cluster's GEMM model and no FP8 GEMM measured: the bf16 model at the FP8 peak with
  // 1-byte operands and its main loop at r of the bf16 one's efficiency.
  REQUIRE(c.gemm_model != nullptr);
  REQUIRE(c.gemm_model_fp8 != nullptr);
  CHECK(c.gemm_model_fp8_from_bf16);
  CHECK_FALSE(c.gemm_model_fp8_measured);
  CHECK(c.gemm_model_fp8->c.mainloop_efficiency == c.gemm_model->c.mainloop_efficiency * r);
  CHECK(c.gemm_model_fp8->c.tile_overhead_s == c.gemm_model->c.tile_overhead_s);
  CHECK(c.gemm_model_fp8->hw.peak_flops == 1978.9e12);
  CHECK(fp8_gemm_s(t, 8192, 8192, 8192) ==
        Approx(c.gemm_model_fp8->seconds_at(8192, 8192, 8192, 2, 1, 1978.9e12)).epsilon(1e-12));
  // A cluster stating no ratio: the bf16 model itself at the FP8 peak, slower by no factor.
  ClusterSpec unstated = c;
  unstated.gemm_model_fp8 = nullptr;
  unstated.efficiency.fp8_gemm_efficiency_ratio = 0;
  const OpTimer tu = OpTimer::of(unstated, train(8, 2048, true));
  CHECK(fp8_gemm_s(tu, 8192, 8192, 8192) ==
        Approx(c.gemm_model->seconds_at(8192, 8192, 8192, 2, 1, 1978.9e12)).epsilon(1e-12));
  CHECK(fp8_gemm_s(tu, 8192, 8192, 8192) < fp8_gemm_s(t, 8192, 8192, 8192));
  // Without a model, a large GEMM (8192 x 8192 x 8192) is compute-bound at r eff(F), where
  // eff(F) = gemm F / (F + F_half).
  ClusterSpec plain = c;
  plain.gemm_model = nullptr;
  plain.gemm_model_fp8 = nullptr;
  const double F = 2.0 * 8192 * 8192 * 8192, eff = c.efficiency.gemm * F / (F + c.efficiency.gemm_half_size_flops);
  CHECK(fp8_gemm_s(OpTimer::of(plain, train(8, 2048, true)), 8192, 8192, 8192) ==
        Approx(F / (1978.9e12 * eff * r) + c.efficiency.kernel_launch_s).epsilon(1e-12));
  Op o = gemm("qkv", Pass::forward, 8192, 8192, 8192, 1);
  const double bf16_s = t.op(o);
  o.fp8 = true;
  CHECK(t.op(o) < bf16_s);
  // The profile's bf16 time (less its launch) at the FP8 rate (989.4e12 / 1978.9e12 of it) and
  // r of its efficiency.
  const ClusterSpec h = cluster("h100-sxm", 1);
  REQUIRE(h.calibration != nullptr);
  const OpTimer tp = OpTimer::of(h, train(8, 2048, true));
  const double measured = h.calibration->gemm_s(8192, 8192, 8192);
  // (8192^3 is not a measured shape: the profile's model priced it, with the model's launch.)
  const double launch = tp.gemm_launch_s(8192, 8192, 8192);
  CHECK(launch == h.calibration->gemm_model.c.launch_s);
  CHECK(fp8_gemm_s(tp, 8192, 8192, 8192) ==
        Approx((measured - launch) * 989.4e12 / (1978.9e12 * r) + tp.launch_s).epsilon(1e-12));
  // Llama 3 8B on a DGX H100 node, tp 8: faster in FP8, but not twice (attention, norms and
  // casts stay memory- or bf16-bound).
  auto m = load_model("llama3-8b", "test", nullptr);
  REQUIRE(m.ok());
  ParallelConfig p;
  p.tp = 8;
  p.sp = true;
  const double b = CostModel(*m, c, train(8, 8192, false)).evaluate(p).step_time_s;
  const double f = CostModel(*m, c, train(8, 8192, true)).evaluate(p).step_time_s;
  CHECK(f < b);
  CHECK(f > b / 2);
}

TEST_CASE("fp8: efficiency.fp8_gemm_efficiency_ratio is read strictly and written back", "[fp8][cli]") {
  auto base = nlohmann::json::parse(slurp(std::string(LOOM_SOURCE_DIR) + "/models/clusters/dgx-h100.json"));
  auto with = [&](const nlohmann::json& v) {
    auto j = base;
    j["efficiency"]["fp8_gemm_efficiency_ratio"] = v;
    return cluster_from_json(j, "c.json");
  };
  for (const nlohmann::json& bad : {nlohmann::json(0.0), nlohmann::json(-0.5), nlohmann::json(2.5), nlohmann::json("x")}) {
    auto c = with(bad);
    REQUIRE_FALSE(c);
    CHECK(c.error().message.rfind("c.json: /efficiency/fp8_gemm_efficiency_ratio: ", 0) == 0);
  }
  auto c = with(0.9);
  REQUIRE(c);
  CHECK(c->efficiency.fp8_gemm_efficiency_ratio == 0.9);
  CHECK(to_json(*c)["efficiency"]["fp8_gemm_efficiency_ratio"] == 0.9);
  auto none = base;
  none["efficiency"].erase("fp8_gemm_efficiency_ratio");
  auto n = cluster_from_json(none, "c.json");
  REQUIRE(n);
  CHECK(n->efficiency.fp8_gemm_efficiency_ratio == 0);
  CHECK(n->gemm_model_fp8 == nullptr);
  CHECK_FALSE(to_json(*n)["efficiency"].contains("fp8_gemm_efficiency_ratio"));
  TrainSpec t = train(8, 2048, true);
  CHECK(priced_by(*n, t).find("FP8 GEMMs by the same model at the FP8 peak with 1-byte operands (not measured)") !=
        std::string::npos);
  CHECK(priced_by(*c, t).find("FP8 GEMMs by the same model at the FP8 peak with 1-byte operands and its main loop at "
                              "0.9 x the bf16 efficiency of each shape") != std::string::npos);
}

TEST_CASE("fp8: the executors refuse FP8 plans in one line", "[fp8]") {
  Plan plan;
  plan.model = tiny_llama();
  plan.cluster = cluster("dgx-h100", 1);
  plan.train = train(2, 64, true);
  auto st = cuda::check_cuda_plan(plan);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("train.dtype: the CUDA backend runs bf16 GEMMs, not FP8") == 0);
  // The CPU executor (executor/trainer.cpp check_cpu_plan), before MPI starts.
  const std::string path = temp_file("fp8_cpu_plan.json", "");
  LoomRun pr = run_loom("predict --model gpt2-124m --cluster h100-sxm --gpus 1 --global-batch 2 --seq 128 --tp 1 --pp 1 "
                        "--dtype fp8 -o " + path);
  REQUIRE(pr.code == 0);
  LoomRun ex = run_loom("execute " + path + " --device cpu --steps 1");
  CHECK(ex.code == 2);
  CHECK(ex.err == "loom: train.dtype: the CPU executor runs fp32 GEMMs, not FP8: must be fp32 (got fp8)\n");
}

TEST_CASE("fp8: loom predict --dtype fp8, refused on an A100, printed back as fp8", "[fp8][cli]") {
  const std::string job = "--model llama3-8b --gpus 8 --global-batch 16 --seq 4096 --tp 8 --pp 1 --sp on";
  LoomRun a = run_loom("predict " + job + " --cluster dgx-a100 --dtype fp8");
  CHECK(a.code == 2);
  CHECK(a.err ==
        "loom: --dtype: fp8 needs a GPU with FP8 tensor cores: the cluster's gpu.peak_flops_fp8 is not set (got NVIDIA "
        "A100-SXM4-80GB)\n");
  LoomRun bad = run_loom("predict " + job + " --cluster dgx-h100 --dtype fp4");
  CHECK(bad.code == 2);
  LoomRun h = run_loom("predict " + job + " --cluster dgx-h100 --dtype fp8 --json");
  REQUIRE(h.code == 0);
  const auto j = nlohmann::json::parse(h.out);
  CHECK(j["dtype"] == "fp8");
  LoomRun text = run_loom("predict " + job + " --cluster dgx-h100 --dtype fp8");
  REQUIRE(text.code == 0);
  CHECK(text.out.find("tokens, fp8\n") != std::string::npos);
  CHECK(text.out.find("FP8 GEMMs by the same model at the FP8 peak with 1-byte operands") != std::string::npos);
}

TEST_CASE("fp8: loom plan --dtype fp8 searches FP8 plans; analytical and simulated agree within 3%", "[fp8][cli]") {
  const LoomRun run = run_loom("plan --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 64 --seq 4096 "
                               "--dtype fp8 --top 5 --refine 5 --json");
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto doc = nlohmann::json::parse(run.out);
  REQUIRE(!doc["top"].empty());
  for (const auto& row : doc["top"]) {
    CHECK(row["dtype"] == "fp8");
    const double an = row["step_time_s"].get<double>(), sim = row["simulated_step_time_s"].get<double>();
    INFO("dp " << row["dp"] << " tp " << row["tp"] << " pp " << row["pp"] << " analytical " << an << " simulated " << sim);
    CHECK(std::fabs(sim / an - 1) <= 0.03);
  }
}

TEST_CASE("fp8: export writes Megatron's and torchtitan's FP8 options and import reads them back", "[fp8][import]") {
  const std::string plan = temp_file("fp8_plan.json", ""), mg = temp_file("fp8_megatron.sh", ""),
                    tt = temp_file("fp8_torchtitan.toml", ""), ds = temp_file("fp8_ds.json", "");
  // One micro-batch per step (4 over dp 4): the engines' ways of adding micro-batches' gradients
  // (GradAccumulation) do not differ there.
  LoomRun pr = run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 4 --seq 4096 --tp 4 "
                        "--pp 1 --zero 3 --sp on --recompute full --grad-dtype fp32 --dtype fp8 -o " + plan);
  REQUIRE(pr.code == 0);
  LoomRun e = run_loom("export " + plan + " --to megatron -o " + mg);
  REQUIRE(e.code == 0);
  const std::string script = slurp(mg);
  CHECK(script.find("--fp8-format hybrid") != std::string::npos);
  CHECK(script.find("--fp8-amax-history-len 1024") != std::string::npos);
  CHECK(script.find("--fp8-amax-compute-algo max") != std::string::npos);
  LoomRun t = run_loom("export " + plan + " --to torchtitan -o " + tt);
  REQUIRE(t.code == 0);
  const std::string toml = slurp(tt);
  CHECK(toml.find("converters = [\"quantize.linear.float8\"]") != std::string::npos);
  CHECK(toml.find("[quantize.linear.float8]\nrecipe_name = \"tensorwise\"\nfilter_fqns = [\"output\"]") !=
        std::string::npos);
  LoomRun d = run_loom("export " + plan + " --to deepspeed -o " + ds);
  REQUIRE(d.code == 0);
  CHECK(d.err.find("fp8: not expressible in the DeepSpeed config") != std::string::npos);
  CHECK(t.err.find("priced with Transformer Engine's delayed scaling") != std::string::npos);
  // torchtitan's tensor-parallel backward runs its collectives in-line and its Float8 scales each
  // tensor from its own amax: its import is that plan with --tp-backward-overlap off and
  // --fp8-recipe tensorwise.
  const std::string in_line = temp_file("fp8_plan_in_line.json", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 4 --seq 4096 --tp 4 --pp 1 "
                   "--zero 3 --sp on --recompute full --grad-dtype fp32 --dtype fp8 --fp8-recipe tensorwise "
                   "--tp-backward-overlap off -o " + in_line)
              .code == 0);
  // Megatron-LM's --fp8-recipe tensorwise, written and read back.
  const std::string cs = temp_file("fp8_plan_cs.json", ""), mg_cs = temp_file("fp8_megatron_cs.sh", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 4 --seq 4096 --tp 4 --pp 1 "
                   "--zero 3 --sp on --recompute full --grad-dtype fp32 --dtype fp8 --fp8-recipe tensorwise -o " + cs)
              .code == 0);
  REQUIRE(run_loom("export " + cs + " --to megatron -o " + mg_cs).code == 0);
  const std::string script_cs = slurp(mg_cs);
  CHECK(script_cs.find("--fp8-recipe tensorwise") != std::string::npos);
  CHECK(script_cs.find("--fp8-amax-history-len") == std::string::npos);
  for (const auto& [engine, file, same] :
       {std::tuple{"megatron", mg, plan}, {"torchtitan", tt, in_line}, {"megatron", mg_cs, cs}}) {
    const std::string back = temp_file(std::string("fp8_back_") + engine + ".json", "");
    LoomRun i = run_loom(std::string("import ") + engine + " " + file + " --cluster dgx-h100 --gpus 16 -o " + back);
    INFO(engine << ": " << i.err);
    REQUIRE(i.code == 0);
    const auto j = nlohmann::json::parse(slurp(back));
    CHECK(j["train"]["dtype"] == "fp8");
    CHECK(j["train"].value("fp8_recipe", "delayed") == nlohmann::json::parse(slurp(same))["train"].value("fp8_recipe", "delayed"));
    CHECK(j["prediction"]["step_time_s"] == nlohmann::json::parse(slurp(same))["prediction"]["step_time_s"]);
  }
}

TEST_CASE("fp8: with sequence parallelism the layers' tp all-gathers move FP8, as Transformer Engine runs them", "[fp8]") {
  // TE (v2.1, module/layernorm_linear.py, base.py grad_output_preprocess) quantizes before the
  // SP all-gathers; the reduce-scatters move the GEMMs' bf16 outputs (sim/fp8.hpp).
  const ClusterSpec c = cluster("dgx-h100", 8);
  auto m = load_model("llama3-8b", "test", nullptr);
  REQUIRE(m.ok());
  ParallelConfig p;
  p.tp = 8;
  p.sp = true;
  // Collectives in-line (tp_backward_overlap off): the time they take, not what GEMMs hide of it.
  TrainSpec f8 = train(1, 8192, true), bf = train(1, 8192, false);
  f8.tp_backward_overlap = bf.tp_backward_overlap = false;
  const StageWork w = build_stage_work(*m, c, f8, p, 0, false);
  // 32 layers: forward 2 x 32 gathers (qkv and fc1 inputs), backward 4 x 32 (the projection's
  // and fc2's output gradients, both norm outputs again); T h = 8192 x 4096 FP8 bytes each.
  int64_t fwd = 0, bwd = 0;
  for (const Message& msg : w.messages) {
    if (std::strcmp(msg.name, kFp8TpGatherMessage) != 0) continue;
    CHECK(msg.kind == MessageKind::all_gather);
    CHECK(msg.bytes == 8192LL * 4096);
    (msg.pass == Pass::forward ? fwd : bwd) += msg.count;
  }
  CHECK(fwd == 64);
  CHECK(bwd == 128);
  // What is left in bf16: forward 2 x 32 reduce-scatters + the embedding's and the output
  // layer's halves; backward 2 x 32 + the same two.
  const Message* rest_f = nullptr;
  for (const Message& msg : w.messages)
    if (std::strcmp(msg.name, "tp activations") == 0 && msg.pass == Pass::forward) rest_f = &msg;
  REQUIRE(rest_f != nullptr);
  CHECK(rest_f->count == 66);
  CHECK(rest_f->bytes == 2LL * 8192 * 4096);
  // Time: each FP8 gather saves half of a bf16 gather's transfer, (n-1)/n x T h / busbw on the
  // node's NVLink ring (370 GB/s, dgx-h100), the latency the same: 192 x 7/8 x 33554432 / 370e9
  // = 15.236 ms per micro-batch (1 here).
  const Estimate ef = CostModel(*m, c, f8).evaluate(p), eb = CostModel(*m, c, bf).evaluate(p);
  CHECK(eb.time.tp_comm_s - ef.time.tp_comm_s == Approx(192 * 7.0 / 8 * 33554432 / 370e9).epsilon(1e-9));
  CHECK(192 * 7.0 / 8 * 33554432 / 370e9 == Approx(0.015236).epsilon(1e-4));
  // And the bytes each GPU sends over tp: 192 x 7/8 x 33554432 fewer.
  CHECK(eb.comm.tp - ef.comm.tp == 192LL * 7 * 33554432 / 8);
  // With --tp-comm-overlap the overlapped halves stay priced at bf16 size (sim/fp8.hpp).
  p.tp_comm_overlap = true;
  const StageWork wo = build_stage_work(*m, c, f8, p, 0, false);
  CHECK(wo.find(Group::tp, kFp8TpGatherMessage) == nullptr);
}
