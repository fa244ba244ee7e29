#include "planner/cli/inputs.hpp"

#include <fmt/core.h>

#include "planner/cli/flags.hpp"
#include "sim/cost_model.hpp"
#include "sim/fp8.hpp"
#include "sim/json_reader.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

void add_job_options(CLI::App& cmd, JobOptions& o) {
  cmd.add_option("--model", o.model, "zoo name (gpt3-175b, llama3-8b, ...) or path to a model or HF config.json");
  cmd.add_option("--cluster", o.cluster, "zoo name (dgx-a100, dgx-h100, hgx-h200, h100-sxm, h200-sxm) or path");
  cmd.add_option("--gpus", o.gpus, "GPUs in use (nodes = N / GPUs per node)")->transform(Integer(1, limits::kGpus));
  cmd.add_option("--global-batch", o.global_batch, "sequences per optimizer step")
      ->transform(Integer(1, limits::kGlobalBatch));
  cmd.add_option("--seq", o.seq, "tokens per sequence (default: the model's seq_len)")->transform(Integer(1, limits::kSeq));
  cmd.add_option("--dtype", o.dtype, "compute and weight dtype (fp8: FP8 GEMMs in the linear layers, bf16 elsewhere, "
                                    "as Transformer Engine runs them)")
      ->check(CLI::IsMember({"bf16", "fp32", "fp8"}));
  cmd.add_option("--fp8-recipe", o.fp8_recipe,
                 "with --dtype fp8, how each FP8 tensor is scaled: delayed (from an amax history, Transformer Engine's "
                 "DelayedScaling, Megatron-LM's default) or tensorwise (from the tensor's own amax, read in a pass "
                 "before the cast: TE's current scaling, Megatron-Bridge's FP8-CS, torchtitan's Float8) (default "
                 "delayed)")
      ->check(CLI::IsMember({"delayed", "tensorwise"}));
  cmd.add_option("--fp8-param-gather", o.fp8_param_gather,
                 "with --dtype fp8, the FP8 GEMMs' weights stored in FP8: 1 byte each instead of bf16's 2 and no FP8 "
                 "copy beside them, gathered in FP8 by ZeRO (Megatron-LM's --fp8-param-gather) (default off)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--grad-dtype", o.grad_dtype, "gradient dtype (bf16: ZeRO/DeepSpeed; fp32: Megatron's default)")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd.add_option("--attention", o.attention, "fused (FlashAttention-style) or unfused (stores softmax)")
      ->check(CLI::IsMember({"fused", "unfused"}));
  cmd.add_option("--cross-entropy", o.cross_entropy,
                 "unfused (fp32 softmax kept for backward, Megatron) or fused (gradient written over the logits, llm.c)")
      ->check(CLI::IsMember({"unfused", "fused"}));
  cmd.add_option("--grad-accumulation", o.grad_accumulation,
                 "how micro-batches add up their gradients: fused (into the buffer by the weight-gradient GEMM, "
                 "Megatron-LM's default) or separate (an add kernel per micro-batch: torchtitan, DeepSpeed, "
                 "Megatron-LM's --no-gradient-accumulation-fusion)")
      ->check(CLI::IsMember({"fused", "separate"}));
  cmd.add_option("--tp-backward-overlap", o.tp_backward_overlap,
                 "tensor-parallel backward: the column-parallel layers' collectives beside their gradient GEMMs (on, "
                 "Megatron-LM's) or in-line (off, torchtitan's and DeepSpeed's tensor parallelism) (default on)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--pp-scatter-gather", o.pp_scatter_gather,
                 "pipeline transfers with tp > 1 and no SP: each tp rank sends 1/tp of the tensor and the receiver "
                 "all-gathers it over its tp group (on, Megatron-LM 2021's scatter/gather) or every rank sends it whole "
                 "(off, Megatron-core's) (default off)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--dp-bucket-bytes", o.dp_bucket_bytes,
                 "gradient bucket for DP overlap (default Megatron-core's: max(40e6, 1e6 x dp) elements of the "
                 "gradient dtype)")
      ->transform(Integer(1, limits::kBytes));
  cmd.add_option("--moe-capacity-factor", o.moe_capacity_factor,
                 "MoE: each expert's capacity as a multiple of its mean token load; expert GEMMs and all-to-alls "
                 "are priced padded to it (default 1.25, the Switch Transformer's)")
      ->transform(Number(0, 1e6, Bound::exclusive));
  cmd.add_flag("--json", o.json, "print JSON instead of tables");
}

namespace {
// An on|off option whose bare form means on.
void add_on_off(CLI::App& cmd, const std::string& name, std::string& value, const std::string& help) {
  cmd.add_option(name, value, help)
      ->expected(0, 1)
      ->default_str("on")
      ->option_text("[on|off]")
      ->check(CLI::IsMember({"on", "off"}));
}

// Context parallelism's size and how it moves K and V (sim/context_parallel.hpp).
template <class Text>
void add_cp_options(CLI::App& cmd, ParallelFlags& o, const Text& text) {
  cmd.add_option("--cp", o.cp, text("the context-parallel size: each sequence split over cp ranks, attention over K "
                                    "and V blocks passed round them (Megatron's --context-parallel-size; 2 x cp divides seq)",
                                    "default 1"))
      ->transform(Integer(1, limits::kGpus));
  cmd.add_option("--cp-comm-type", o.cp_comm_type,
                 text("with cp > 1, how K and V move: p2p (a ring of blocks, each passed on beside the attention of "
                      "the one before) or all_gather (every block gathered before the attention, the K and V "
                      "gradients reduce-scattered after it, none overlapped); Megatron's --cp-comm-type",
                      "default p2p"))
      ->check(CLI::IsMember(cp_comm_names()));
}

// --recompute and its choices of layers.
template <class Text>
void add_recompute_options(CLI::App& cmd, ParallelFlags& o, const Text& text) {
  cmd.add_option("--recompute", o.recompute,
                 text("activation recompute: none; selective (Megatron's: the attention core's scores rebuilt in "
                      "backward); full (each layer keeps its input only); op (torchtitan's per-op selective "
                      "checkpointing of its Llama block: the outputs of wq, wv, w1, w2, attention and the reduce-"
                      "scatters kept, wk, wo, w3, the norms, RoPE and SwiGLU rerun; `plan` tries it only when pinned)",
                      "default none"))
      ->check(CLI::IsMember(recompute_names()));
  cmd.add_option("--recompute-layers", o.recompute_layers,
                 text("with --recompute full: recompute only the first N layers of each model chunk, the others keeping "
                      "their activations (Megatron-LM's --recompute-method block --recompute-num-layers N)",
                      "default every layer"))
      ->transform(Integer(1, limits::kLayers));
  cmd.add_option("--recompute-every", o.recompute_every,
                 text("with --recompute full: recompute only every K-th layer of each model chunk (its layers K, 2K, ...), "
                      "the others keeping their activations (torchtitan's activation_checkpoint.selective_ac_option = "
                      "\"K\")",
                      "default every layer"))
      ->transform(Integer(1, limits::kLayers));
}
}  // namespace

void add_parallel_options(CLI::App& cmd, ParallelFlags& o, FlagUse use) {
  const bool pin = use == FlagUse::pin;
  // predict: the value and its default; plan: a pin, and an unset flag is searched.
  auto text = [pin](const std::string& what, const std::string& predict_default) {
    return pin ? "pin " + what : what + " (" + predict_default + ")";
  };
  cmd.add_option("--tp", o.tp, text("the tensor-parallel size", "required unless --plan"))->transform(Integer(1, limits::kGpus));
  cmd.add_option("--pp", o.pp, text("the pipeline-parallel size", "required unless --plan"))->transform(Integer(1, limits::kGpus));
  cmd.add_option("--ep", o.ep, text("the expert-parallel size (MoE models; divides the experts and, with --etp, tp x dp)",
                                    "default 1"))
      ->transform(Integer(1, limits::kGpus));
  cmd.add_option("--etp", o.etp, text("the expert tensor-parallel size (MoE models; <= tp)", "default 1"))
      ->transform(Integer(1, limits::kGpus));
  add_cp_options(cmd, o, text);
  cmd.add_option("--dp", o.dp, text("the data-parallel size", "default gpus / (tp x pp x cp)"))->transform(Integer(1, limits::kGpus));
  cmd.add_option("--zero", o.zero, text("the ZeRO stage 0-3 (3 = FSDP full shard)", "default 0"))
      // decimal, an int (the stage rule, 0-3, is checked later with its own message)
      ->transform(Integer(INT32_MIN, INT32_MAX).description(""));
  cmd.add_option("--micro-batch", o.micro_batch, text("the sequences per micro-batch", "default 1"))
      ->transform(Integer(1, limits::kGlobalBatch));
  add_recompute_options(cmd, o, text);
  add_on_off(cmd, "--sp", o.sp, text("sequence parallelism, on or off (a bare --sp means on; needs tp > 1)", "default off"));
  add_on_off(cmd, "--tp-comm-overlap", o.tp_comm_overlap,
             text("tensor-parallel communication overlapped with the GEMMs beside it, on or off (Megatron-LM's "
                  "--tp-comm-overlap, torchtitan's async TP; needs --sp and tp > 1; a bare flag means on)",
                  "default off"));
  add_on_off(cmd, "--overlap-param-gather", o.overlap_param_gather,
             text("ZeRO 1/2: the updated weights' all-gather under the next step's first forward, on or off "
                  "(Megatron-LM's --overlap-param-gather; needs --zero 1 or 2 and dp > 1; a bare flag means on; "
                  "`plan` turns it on wherever it applies unless pinned)",
                  "default off"));
  add_on_off(cmd, "--overlap-grad-reduce", o.overlap_grad_reduce,
             text("ZeRO 0-2: the gradient reduction bucket by bucket beside the backward (on: Megatron-LM's "
                  "--overlap-grad-reduce, DeepSpeed's overlap_comm, PyTorch DDP and FSDP) or after it, in full "
                  "(off: Megatron-LM's and DeepSpeed's default); off needs --zero 0-2; a bare flag means on",
                  "default on"));
  add_on_off(cmd, "--pp-comm-overlap", o.pp_comm_overlap,
             text("pipeline sends on their own stream, overlapped with the next chunk's compute, on or off (off: "
                  "each send blocks its sender, as Megatron-LM's non-interleaved 1F1B and --no-overlap-p2p-"
                  "communication run; a bare flag means on)",
                  "default on"));
  cmd.add_option("--schedule", o.schedule, text("the pipeline schedule", "default 1f1b"))
      ->check(CLI::IsMember(schedule_names()));
  cmd.add_option("--vpp", o.vpp,
                 text("the virtual stages per rank (> 1: the interleaved schedule)", "default 1"))
      ->transform(Integer(1, limits::kLayers));
  cmd.add_option("--stage-layers", o.stage_layers,
                 pin ? "pin the layers of each pipeline stage, first to last, e.g. 7,8,8,7 (sets pp; default: the even "
                       "split and splits with lighter first and last stages are searched)"
                     : "the layers of each pipeline stage, first to last, e.g. 7,8,8,7: pp entries summing to the "
                       "layers, each a multiple of vpp but the first and last, whose model-end chunk may hold fewer "
                       "(default layers / pp each)");
  cmd.add_option("--offload", o.offload,
                 pin ? "offload choices to search: none, optimizer, optimizer+params, activations, a comma-separated "
                       "list of them, or any (default none)"
                     : "state kept in host memory: none, optimizer (ZeRO-Offload), optimizer+params (ZeRO-3 only) or "
                       "activations (instead of recompute) (default none)");
  cmd.add_option("--order", o.order,
                 pin ? "pin the rank order, innermost first (default: every order that changes the links)"
                     : "rank order, innermost first, Megatron-core style (default tp-dp-pp)");
  cmd.add_option("--memory-headroom", o.memory_headroom,
                 "fraction of GPU memory kept free when judging fit (default: the cluster file's "
                 "runtime_memory.memory_headroom, 0.05 for the zoo clusters: room for what the model does not "
                 "count, such as lazily created NCCL buffers, cuBLAS algorithm workspaces and allocator growth, "
                 "so a plan that fits on paper does not run out of memory at its first step)")
      ->transform(Number(0, 1));
}

Status apply_stage_layers(Plan& plan, const std::string& text) {
  if (text.empty()) return ok_status();
  auto v = parse_stage_layers(text, "--stage-layers");
  if (!v) return v.error();
  plan.parallel.stage_layers = *v;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) {
    return f == "stage_layers" ? std::string("--stage-layers") : "--stage-layers: the plan's " + f;
  });
  if (!st) return st;
  CostModel cm(plan.model, plan.cluster, plan.train);
  plan.prediction = cm.evaluate(plan.parallel);
  return ok_status();
}

Status apply_memory_headroom(ClusterSpec& cluster, const std::optional<double>& headroom) {
  if (!headroom) return ok_status();
  if (!(*headroom >= 0 && *headroom < 1))  // NaN fails both comparisons
    return make_error("--memory-headroom", fmt::format("must be a fraction in [0, 1) (got {})", *headroom));
  cluster.runtime_memory.memory_headroom = *headroom;
  return ok_status();
}

Expected<Plan> plan_from_document(const nlohmann::json& doc, const std::string& path) {
  auto plan = plan_from_json(doc, path);
  if (!plan) return plan.error();
  CostModel cm(plan->model, plan->cluster, plan->train);
  plan->prediction = cm.evaluate(plan->parallel);
  return plan;
}

Expected<Plan> load_plan(const std::string& path) {
  auto doc = read_json_file(path);
  if (!doc) return doc.error();
  return plan_from_document(*doc, path);
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
  // A Hugging Face config's max_position_embeddings is a limit, not a training length.
  if (!o.seq && m->seq_len_is_limit)
    return make_error("--seq", "is required for a Hugging Face config (max_position_embeddings " +
                                   std::to_string(m->seq_len) + " is a limit, not a training length)");
  if (o.seq && m->sliding_window > 0 && *o.seq > m->sliding_window)
    return make_error("--seq", "must be <= the model's sliding_window " + std::to_string(m->sliding_window) +
                                   ": sliding-window attention is not modelled yet (got " + std::to_string(*o.seq) + ")");
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
  set_train_dtype(job.train, o.dtype);  // "fp8": dtype bf16 with FP8 GEMMs (sim/fp8.hpp)
  if (auto st = check_fp8(job.cluster, job.train, "--dtype"); !st) return st.error();
  if (o.fp8_recipe) {
    if (!job.train.fp8) return make_error("--fp8-recipe", "only with --dtype fp8 (got --dtype " + o.dtype + ")");
    job.train.fp8_recipe = *o.fp8_recipe == "tensorwise" ? Fp8Recipe::tensorwise : Fp8Recipe::delayed;
  }
  if (o.fp8_param_gather) {
    if (!job.train.fp8) return make_error("--fp8-param-gather", "only with --dtype fp8 (got --dtype " + o.dtype + ")");
    job.train.fp8_param_gather = *o.fp8_param_gather == "on";
  }
  job.train.grad_dtype = parse_dtype(o.grad_dtype);
  job.train.attention = o.attention == "unfused" ? Attention::unfused : Attention::fused;
  job.train.cross_entropy = o.cross_entropy == "fused" ? CrossEntropy::fused : CrossEntropy::unfused;
  job.train.grad_accumulation = o.grad_accumulation == "separate" ? GradAccumulation::separate : GradAccumulation::fused;
  job.train.tp_backward_overlap = o.tp_backward_overlap == "on";
  job.train.pp_scatter_gather = o.pp_scatter_gather == "on";
  job.train.dp_bucket_bytes = o.dp_bucket_bytes.value_or(0);  // 0: Megatron-core's default for each dp
  if (o.dp_bucket_bytes && *o.dp_bucket_bytes < 1) return make_error("--dp-bucket-bytes", "must be >= 1");
  if (o.moe_capacity_factor) job.train.moe_capacity_factor = *o.moe_capacity_factor;
  // Tokens, activations and FLOPs of a step must be representable before anything (the
  // planner's search included) multiplies them: one line naming the flag.
  auto sizes = check_train_sizes(job.model, job.train, [](const std::string& f) {
    return f == "seq" ? std::string("--seq") : f == "global_batch" ? "--global-batch" : "--dp-bucket-bytes";
  });
  if (!sizes) return sizes.error();
  return job;
}

}  // namespace loom::cli
