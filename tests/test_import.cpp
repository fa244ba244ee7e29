// `loom import megatron|torchtitan|deepspeed`: import(export(plan)) is the same plan, field by
// field, for each engine and for plans that vary every knob the engine can express; files that
// change the model in ways loom does not price, or that are malformed, exit 2 with one line.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>

#include "run_loom.hpp"
#include "sim_fixtures.hpp"

namespace {

std::string hf(const std::string& name) { return std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/" + name; }

// The configuration a plan.json describes, without the names and the published counts that an
// engine's file does not carry; the step time shows both sides priced the same.
nlohmann::json configuration(const std::string& plan_path) {
  auto j = nlohmann::json::parse(slurp(plan_path));
  for (auto* k : {"name", "source", "published_params", "published_params_precision", "published_active_params",
                  "published_active_params_precision"})
    j["model"].erase(k);
  loom::test::resolve_bucket(j);
  return {{"model", j["model"]}, {"train", j["train"]}, {"parallel", j["parallel"]},
          {"step_time_s", j["prediction"]["step_time_s"]}};
}

// predict -o plan.json; export --to ENGINE; import ENGINE; the two plans' configurations.
// `import_args` are what the engine's file does not hold (cluster, GPUs, and for DeepSpeed the
// model, sequence, tp, pp and recompute).
void round_trip(const std::string& engine, const std::string& predict_args, const std::string& import_args,
                const std::string& name, bool quiet = true) {
  const auto plan = temp_file(name + "_plan.json", ""), file = temp_file(name + "_" + engine + ".out", ""),
             back = temp_file(name + "_imported.json", "");
  INFO(engine << " " << predict_args);
  LoomRun pr = run_loom("predict " + predict_args + " -o " + plan);
  INFO(pr.err);
  REQUIRE(pr.code == 0);
  LoomRun e = run_loom("export " + plan + " --to " + engine + " -o " + file);
  INFO(e.err);
  REQUIRE(e.code == 0);
  LoomRun i = run_loom("import " + engine + " " + file + " " + import_args + " -o " + back);
  INFO(i.err);
  REQUIRE(i.code == 0);
  if (quiet) CHECK(i.err.empty());  // every key the exporter writes is read back
  CHECK(configuration(back) == configuration(plan));
}

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST_CASE("import torchtitan reads back what export torchtitan wrote", "[import]") {
  // Pure data parallelism is DDP (zero 0), with gradient accumulation 64 / (2 x 16) = 2; a
  // flavor registered in Python ("tinyllama-1.1b"), its shape from --model. torchtitan and
  // DeepSpeed add micro-batches' gradients in a pass of their own: where a step has more than
  // one, the plans are priced with --grad-accumulation separate, as the imports read them; and
  // their tensor parallelism runs the backward's collectives in-line: --tp-backward-overlap off.
  round_trip("torchtitan",
             "--model tinyllama-1.1b --cluster dgx-h100 --gpus 16 --global-batch 64 --seq 2048 --tp 1 --pp 1 --micro-batch 2 "
             "--grad-dtype fp32 --grad-accumulation separate",
             "--cluster dgx-h100 --gpus 16 --model tinyllama-1.1b", "tt_ddp");
  // FSDP resharding after forward (zero 3), tp 4 with sequence parallelism, full recompute.
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 4096 --tp 4 --pp 1 --zero 3 --sp on "
             "--recompute full --grad-dtype fp32 --grad-accumulation separate --tp-backward-overlap off",
             "--cluster dgx-h100 --gpus 16", "tt_fsdp");
  // FSDP without resharding (zero 2), tp 2, interleaved pipeline of 2 x 2 stages of 8 layers.
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 2048 --tp 2 --pp 2 --zero 2 --sp on "
             "--schedule interleaved --vpp 2 --micro-batch 2 --grad-dtype fp32 --grad-accumulation separate --tp-backward-overlap off",
             "--cluster dgx-h100 --gpus 16", "tt_interleaved");
  // GPipe over 4 stages, fp32 weights, full recompute; a Hugging Face model as a flavor
  // registered in Python.
  round_trip("torchtitan",
             "--model " + hf("mistral_7b_config.json") + " --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 4096 "
             "--tp 1 --pp 4 --zero 2 --schedule gpipe --dtype fp32 --grad-dtype fp32 --recompute full "
             "--grad-accumulation separate",
             "--cluster dgx-h100 --gpus 16 --model " + hf("mistral_7b_config.json"), "tt_gpipe", false);
}

TEST_CASE("compare: a plan and its Megatron-LM round trip are the same job, whatever the model is named", "[import]") {
  const loom::test::RoundTrip t = loom::test::export_round_trip("megatron", "--model llama3-8b --cluster dgx-h100 --gpus 64 --global-batch 512 "
                                                    "--seq 4096 --tp 1 --pp 1 --zero 1 --overlap-param-gather",
                                        "--cluster dgx-h100 --gpus 64", "compare_rt", "--use-distributed-optimizer");
  const LoomRun c = run_loom("compare " + t.plan + " " + t.imported);
  INFO(c.err);
  REQUIRE(c.code == 0);
  CHECK(c.out.find("step_time_s") != std::string::npos);
  CHECK(c.out.find("+0.00") != std::string::npos);
}

TEST_CASE("import deepspeed reads back what export deepspeed wrote", "[import]") {
  // ZeRO-2, micro-batch 4 and accumulation 2, bf16 gradients in buckets of 4e7 elements.
  round_trip("deepspeed",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 64 --tp 1 --pp 1 --zero 2 --micro-batch 4 "
             "--grad-accumulation separate",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8", "ds_zero2");
  // ZeRO-1 with a pipeline of 2 (PipelineModule, --pp) and full recompute, fp32 gradients.
  round_trip("deepspeed",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 32 --tp 1 --pp 2 --zero 1 --recompute full "
             "--grad-dtype fp32 --grad-accumulation separate --overlap-grad-reduce off",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --pp 2", "ds_pipe");
  // No ZeRO, AutoTP 2: DeepSpeed's fixed 5e8-element buckets of bf16 gradients.
  round_trip("deepspeed",
             "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 16 --seq 2048 --tp 2 --pp 1 "
             "--dp-bucket-bytes 1000000000 --grad-accumulation separate --tp-backward-overlap off --overlap-grad-reduce off",
             "--model llama3-8b --seq 2048 --cluster dgx-h100 --gpus 8", "ds_autotp");
  // ZeRO-3; the model code's recompute comes from --recompute.
  round_trip("deepspeed",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 4096 --tp 1 --pp 1 --zero 3 "
             "--recompute full --micro-batch 2",
             "--model llama3-8b --seq 4096 --cluster dgx-h100 --gpus 16 --recompute full", "ds_zero3");
}

TEST_CASE("import megatron reads back more plans: FSDP, micro-batches, full recompute", "[import]") {
  // Mixture of experts (sim/moe.hpp): 8 experts, top-2, over ep 4 with expert tp 2, the
  // distributed optimizer, full recompute and a capacity factor other than the default; then a first dense
  // layer and every second layer MoE (--moe-layer-freq as a 0/1 list) with shared experts.
  round_trip("megatron",
             "--model mixtral-8x7b --cluster dgx-h100 --gpus 32 --global-batch 32 --seq 4096 --tp 2 --sp --pp 2 "
             "--ep 4 --etp 2 --zero 1 --moe-capacity-factor 1.5 --recompute full",
             "--cluster dgx-h100 --gpus 32", "mg_moe");
  nlohmann::json m = {{"name", "moe-dense-first"}, {"family", "llama"}, {"layers", 8}, {"hidden", 1024},
                      {"heads", 8}, {"kv_heads", 8}, {"ffn_hidden", 2816}, {"vocab", 32000}, {"seq_len", 2048},
                      {"tied_embeddings", false}, {"dropout", false}, {"rope_theta", 10000.0}, {"experts", 16},
                      {"experts_per_token", 4}, {"shared_experts", 2}, {"expert_ffn_hidden", 704},
                      {"dense_layers", 1}, {"moe_layer_interval", 2}};
  round_trip("megatron",
             "--model " + temp_file("moe_dense_first.json", m.dump()) + " --cluster dgx-h100 --gpus 8 --global-batch 16 "
             "--seq 2048 --tp 1 --pp 1 --ep 8 --zero 1",
             "--cluster dgx-h100 --gpus 8", "mg_moe_dense_first");
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 4096 --tp 2 --pp 1 --zero 3 --sp on",
             "--cluster dgx-h100 --gpus 16", "mg_fsdp");
  // ZeRO-2 is Megatron-FSDP's optim_grads, which overlaps its weight gathers itself: the plan
  // that round-trips has --overlap-param-gather on (one with it off exports with a note).
  round_trip("megatron",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 64 --tp 1 --pp 2 --zero 2 --micro-batch 4 "
             "--recompute full --grad-dtype fp32 --overlap-param-gather on",
             "--cluster dgx-a100 --gpus 8", "mg_zero2");
  // The distributed optimizer with its weight gather under the next forward.
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 4096 --tp 2 --pp 1 --zero 1 --sp on "
             "--overlap-param-gather on",
             "--cluster dgx-h100 --gpus 16", "mg_opg");
}

namespace {

const char* kJob = R"([model]
name = "llama3"
flavor = "8B"

[training]
local_batch_size = 2
global_batch_size = 32
seq_len = 2048

[parallelism]
data_parallel_shard_degree = -1
tensor_parallel_degree = 2

[activation_checkpoint]
mode = "none"
)";

LoomRun import_toml(const std::string& name, const std::string& text, const std::string& more = "") {
  return run_loom("import torchtitan " + temp_file(name, text) + " --cluster dgx-h100 --gpus 8 " + more);
}

}  // namespace

TEST_CASE("import torchtitan: a user's job file; ignored keys listed once; bad files exit 2", "[import]") {
  LoomRun ok = import_toml("tt_ok.toml", std::string(kJob) + "\n[optimizer]\nlr = 3e-4\n\n[job]\ndump_folder = \"out\"\n",
                           "--json");
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  const auto e = nlohmann::json::parse(ok.out);
  CHECK(e["dp"] == 4);  // data_parallel_shard_degree -1: 8 / tp 2
  CHECK(e["zero"] == 3);  // FSDP, "default" reshards without PP
  CHECK(e["sp"] == true);
  CHECK(e["micro_batch"] == 2);
  CHECK(e["global_batch"] == 32);
  CHECK(ok.err.find("optimizer.lr = 0.0003: ignored") != std::string::npos);
  CHECK(ok.err.find("job.dump_folder = \"out\": ignored") != std::string::npos);
  CHECK(lines(ok.err) == 2);

  auto refused = [](const std::string& name, const std::string& text, const std::string& what) {
    LoomRun r = import_toml(name, text);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find(what) != std::string::npos);
  };
  refused("tt_section.toml", std::string(kJob) + "[trainer]\nsteps = 10\n", "trainer: not a torchtitan v0.2.2 JobConfig section");
  refused("tt_key.toml", std::string(kJob) + "[optimizer]\nlearning_rate = 1.0\n",
          "optimizer.learning_rate: not a torchtitan v0.2.2 JobConfig key");
  std::string text = kJob;
  text.replace(text.find("tensor_parallel_degree = 2"), 26, "tensor_parallel_degree = \"2\"");
  refused("tt_type.toml", text, ":12: parallelism.tensor_parallel_degree: must be an integer");
  text = kJob;
  text.replace(text.find("= -1"), 4, "= 3");
  refused("tt_split.toml", text, "replicate x shard x tp x pp = 1 x 3 x 2 x 1 must equal --gpus 8");
  refused("tt_syntax.toml", std::string(kJob) + "[compile]\nenable = \n", "tt_syntax.toml:17:");
  text = kJob;
  text.replace(text.find("mode = \"none\""), 13, "mode = \"selective\"\nselective_ac_option = \"x\"");
  refused("tt_ac_option.toml", text,
          "activation_checkpoint.selective_ac_option: must be \"op\" or a non-negative integer, as torchtitan's "
          "ActivationCheckpoint asserts (got \"x\")\n");
  // No [activation_checkpoint]: torchtitan's default, selective "2", every second block of each
  // model part checkpointed (ParallelConfig::recompute_every); "1" and "0" every block.
  text = kJob;
  text.erase(text.find("[activation_checkpoint]"));
  const LoomRun every = import_toml("tt_ac.toml", text, "--json");
  INFO(every.err);
  REQUIRE(every.code == 0);
  const auto ev = nlohmann::json::parse(every.out);
  CHECK(ev["recompute"] == "full");
  CHECK(ev["recompute_every"] == 2);
  // Interleaved over pp 2 (4 parts of 8 blocks): torchtitan v0.2.2 counts blocks on across a
  // rank's two parts, which is loom's count per chunk for K = 2 (8 is a multiple) but not for 3.
  auto pp_job = [&](const char* option) {
    std::string t = kJob;
    t.replace(t.find("local_batch_size = 2"), 20, "local_batch_size = 16");  // one flush per step
    t.replace(t.find("tensor_parallel_degree = 2"), 26,
              "tensor_parallel_degree = 2\npipeline_parallel_degree = 2\npipeline_parallel_schedule = "
              "\"Interleaved1F1B\"\npipeline_parallel_first_stage_less_layers = 0\n"
              "pipeline_parallel_last_stage_less_layers = 0");
    t.replace(t.find("mode = \"none\""), 13, std::string("mode = \"selective\"\nselective_ac_option = \"") + option + "\"");
    return t;
  };
  const LoomRun pp2 = import_toml("tt_ac_pp2.toml", pp_job("2"), "--json");
  INFO(pp2.err);
  REQUIRE(pp2.code == 0);
  CHECK(nlohmann::json::parse(pp2.out)["recompute_every"] == 2);
  refused("tt_ac_pp3.toml", pp_job("3"),
          "activation_checkpoint.selective_ac_option: torchtitan v0.2.2 counts blocks on across a rank's model parts, "
          "which loom prices where each part but a rank's last holds a multiple of 3 blocks (stage 0's part 0 holds 8)");
  // Python's int(): leading zeros read as torchtitan reads them; too large a K is refused.
  text = kJob;
  text.replace(text.find("mode = \"none\""), 13, "mode = \"selective\"\nselective_ac_option = \"0002\"");
  const LoomRun zeros = import_toml("tt_ac_zeros.toml", text, "--json");
  REQUIRE(zeros.code == 0);
  CHECK(nlohmann::json::parse(zeros.out)["recompute_every"] == 2);
  text = kJob;
  text.replace(text.find("mode = \"none\""), 13, "mode = \"selective\"\nselective_ac_option = \"123456789012\"");
  refused("tt_ac_big.toml", text, "activation_checkpoint.selective_ac_option: must be at most 1048576 (got \"123456789012\")\n");
  for (const char* all : {"0", "1"}) {
    text = kJob;
    text.replace(text.find("mode = \"none\""), 13, std::string("mode = \"selective\"\nselective_ac_option = \"") + all + "\"");
    const LoomRun r = import_toml(std::string("tt_ac_") + all + ".toml", text, "--json");
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j["recompute"] == "full");
    CHECK_FALSE(j.contains("recompute_every"));
  }
}

TEST_CASE("import torchtitan: refusals name the key and the rule", "[import]") {
  auto refused = [](const std::string& name, const std::string& text, const std::string& what) {
    LoomRun r = import_toml(name, text);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find(what) != std::string::npos);
  };
  std::string base = kJob;
  refused("tt_conv.toml", "[model]\nname = \"llama3\"\nflavor = \"8B\"\nconverters = [\"float8\"]\n",
          "model.converters: loom prices the converter [\"quantize.linear.float8\"] only");
  std::string cp = base;
  cp.insert(cp.find("tensor_parallel_degree"), "context_parallel_degree = 2\n");
  // Context parallelism is priced as the ring of K and V blocks ("alltoall") or TransformerEngine's
  // all-gather, not torchtitan's default rotation (K and V gathered, dK and dV round a ring).
  refused("tt_cp2.toml", cp, "parallelism.context_parallel_rotate_method: loom prices the ring of K and V blocks, "
                             "\"alltoall\"; \"allgather\" (torchtitan's default: K and V gathered, dK and dV passed "
                             "round a ring) is not modelled");
  refused("tt_flavor.toml", "[model]\nflavor = \"debugmodel\"\n", "model.flavor: loom knows the llama3 flavors");
  // torchtitan's default less-layers (1 and 1) over 2 x 2 looped stages: 34 effective layers
  // split 9, 9, 8, 8, less 1 on the first and the last: rank 1's chunks hold 9 and 7 layers.
  std::string pp = base;
  pp.insert(pp.find("tensor_parallel_degree"), "pipeline_parallel_degree = 2\npipeline_parallel_schedule = \"Interleaved1F1B\"\n");
  refused("tt_pp.toml", pp, "pipeline_parallel_first_stage_less_layers: torchtitan's split 8,9,8,7 puts unequal chunks on one rank");
  std::string ddp = base;
  ddp.replace(ddp.find("data_parallel_shard_degree = -1"), 31, "data_parallel_replicate_degree = 4\ndata_parallel_shard_degree = 1");
  refused("tt_ddp.toml", ddp, "no DDP with tensor or pipeline parallelism");
  std::string custom = base;
  custom.replace(custom.find("\"8B\""), 4, "\"gpt2\"");
  LoomRun gpt = import_toml("tt_gpt.toml", custom, "--model gpt2-350m");
  CHECK(gpt.code == 2);
  CHECK(gpt.err.find("--model: torchtitan's llama3 is a Llama-family model") != std::string::npos);
  LoomRun tp = import_toml("tt_tp.toml", base, "--tp 2");
  CHECK(tp.code == 2);
  CHECK(tp.err == "loom: --tp: not for torchtitan (the file names it)\n");
}

namespace {

LoomRun import_ds(const std::string& name, const nlohmann::json& cfg, const std::string& more = "") {
  return run_loom("import deepspeed " + temp_file(name, cfg.dump()) + " --model gpt2-350m --cluster dgx-a100 --gpus 8 " + more);
}

const nlohmann::json kDs = {{"train_batch_size", 64},
                            {"train_micro_batch_size_per_gpu", 4},
                            {"bf16", {{"enabled", true}}},
                            {"zero_optimization", {{"stage", 2}, {"overlap_comm", true}}},
                            {"optimizer", {{"type", "AdamW"}, {"params", {{"lr", 3e-4}}}}},
                            {"steps_per_print", 10}};

}  // namespace

TEST_CASE("import deepspeed: a user's ds_config; batch sizes resolved as DeepSpeed does; bad configs exit 2", "[import]") {
  LoomRun ok = import_ds("ds_ok.json", kDs, "--json");
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  const auto e = nlohmann::json::parse(ok.out);
  CHECK(e["dp"] == 8);
  CHECK(e["zero"] == 2);
  CHECK(e["micro_batch"] == 4);  // gradient accumulation 64 / (4 x 8) = 2
  CHECK(e["global_batch"] == 64);
  CHECK_FALSE(e.contains("overlap_grad_reduce"));  // overlap_comm true: the reduction beside the backward
  CHECK(ok.err.find("overlap_comm") == std::string::npos);  // read, not ignored
  CHECK(ok.err.find("optimizer {") != std::string::npos);
  CHECK(ok.err.find("steps_per_print 10: ignored") != std::string::npos);
  CHECK(lines(ok.err) == 2);

  auto refused = [](const std::string& name, nlohmann::json cfg, const std::string& what, const std::string& more = "") {
    LoomRun r = import_ds(name, cfg, more);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find(what) != std::string::npos);
  };
  nlohmann::json c = kDs;
  c["fp16"] = {{"enabled", true}};
  refused("ds_fp16.json", c, "fp16 is not modelled");
  c = kDs;
  c["zero_optimization"]["stagee"] = 3;
  refused("ds_zero_key.json", c, "zero_optimization.stagee: not a DeepSpeed ZeRO option");
  c = kDs;
  c["train_batch_size"] = "64";
  refused("ds_type.json", c, "/train_batch_size: must be an integer");
  c = kDs;
  c["train_batch_size"] = 60;  // 60 / 4 / 8 = 1 (DeepSpeed's floor), and 4 x 1 x 8 != 60
  refused("ds_split.json", c, "train_batch_size: must equal train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp (4 x 1 x 8; "
          "the steps derived as DeepSpeed does, train / micro / dp, rounded down) (got 60)");
  refused("ds_pp.json", kDs, "ZeRO-2 and ZeRO-3 are incompatible with DeepSpeed's pipeline engine", "--pp 2");
  c = kDs;
  c["zero_optimization"] = {{"stage", 3}, {"offload_param", {{"device", "cpu"}}}};
  refused("ds_offload.json", c, "zero_optimization.offload_param: offloading the parameters without the optimizer is not modelled");
  c["zero_optimization"] = {{"stage", 3}, {"offload_optimizer", {{"device", "nvme"}}}};
  refused("ds_nvme.json", c, "zero_optimization.offload_optimizer: only cpu offload is modelled (got device \"nvme\")");
  c = kDs;
  c["zero_optimization"]["stage"] = 0;
  c["data_types"] = {{"grad_accum_dtype", "fp32"}};
  refused("ds_mix.json", c, "DeepSpeed without ZeRO accumulates gradients in the model's dtype");
  LoomRun nomodel = run_loom("import deepspeed " + temp_file("ds_nomodel.json", kDs.dump()) + " --cluster dgx-a100 --gpus 8");
  CHECK(nomodel.code == 2);
  CHECK(nomodel.err.find("--model: is required for deepspeed") != std::string::npos);
}

TEST_CASE("import --compare-best: your configuration against loom's best, with the fields and terms that differ", "[import]") {
  const auto script = temp_file("cb_launch.sh", "");
  const auto plan = temp_file("cb_plan.json", "");
  REQUIRE(run_loom("predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --tp 8 --pp 16 --zero 1 "
                   "--schedule interleaved --vpp 2 --recompute selective --sp --grad-dtype fp32 -o " + plan).code == 0);
  REQUIRE(run_loom("export " + plan + " --to megatron -o " + script).code == 0);
  LoomRun r = run_loom("import megatron " + script + " --cluster dgx-a100 --gpus 1024 --compare-best");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("your configuration (dp 8  tp 8  pp 16  zero 1") != std::string::npos);
  CHECK(r.out.find("loom's best (") != std::string::npos);
  CHECK(r.out.find("x faster, because:") != std::string::npos);
  CHECK(r.out.find("the term that differs most: ") != std::string::npos);
  LoomRun j = run_loom("import megatron " + script + " --cluster dgx-a100 --gpus 1024 --compare-best --json");
  REQUIRE(j.code == 0);
  const auto doc = nlohmann::json::parse(j.out);
  // The search covers the imported configuration, so its best is at least as fast.
  CHECK(doc["speedup"].get<double>() >= 1.0);
  CHECK(doc["imported"]["step_time_s"] == nlohmann::json::parse(slurp(plan))["prediction"]["step_time_s"]);
  CHECK(doc["best"]["step_time_s"].get<double>() <= doc["imported"]["step_time_s"].get<double>());
}

TEST_CASE("import reads back tp comm overlap: Megatron's --tp-comm-overlap, torchtitan's async TP", "[import][tp_overlap]") {
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 4096 --tp 8 --sp --pp 2 "
             "--tp-comm-overlap on",
             "--cluster dgx-h100 --gpus 16", "mg_tpo");
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 4096 --tp 8 --sp --pp 1 --zero 3 "
             "--micro-batch 2 --grad-dtype fp32 --tp-comm-overlap on --grad-accumulation separate --tp-backward-overlap off",
             "--cluster dgx-h100 --gpus 16", "tt_tpo");
}

TEST_CASE("import reads back context parallelism: Megatron's --context-parallel-size, torchtitan's degree", "[import][cp]") {
  // tp 2 with sp, cp 2 (--cp-comm-type p2p), dp 4: 8192-token sequences, 4096 per rank.
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 --tp 2 --sp --pp 1 --cp 2 "
             "--zero 1",
             "--cluster dgx-h100 --gpus 16", "mg_cp");
  // FSDP over dp x cp = 4 x 2, the ring rotation ("alltoall").
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 --tp 2 --sp --pp 1 --cp 2 "
             "--zero 3 --grad-dtype fp32 --grad-accumulation separate --tp-backward-overlap off",
             "--cluster dgx-h100 --gpus 16", "tt_cp");
  // K and V all-gathered (--cp-comm-type all_gather), as TransformerEngine runs it.
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 --tp 2 --sp --pp 1 --cp 2 "
             "--cp-comm-type all_gather --zero 1",
             "--cluster dgx-h100 --gpus 16", "mg_cp_ag");
  // torchtitan has no TransformerEngine-style all-gather: said, and emitted as the ring.
  const auto ag_plan = temp_file("tt_cp_ag_plan.json", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 --tp 2 --sp "
                   "--pp 1 --cp 2 --cp-comm-type all_gather --zero 3 -o " + ag_plan).code == 0);
  const LoomRun tt_ag = run_loom("export " + ag_plan + " --to torchtitan");
  CHECK(tt_ag.code == 0);
  CHECK(tt_ag.out.find("context_parallel_rotate_method = \"alltoall\"") != std::string::npos);
  CHECK(tt_ag.err.find("cp_comm all_gather: torchtitan has no TransformerEngine-style K/V all-gather") != std::string::npos);
  // Megatron's other CP communication types (Ulysses' all-to-all) are not priced.
  const auto plan = temp_file("mg_cp_a2a_plan.json", ""), file = temp_file("mg_cp_a2a.sh", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 --tp 2 --sp --pp 1 "
                   "--cp 2 --zero 1 -o " + plan).code == 0);
  REQUIRE(run_loom("export " + plan + " --to megatron -o " + file).code == 0);
  std::string text = slurp(file);
  REQUIRE(text.find("--context-parallel-size 2") != std::string::npos);
  REQUIRE(text.find("--cp-comm-type p2p") != std::string::npos);
  text.replace(text.find("--cp-comm-type p2p"), 18, "--cp-comm-type a2a");
  LoomRun a2a = run_loom("import megatron " + temp_file("mg_cp_a2a2.sh", text) + " --cluster dgx-h100 --gpus 16");
  CHECK(a2a.code == 2);
  CHECK(a2a.err.find("--cp-comm-type: loom prices p2p and all_gather (got a2a)") != std::string::npos);
  // DeepSpeed has no ring attention: its export names cp as what it cannot express.
  LoomRun ds = run_loom("export " + plan + " --to deepspeed");
  CHECK(ds.code == 0);
  CHECK(ds.err.find("cp 2: DeepSpeed has no ring-attention context parallelism") != std::string::npos);
}

TEST_CASE("import megatron: a word after a switch is refused, as Megatron-LM's parser refuses it", "[import]") {
  const std::string script = temp_file("switch_value.sh",
                                       "torchrun pretrain_gpt.py --num-layers 32 --hidden-size 4096 "
                                       "--num-attention-heads 32 --seq-length 4096 --max-position-embeddings 4096 "
                                       "--micro-batch-size 1 --global-batch-size 64 --tensor-model-parallel-size 2 "
                                       "--sequence-parallel false --bf16\n");
  const LoomRun r = run_loom("import megatron " + script + " --cluster dgx-h100 --gpus 8");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: " + script + ": --sequence-parallel: is a switch and takes no value (got \"false\")\n");
}

TEST_CASE("import megatron: a block of at least a chunk's layers is every layer, said so", "[import]") {
  const std::string script = temp_file("block_all.sh",
                                       "torchrun pretrain_gpt.py --num-layers 32 --hidden-size 4096 "
                                       "--num-attention-heads 32 --seq-length 4096 --max-position-embeddings 4096 "
                                       "--micro-batch-size 1 --global-batch-size 64 --pipeline-model-parallel-size 4 --vocab-size 32000 "
                                       "--recompute-granularity full --recompute-method block --recompute-num-layers 16 "
                                       "--bf16\n");
  const std::string out = temp_file("block_all.json", "");
  const LoomRun r = run_loom("import megatron " + script + " --cluster dgx-h100 --gpus 8 -o " + out);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("--recompute-num-layers 16: at least each model chunk's 8 layers, so every layer is recomputed "
                   "(priced as such)") != std::string::npos);
  const auto plan = nlohmann::json::parse(slurp(out));
  CHECK(plan["parallel"]["recompute"] == "full");
  CHECK(plan["parallel"].value("recompute_layers", 0) == 0);
}

TEST_CASE("import deepspeed: with only train_batch_size, the message says the micro-batch was derived", "[import]") {
  const std::string cfg = temp_file("ds_train_only.json", R"({"train_batch_size": 10, "bf16": {"enabled": true}})");
  const LoomRun r = run_loom("import deepspeed " + cfg + " --model llama3-8b --cluster dgx-h100 --gpus 4 --tp 1 --pp 1");
  CHECK(r.code == 2);
  CHECK(r.err.find("(2 x 1 x 4; the micro-batch derived as DeepSpeed does, train / dp, rounded down, with 1 step) "
                   "(got 10)") != std::string::npos);
}
