#include "planner/cli/inputs.hpp"

#include <fmt/core.h>

#include "sim/spec_json.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

void add_job_options(CLI::App& cmd, JobOptions& o) {
  cmd.add_option("--model", o.model, "zoo name (gpt3-175b, llama3-8b, ...) or path to a model or HF config.json");
  cmd.add_option("--cluster", o.cluster, "zoo name (dgx-a100, dgx-h100, h100-sxm) or path");
  cmd.add_option("--gpus", o.gpus, "GPUs in use (nodes = N / GPUs per node)");
  cmd.add_option("--global-batch", o.global_batch, "sequences per optimizer step");
  cmd.add_option("--seq", o.seq, "tokens per sequence (default: the model's seq_len)");
  cmd.add_option("--dtype", o.dtype, "compute and weight dtype")->check(CLI::IsMember({"bf16", "fp32"}));
  cmd.add_option("--grad-dtype", o.grad_dtype, "gradient dtype (bf16: ZeRO/DeepSpeed; fp32: Megatron's default)")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd.add_option("--attention", o.attention, "fused (FlashAttention-style) or unfused (stores softmax)")
      ->check(CLI::IsMember({"fused", "unfused"}));
  cmd.add_option("--cross-entropy", o.cross_entropy,
                 "unfused (fp32 softmax kept for backward, Megatron) or fused (gradient written over the logits, llm.c)")
      ->check(CLI::IsMember({"unfused", "fused"}));
  cmd.add_option("--dp-bucket-bytes", o.dp_bucket_bytes,
                 "gradient bucket for DP overlap (default 40e6 elements of grad dtype, Megatron-core's)");
  cmd.add_flag("--json", o.json, "print JSON instead of tables");
}

int fail(const Error& e) {
  fmt::print(stderr, "loom: {}\n", e.message);
  return 2;
}

namespace {
Dtype parse_dtype(const std::string& s) { return s == "fp32" ? Dtype::fp32 : Dtype::bf16; }
}  // namespace

Expected<Job> load_job(const JobOptions& o) {
  if (o.model.empty()) return make_error("--model", "is required");
  if (o.cluster.empty()) return make_error("--cluster", "is required");
  if (!o.gpus) return make_error("--gpus", "is required");
  if (!o.global_batch) return make_error("--global-batch", "is required");
  Job job;
  std::vector<std::string> ignored;
  auto m = load_model(o.model, "--model", &ignored);
  if (!m) return m.error();
  if (!ignored.empty()) {
    std::string list;
    for (auto& k : ignored) list += (list.empty() ? "" : ", ") + k;
    fmt::print(stderr, "loom: {}: keys not used by loom: {}\n", o.model, list);
  }
  job.model = *m;
  auto c = load_cluster(o.cluster, "--cluster");
  if (!c) return c.error();
  job.cluster = *c;
  auto st = size_cluster(job.cluster, *o.gpus, "--gpus");
  if (!st) return st.error();
  if (*o.global_batch < 1) return make_error("--global-batch", "must be >= 1");
  job.train.global_batch = *o.global_batch;
  job.train.seq = o.seq.value_or(job.model.seq_len);
  if (job.train.seq < 1) return make_error("--seq", "must be >= 1");
  job.train.dtype = parse_dtype(o.dtype);
  job.train.grad_dtype = parse_dtype(o.grad_dtype);
  job.train.attention = o.attention == "unfused" ? Attention::unfused : Attention::fused;
  job.train.cross_entropy = o.cross_entropy == "fused" ? CrossEntropy::fused : CrossEntropy::unfused;
  job.train.dp_bucket_bytes = o.dp_bucket_bytes.value_or(40'000'000 * dtype_bytes(job.train.grad_dtype));
  if (job.train.dp_bucket_bytes < 1) return make_error("--dp-bucket-bytes", "must be >= 1");
  return job;
}

}  // namespace loom::cli
