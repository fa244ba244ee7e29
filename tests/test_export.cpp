// `loom export`: each engine's output field by field, against the option names verified in
// the engines' sources (Megatron-LM d98e8a64, torchtitan v0.2.2 73a0e697, DeepSpeed edaa7221;
// the commit of each is named beside its exporter in planner/export.cpp).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <sstream>

#include "planner/export.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

Plan make_plan(const std::string& model, int64_t gpus, int64_t batch, int64_t seq, const ParallelConfig& p,
               Dtype grad = Dtype::fp32, const std::string& cluster = "dgx-a100") {
  Plan plan;
  plan.model = *load_model(model, "test", nullptr);
  plan.cluster = *load_cluster(cluster, "test");
  REQUIRE(size_cluster(plan.cluster, gpus, "test").ok());
  plan.train.global_batch = batch;
  plan.train.seq = seq;
  plan.train.grad_dtype = grad;
  plan.train.dp_bucket_bytes = 160'000'000;
  plan.parallel = p;
  REQUIRE(validate_config(plan.model, plan.cluster, plan.train, p, [](const std::string& f) { return f; }).ok());
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(p);
  return plan;
}

// The notes' worked example: GPT-3 175B, dp 8 tp 8 pp 16, mbs 1, gbs 1536, interleaved vpp 2,
// selective recompute, SP, ZeRO-1, bf16 with fp32 gradient reduction.
Plan gpt3_example() {
  ParallelConfig p;
  p.dp = 8, p.tp = 8, p.pp = 16, p.zero = 1, p.micro_batch = 1, p.sp = true;
  p.recompute = Recompute::selective, p.schedule = Schedule::interleaved, p.vpp = 2;
  return make_plan("gpt3-175b", 1024, 1536, 2048, p);
}

// "--flag value \" lines -> flag -> value ("" for switches); comments skipped.
std::map<std::string, std::string> parse_args(const std::string& text, std::vector<std::string>* order = nullptr) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  // A launch script: the arguments follow the "  pretrain_gpt.py \\" line.
  bool started = text.find("\n  pretrain_gpt.py \\\n") == std::string::npos;
  while (std::getline(in, line)) {
    if (!started) {
      started = line == "  pretrain_gpt.py \\";
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string flag, value, tok;
    ls >> flag;
    while (ls >> tok)
      if (tok != "\\") value = tok;
    REQUIRE(out.count(flag) == 0);  // each flag once
    out[flag] = value;
    if (order) order->push_back(flag);
  }
  return out;
}

// Every Megatron-LM option the notes verified (section 1), and nothing else may be emitted.
const std::set<std::string> kMegatronVerified{
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--num-layers-per-virtual-pipeline-stage",
    "--no-gradient-accumulation-fusion",
    "--sequence-parallel", "--use-distributed-optimizer", "--use-megatron-fsdp", "--data-parallel-sharding-strategy",
    "--ckpt-format", "--micro-batch-size", "--global-batch-size", "--seq-length", "--max-position-embeddings",
    "--recompute-granularity", "--recompute-method", "--recompute-num-layers", "--num-layers", "--hidden-size",
    "--num-attention-heads", "--group-query-attention", "--num-query-groups", "--ffn-hidden-size", "--tokenizer-type",
    "--vocab-size", "--padded-vocab-size", "--mock-data", "--untie-embeddings-and-output-weights", "--normalization",
    "--position-embedding-type", "--swiglu", "--disable-bias-linear", "--norm-epsilon", "--bf16",
    "--accumulate-allreduce-grads-in-fp32", "--grad-reduce-in-bf16", "--attention-backend", "--overlap-grad-reduce",
    // Checked in megatron/training/arguments.py: --rotary-base (type=int, default 10000),
    // --hidden-dropout and --attention-dropout (default 0.1), --add-qkv-bias, --use-tp-pp-dp-mapping.
    "--rotary-base", "--hidden-dropout", "--attention-dropout", "--add-qkv-bias", "--use-tp-pp-dp-mapping",
    // Uneven stages (arguments.py, TransformerConfig's decoder_first/last_pipeline_num_layers;
    // --num-virtual-stages-per-pipeline-rank, which arguments.py asks for with them).
    "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers", "--num-virtual-stages-per-pipeline-rank",
    // arguments.py: --ddp-bucket-size (type=int, default None: Megatron-core's max(40e6, 1e6 x dp)).
    "--ddp-bucket-size"};

// "[section]" and "key = value" lines -> "section.key" -> value (strings keep their quotes).
std::map<std::string, std::string> parse_toml(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const auto eq = line.find(" = ");
    REQUIRE(eq != std::string::npos);
    const std::string k = section + "." + line.substr(0, eq);
    REQUIRE(out.count(k) == 0);
    out[k] = line.substr(eq + 3);
  }
  return out;
}

// torchtitan v0.2.2 JobConfig keys the notes verified (section 2a).
const std::set<std::string> kTorchtitanVerified{
    "model.name", "model.flavor", "training.local_batch_size", "training.global_batch_size", "training.seq_len",
    "training.mixed_precision_param", "training.mixed_precision_reduce",
    "parallelism.data_parallel_replicate_degree", "parallelism.data_parallel_shard_degree",
    "parallelism.fsdp_reshard_after_forward", "parallelism.tensor_parallel_degree",
    "parallelism.pipeline_parallel_degree", "parallelism.pipeline_parallel_schedule",
    "parallelism.pipeline_parallel_microbatch_size", "parallelism.pipeline_parallel_layers_per_stage",
    "parallelism.pipeline_parallel_first_stage_less_layers", "parallelism.pipeline_parallel_last_stage_less_layers",
    "parallelism.context_parallel_degree", "activation_checkpoint.mode", "activation_checkpoint.selective_ac_option"};

bool mentions(const std::vector<std::string>& lines, const std::string& s) {
  for (const auto& l : lines)
    if (l.find(s) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("megatron: the notes' GPT-3 175B example, flag by flag") {
  const ExportResult r = export_plan(gpt3_example(), Engine::megatron);
  const auto a = parse_args(r.text);
  for (const auto& [flag, v] : a) {
    INFO(flag);
    CHECK(kMegatronVerified.count(flag) == 1);
  }
  CHECK(a.at("--tensor-model-parallel-size") == "8");
  CHECK(a.at("--pipeline-model-parallel-size") == "16");
  CHECK(a.at("--num-layers-per-virtual-pipeline-stage") == "3");  // 96 / (16 x 2)
  CHECK(a.count("--sequence-parallel") == 1);
  CHECK(a.count("--use-distributed-optimizer") == 1);
  CHECK(a.at("--recompute-granularity") == "selective");
  CHECK(a.count("--recompute-method") == 0);  // must not come with selective
  CHECK(a.count("--recompute-num-layers") == 0);
  CHECK(a.at("--micro-batch-size") == "1");
  CHECK(a.at("--global-batch-size") == "1536");
  CHECK(a.at("--seq-length") == "2048");
  CHECK(a.at("--max-position-embeddings") == "2048");
  CHECK(a.at("--num-layers") == "96");
  CHECK(a.at("--hidden-size") == "12288");
  CHECK(a.at("--num-attention-heads") == "96");
  CHECK(a.at("--ffn-hidden-size") == "49152");
  CHECK(a.at("--normalization") == "LayerNorm");
  CHECK(a.at("--position-embedding-type") == "learned_absolute");
  CHECK(a.count("--bf16") == 1);
  CHECK(a.count("--accumulate-allreduce-grads-in-fp32") == 1);
  CHECK(a.count("--grad-reduce-in-bf16") == 0);
  CHECK(a.count("--group-query-attention") == 0);
  CHECK(a.count("--untie-embeddings-and-output-weights") == 0);  // tied is the default
  CHECK(a.at("--vocab-size") == "50257");
  CHECK(a.at("--padded-vocab-size") == "50264");  // loom's rows: 50257 rounded up to a multiple of tp 8
  CHECK(a.at("--attention-backend") == "flash");
  CHECK(a.count("--overlap-grad-reduce") == 1);
  CHECK(r.text.find("d98e8a64ddf34856e74b24714e3bedb2f5a39553") != std::string::npos);
  CHECK(r.text.find("dp = WORLD_SIZE / (tp x pp) = 8") != std::string::npos);
  CHECK(r.unexpressible.empty());
}

TEST_CASE("megatron: llama shape, ZeRO-3, full recompute, gpipe, another rank order") {
  ParallelConfig p;
  p.dp = 2, p.tp = 4, p.pp = 2, p.zero = 3, p.micro_batch = 1, p.recompute = Recompute::full;
  p.schedule = Schedule::gpipe, p.order = "dp-tp-pp";
  const ExportResult r = export_plan(make_plan("llama3-8b", 16, 16, 2048, p, Dtype::bf16, "dgx-h100"), Engine::megatron);
  const auto a = parse_args(r.text);
  for (const auto& [flag, v] : a) {
    INFO(flag);
    CHECK(kMegatronVerified.count(flag) == 1);
  }
  CHECK(a.count("--group-query-attention") == 1);
  CHECK(a.at("--num-query-groups") == "8");
  CHECK(a.at("--normalization") == "RMSNorm");
  CHECK(a.count("--swiglu") == 1);
  CHECK(a.at("--position-embedding-type") == "rope");
  CHECK(a.count("--disable-bias-linear") == 1);
  CHECK(a.count("--untie-embeddings-and-output-weights") == 1);
  CHECK(a.count("--use-megatron-fsdp") == 1);
  CHECK(a.at("--data-parallel-sharding-strategy") == "optim_grads_params");
  CHECK(a.at("--ckpt-format") == "fsdp_dtensor");
  CHECK(a.at("--recompute-granularity") == "full");
  CHECK(a.at("--recompute-method") == "uniform");
  CHECK(a.at("--recompute-num-layers") == "1");
  CHECK(a.count("--grad-reduce-in-bf16") == 1);
  CHECK(a.count("--num-layers-per-virtual-pipeline-stage") == 0);
  CHECK(mentions(r.unexpressible, "gpipe"));
  CHECK(mentions(r.unexpressible, "rank order dp-tp-pp"));
  CHECK(mentions(r.unexpressible, "pp > 1"));  // Megatron-FSDP with pipelining is undocumented
  CHECK(a.at("--rotary-base") == "500000");       // Llama 3; Megatron-LM's default is 10000
  CHECK(a.at("--hidden-dropout") == "0.0");       // Megatron-LM's default is 0.1
  CHECK(a.at("--attention-dropout") == "0.0");
  CHECK(a.count("--add-qkv-bias") == 0);
  CHECK_FALSE(mentions(r.unexpressible, "dropout"));
}

TEST_CASE("megatron: a runnable launch script; tp-pp-dp order; Qwen2 q/k/v biases") {
  ParallelConfig p;
  p.dp = 2, p.tp = 2, p.pp = 2, p.micro_batch = 1, p.order = "tp-pp-dp";
  const std::string qwen = std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/qwen2.5_0.5b_config.json";
  const ExportResult r = export_plan(make_plan(qwen, 8, 16, 2048, p, Dtype::bf16), Engine::megatron);
  const auto a = parse_args(r.text);
  for (const auto& [flag, v] : a) {
    INFO(flag);
    CHECK(kMegatronVerified.count(flag) == 1);
  }
  CHECK(r.text.rfind("#!/usr/bin/env bash\n", 0) == 0);
  CHECK(r.text.find("\ntorchrun --nnodes 1 --nproc-per-node 8 ") != std::string::npos);
  CHECK(r.text.find("  pretrain_gpt.py \\\n") != std::string::npos);
  CHECK(a.count("--use-tp-pp-dp-mapping") == 1);
  CHECK_FALSE(mentions(r.unexpressible, "rank order"));
  CHECK(a.count("--add-qkv-bias") == 1);
  CHECK(a.at("--rotary-base") == "1000000");
  CHECK(a.count("--untie-embeddings-and-output-weights") == 0);  // Qwen2.5 0.5B ties them
  CHECK(r.unexpressible.empty());
  // Untied, on two nodes: GPUs per node from the cluster.
  ParallelConfig p7;
  p7.dp = 2, p7.tp = 4, p7.pp = 2;
  const ExportResult q7 = export_plan(
      make_plan(std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/qwen2_7b_config.json", 16, 16, 2048, p7, Dtype::bf16),
      Engine::megatron);
  CHECK(parse_args(q7.text).count("--untie-embeddings-and-output-weights") == 1);
  CHECK(q7.text.find("\ntorchrun --nnodes 2 --nproc-per-node 8 ") != std::string::npos);
}

TEST_CASE("torchtitan: the notes' GPT-3 175B example, key by key") {
  const ExportResult r = export_plan(gpt3_example(), Engine::torchtitan);
  const auto t = parse_toml(r.text);
  for (const auto& [k, v] : t) {
    INFO(k);
    CHECK(kTorchtitanVerified.count(k) == 1);
  }
  CHECK(t.at("model.name") == "\"llama3\"");
  CHECK(t.at("training.local_batch_size") == "192");  // 1536 / dp 8, cut into 192 PP micro-batches
  CHECK(t.at("training.global_batch_size") == "1536");
  CHECK(t.at("training.seq_len") == "2048");
  CHECK(t.at("training.mixed_precision_param") == "\"bfloat16\"");
  CHECK(t.at("training.mixed_precision_reduce") == "\"float32\"");
  CHECK(t.at("parallelism.data_parallel_replicate_degree") == "1");
  CHECK(t.at("parallelism.data_parallel_shard_degree") == "8");
  CHECK(t.at("parallelism.fsdp_reshard_after_forward") == "\"never\"");
  CHECK(t.at("parallelism.tensor_parallel_degree") == "8");
  CHECK(t.at("parallelism.pipeline_parallel_degree") == "16");
  CHECK(t.at("parallelism.pipeline_parallel_schedule") == "\"Interleaved1F1B\"");
  CHECK(t.at("parallelism.pipeline_parallel_microbatch_size") == "1");
  CHECK(t.at("parallelism.pipeline_parallel_layers_per_stage") == "3");
  CHECK(t.at("parallelism.pipeline_parallel_first_stage_less_layers") == "0");
  CHECK(t.at("parallelism.pipeline_parallel_last_stage_less_layers") == "0");
  CHECK(t.at("parallelism.context_parallel_degree") == "1");
  CHECK(t.at("activation_checkpoint.mode") == "\"selective\"");
  CHECK(t.at("activation_checkpoint.selective_ac_option") == "\"op\"");
  CHECK(r.text.find("73a0e6979dd10b6b1904098eb3c8f62c18ab87ce") != std::string::npos);
  CHECK(mentions(r.unexpressible, "zero 1"));
  CHECK(mentions(r.unexpressible, "GPT"));
  CHECK(mentions(r.unexpressible, "tied embeddings"));
  CHECK(mentions(r.unexpressible, "recompute selective"));
}

TEST_CASE("torchtitan: pure data parallelism is DDP; a zoo llama keeps its flavor; sp off is named") {
  ParallelConfig p;
  p.dp = 8;
  auto t = parse_toml(export_plan(make_plan("llama3-8b", 8, 16, 2048, p, Dtype::fp32, "dgx-h100"), Engine::torchtitan).text);
  CHECK(t.at("parallelism.data_parallel_replicate_degree") == "8");
  CHECK(t.at("parallelism.data_parallel_shard_degree") == "1");
  CHECK(t.count("parallelism.fsdp_reshard_after_forward") == 0);
  CHECK(t.count("parallelism.pipeline_parallel_schedule") == 0);
  CHECK(t.at("training.local_batch_size") == "1");  // no PP: one forward's batch
  CHECK(t.at("model.flavor") == "\"8B\"");
  CHECK(t.at("activation_checkpoint.mode") == "\"none\"");
  p = {};
  p.dp = 2, p.tp = 4, p.zero = 3;
  const ExportResult r = export_plan(make_plan("llama3-8b", 8, 16, 2048, p, Dtype::bf16, "dgx-h100"), Engine::torchtitan);
  t = parse_toml(r.text);
  CHECK(t.at("parallelism.fsdp_reshard_after_forward") == "\"always\"");
  CHECK(mentions(r.unexpressible, "sp off"));
  CHECK(mentions(r.unexpressible, "grad dtype bf16"));
}

TEST_CASE("deepspeed: the notes' GPT-3 175B example, key by key") {
  const ExportResult r = export_plan(gpt3_example(), Engine::deepspeed);
  const auto j = nlohmann::json::parse(r.text);
  const nlohmann::json expected = {{"train_batch_size", 1536},
                                   {"train_micro_batch_size_per_gpu", 1},
                                   {"gradient_accumulation_steps", 192},
                                   {"bf16", {{"enabled", true}}},
                                   {"data_types", {{"grad_accum_dtype", "fp32"}}},
                                   {"communication_data_type", "fp32"},
                                   {"zero_optimization", {{"stage", 1}, {"overlap_comm", true}, {"reduce_bucket_size", 40000000}}},
                                   {"pipeline", {{"activation_checkpoint_interval", 0}}}};
  CHECK(j == expected);
  CHECK(mentions(r.unexpressible, "PipelineModule(layers, num_stages=16"));
  CHECK(mentions(r.unexpressible, "num_mp=8, num_dp=8"));
  CHECK(mentions(r.unexpressible, "schedule interleaved"));
  CHECK(mentions(r.unexpressible, "overlap_grad_reduce on: DeepSpeed's pipeline engine reduces gradients after the backward"));
  CHECK(mentions(r.unexpressible, "sp on"));
  CHECK(mentions(r.unexpressible, "recompute selective"));
}

TEST_CASE("deepspeed: ZeRO-3 with pp falls back to stage 1; AutoTP without pp; bf16 + ZeRO-0 + fp32 grads") {
  ParallelConfig p;
  p.dp = 4, p.pp = 2, p.zero = 3, p.recompute = Recompute::full;
  ExportResult r = export_plan(make_plan("gpt2-124m", 8, 32, 1024, p, Dtype::bf16), Engine::deepspeed);
  auto j = nlohmann::json::parse(r.text);
  CHECK(j["zero_optimization"]["stage"] == 1);
  CHECK(j["zero_optimization"]["reduce_bucket_size"] == 80000000);  // 160e6 bytes of bf16 gradients
  CHECK(j["pipeline"]["activation_checkpoint_interval"] == 1);
  CHECK(j["data_types"]["grad_accum_dtype"] == "bf16");
  CHECK(j["communication_data_type"] == "bf16");
  CHECK(mentions(r.unexpressible, "zero 3 with pp > 1"));
  p = {};
  p.dp = 2, p.tp = 4;
  r = export_plan(make_plan("gpt2-124m", 8, 32, 1024, p, Dtype::fp32), Engine::deepspeed);
  j = nlohmann::json::parse(r.text);
  CHECK(j["tensor_parallel"]["autotp_size"] == 4);
  CHECK(j.count("pipeline") == 0);
  CHECK(j.count("data_types") == 0);
  CHECK(j["gradient_accumulation_steps"] == 16);
  CHECK(mentions(r.unexpressible, "fp32 gradient accumulation"));
  // Without ZeRO DeepSpeed's buckets are fixed at 5e8 elements; this plan's are 4e7.
  CHECK(j["zero_optimization"].count("reduce_bucket_size") == 0);
  CHECK(mentions(r.unexpressible, "dp bucket 40000000 elements: DeepSpeed without ZeRO reduces in fixed buckets of 500000000"));
}

TEST_CASE("loom export on the command line: config on stdout, what cannot be expressed on stderr") {
  auto path = temp_file("export_plan.json", "");
  LoomRun a = run_loom("predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --tp 8 --pp 16 "
                       "--zero 1 --schedule interleaved --vpp 2 --recompute selective --sp --grad-dtype fp32 -o " + path);
  REQUIRE(a.code == 0);
  LoomRun m = run_loom("export " + path + " --to megatron");
  REQUIRE(m.code == 0);
  CHECK(parse_args(m.out).at("--tensor-model-parallel-size") == "8");
  CHECK(m.err.empty());
  LoomRun d = run_loom("export " + path + " --to deepspeed");
  REQUIRE(d.code == 0);
  CHECK(nlohmann::json::parse(d.out)["gradient_accumulation_steps"] == 192);
  CHECK(d.err.rfind("loom: deepspeed cannot express: ", 0) == 0);
  LoomRun bad = run_loom("export " + path + " --to jax");
  CHECK(bad.code == 2);
  CHECK(std::count(bad.err.begin(), bad.err.end(), '\n') == 1);
  LoomRun missing = run_loom("export /nonexistent/plan.json --to megatron");
  CHECK(missing.code == 2);
  CHECK(std::count(missing.err.begin(), missing.err.end(), '\n') == 1);
}

namespace {

// The configuration a plan.json describes, without the names and the published counts that a
// Megatron launch does not carry.
nlohmann::json configuration(const std::string& plan_path) {
  auto j = nlohmann::json::parse(slurp(plan_path));
  for (auto* k : {"name", "source", "published_params", "published_params_precision"}) j["model"].erase(k);
  return {{"model", j["model"]}, {"train", j["train"]}, {"parallel", j["parallel"]},
          {"step_time_s", j["prediction"]["step_time_s"]}};
}

void round_trip(const std::string& predict_args, const std::string& cluster_gpus, const std::string& name) {
  const auto plan = temp_file(name + "_plan.json", ""), script = temp_file(name + "_launch.sh", ""),
             back = temp_file(name + "_imported.json", "");
  REQUIRE(run_loom("predict " + predict_args + " -o " + plan).code == 0);
  LoomRun e = run_loom("export " + plan + " --to megatron -o " + script);
  REQUIRE(e.code == 0);
  LoomRun i = run_loom("import megatron " + script + " " + cluster_gpus + " -o " + back);
  INFO(i.err);
  REQUIRE(i.code == 0);
  CHECK(i.err.empty());  // every flag the exporter writes is read back
  CHECK(configuration(back) == configuration(plan));
}

}  // namespace

TEST_CASE("import megatron reads back what export megatron wrote: GPT-3 and Llama 3") {
  round_trip("--model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --tp 8 --pp 16 --zero 1 "
             "--schedule interleaved --vpp 2 --recompute selective --sp --grad-dtype fp32",
             "--cluster dgx-a100 --gpus 1024", "gpt3");
  round_trip("--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 2048 --tp 4 --pp 2 --zero 1 "
             "--recompute full --order tp-pp-dp",
             "--cluster dgx-h100 --gpus 16", "llama3");
  round_trip("--model " + std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/qwen2_7b_config.json --seq 4096 "
             "--cluster dgx-h100 --gpus 8 --global-batch 8 --tp 4 --pp 1 --zero 1",
             "--cluster dgx-h100 --gpus 8", "qwen2");
}

TEST_CASE("import megatron: unknown flags are listed once each; unpriced ones refuse the file") {
  const std::string base = "--num-layers 4 --hidden-size 256 --num-attention-heads 8 --seq-length 128 "
                           "--max-position-embeddings 128 --vocab-size 1000 --global-batch-size 8 --bf16 ";
  LoomRun ok = run_loom("import megatron " + temp_file("m_ok.txt", base + "--lr 3e-4 --train-iters 10") +
                        " --cluster dgx-a100 --gpus 8 --json");
  REQUIRE(ok.code == 0);
  CHECK(ok.err.find("--lr 3e-4: ignored") != std::string::npos);
  CHECK(ok.err.find("--train-iters 10: ignored") != std::string::npos);
  CHECK(std::count(ok.err.begin(), ok.err.end(), '\n') == 2);
  LoomRun moe = run_loom("import megatron " + temp_file("m_moe.txt", base + "--num-experts 8") +
                         " --cluster dgx-a100 --gpus 8");
  CHECK(moe.code == 2);
  // A GPT-family (GeLU) model with experts: loom's experts are SwiGLU FFNs (sim/moe.hpp).
  CHECK(moe.err.find("experts: mixture-of-experts layers are modelled for the llama family") != std::string::npos);
  LoomRun mix = run_loom("import megatron " + temp_file("m_mix.txt", base + "--swiglu") + " --cluster dgx-a100 --gpus 8");
  CHECK(mix.code == 2);
  CHECK(std::count(mix.err.begin(), mix.err.end(), '\n') == 1);
}
