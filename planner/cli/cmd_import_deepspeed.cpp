// loom import deepspeed ds_config.json --model M --cluster C --gpus N [--seq S] [--tp T] [--pp P]
// [--recompute R]: a DeepSpeed JSON config as a loom plan. Keys, defaults and rules are
// DeepSpeed's at deepspeedai/DeepSpeed edaa7221267243c7be7fb49c5d5f5c4fb97b4641 (0.19.6, the
// commit `loom export --to deepspeed` names): deepspeed/runtime/config.py (batch sizes, the
// pipeline section), zero/config.py (ZeRO options; unknown ones are refused there, and here),
// engine.py (dtypes, buckets), pipe/engine.py. A DeepSpeed config does not describe the model,
// nor the tensor and pipeline sizes the model code builds: --model, --tp and --pp say them.
#include <fmt/core.h>

#include <algorithm>
#include <set>

#include "planner/cli/cmd_import.hpp"
#include "planner/cli/offload_cli.hpp"
#include "sim/json_reader.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

namespace {

// DeepSpeedZeroConfig's fields and aliases (zero/config.py).
const std::set<std::string>& zero_keys() {
  static const std::set<std::string> keys{
      "stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
      "allgather_partitions", "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint",
      "offload_param", "offload_optimizer", "zenflow", "sub_group_size", "cpu_offload_param",
      "cpu_offload_use_pin_memory", "cpu_offload", "prefetch_bucket_size", "stage3_prefetch_bucket_size",
      "param_persistence_threshold", "stage3_param_persistence_threshold", "model_persistence_threshold",
      "stage3_model_persistence_threshold", "max_live_parameters", "stage3_max_live_parameters", "max_reuse_distance",
      "stage3_max_reuse_distance", "gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save",
      "module_granularity_threshold", "stage3_module_granularity_threshold", "use_all_reduce_for_fetch_params",
      "stage3_use_all_reduce_for_fetch_params", "allgather_sequential", "stage3_allgather_sequential",
      "stage3_gather_fp16_weights_on_model_save", "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients",
      "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
      "zero_quantized_gradients", "zeropp_loco_param", "mics_shard_size", "mics_hierarchical_params_gather",
      "memory_efficient_linear", "pipeline_loading_checkpoint", "override_module_apply", "log_trace_cache_warnings",
      "enable_sanity_checks", "save_muon_momentum_buffer_in_memory", "leaf_module"};
  return keys;
}

using Ignored = std::vector<std::pair<std::string, std::string>>;

// Keys of `j` the reader did not read, as "prefix.key" -> value, for the ignored list.
void collect_unread(const ObjectReader& r, const nlohmann::json& j, const std::string& prefix, Ignored& out) {
  for (const auto& key : r.unread_keys()) out.emplace_back(prefix + key, j.at(key).dump());
}

// engine.py: the dtype names of data_types.grad_accum_dtype and communication_data_type.
const std::vector<std::string> kDtypeNames{"fp32", "bf16", "fp16"};

// "enabled": true in one of the precision sections.
bool section_enabled(ObjectReader& r, const std::string& key, Ignored& ig) {
  const nlohmann::json* s = r.opt_object(key);
  if (!s) return false;
  ObjectReader sr(r, key, *s);
  bool on = false;
  sr.opt_boolean("enabled", on);
  collect_unread(sr, *s, key + ".", ig);
  return on;
}

// Precision: bf16 or fp32 weights (fp16 loss scaling and amp are not modelled), and one
// gradient dtype, for accumulation and reduction alike.
Status ds_precision(ObjectReader& r, int zero, TrainSpec& t, Ignored& ig) {
  const bool bf16 = section_enabled(r, "bf16", ig) || section_enabled(r, "bfloat16", ig);
  for (const char* key : {"fp16", "amp", "torch_autocast"})
    if (section_enabled(r, key, ig))
      return make_error(r.where() + ": /" + key + "/enabled", std::string(key) + " is not modelled (bf16 or fp32 only)");
  if (r.failed()) return *r.error();
  t.dtype = bf16 ? Dtype::bf16 : Dtype::fp32;
  int accum = -1, comm = -1;
  if (const nlohmann::json* d = r.opt_object("data_types")) {
    ObjectReader dr(r, "data_types", *d);
    dr.opt_choice("grad_accum_dtype", kDtypeNames, accum);
    collect_unread(dr, *d, "data_types.", ig);
  }
  r.opt_choice("communication_data_type", kDtypeNames, comm);
  if (r.failed()) return *r.error();
  if (accum == 2 || comm == 2) return make_error(r.where() + ": " + (accum == 2 ? "data_types.grad_accum_dtype" : "communication_data_type"),
                                                 "fp16 gradients are not modelled (got \"fp16\")");
  const Dtype accum_dtype = accum < 0 ? t.dtype : accum == 1 ? Dtype::bf16 : Dtype::fp32;  // default: the model's dtype
  if (comm >= 0 && accum >= 0 && comm != accum)
    return make_error(r.where() + ": communication_data_type",
                      "loom prices one gradient dtype for accumulation and reduction (grad_accum_dtype \"" +
                          kDtypeNames[accum] + "\", got \"" + kDtypeNames[comm] + "\")");
  // engine.py: without ZeRO, accumulation must be in the model's dtype ("unsupported mix").
  if (zero == 0 && accum_dtype != t.dtype)
    return make_error(r.where() + ": data_types.grad_accum_dtype",
                      "DeepSpeed without ZeRO accumulates gradients in the model's dtype (" + to_string(t.dtype) + ")");
  t.grad_dtype = comm >= 0 ? (comm == 1 ? Dtype::bf16 : Dtype::fp32) : accum_dtype;
  return ok_status();
}

// zero_optimization: the stage, the reduce bucket, overlap_comm, no offload; other ZeRO options
// are listed. overlap_comm (zero/config.py, default on for stage 3 only) reduces each bucket on
// a stream of its own beside the backward; off, stage_1_and_2.py reduces on the compute stream.
// Without ZeRO engine.py all-reduces after the backward (allreduce_gradients).
Status ds_zero(ObjectReader& r, ParallelConfig& p, int64_t& bucket_elems, Ignored& ig) {
  p.overlap_grad_reduce = false;  // stage 0
  const nlohmann::json* z = r.opt_object("zero_optimization");
  if (!z) return r.failed() ? Status(*r.error()) : ok_status();
  ObjectReader zr(r, "zero_optimization", *z);
  int64_t stage = 0;
  zr.opt_integer("stage", stage, 0, 3);
  zr.opt_integer("reduce_bucket_size", bucket_elems, 1, limits::kBytes);
  bool overlap = stage == 3;
  zr.opt_boolean("overlap_comm", overlap);
  if (zr.failed()) return *zr.error();
  if (stage == 3 && !overlap)
    return make_error(r.where() + ": zero_optimization.overlap_comm",
                      "stage 3 with its reduce-scatters on the compute stream is not modelled (got false)");
  p.overlap_grad_reduce = stage >= 1 && overlap;
  for (const char* key : {"offload_optimizer", "offload_param"}) {
    if (z->contains(key) && z->at(key).is_null()) {  // Optional in zero/config.py: null is no offload
      zr.skip(key);
      continue;
    }
    const nlohmann::json* off = zr.opt_object(key);
    if (!off) continue;
    ObjectReader orr(zr, key, *off);
    std::string device = "none";
    orr.opt_string("device", device);
    if (device != "none" && device != "cpu" && !zr.failed())
      return make_error(r.where() + ": zero_optimization." + key, "only cpu offload is modelled (got device \"" + device + "\")");
  }
  for (const char* key : {"cpu_offload", "cpu_offload_param"}) {
    bool on = false;
    zr.opt_boolean(key, on);
    if (on) return make_error(r.where() + ": zero_optimization." + key, "offload is not modelled (got true)");
  }
  if (zr.failed()) return *zr.error();
  for (const auto& key : zr.unread_keys()) {
    if (!zero_keys().count(key))
      return make_error(r.where() + ": zero_optimization." + key, "not a DeepSpeed ZeRO option (DeepSpeed refuses it)");
    ig.emplace_back("zero_optimization." + key, z->at(key).dump());
  }
  p.zero = static_cast<int>(stage);
  return ok_status();
}

// config.py _set_batch_related_parameters and _batch_assertion, with the DP size as the world
// size (DeepSpeed counts the DP group when the model code gives it an mpu or a PipelineModule).
Status ds_batch(ObjectReader& r, int64_t dp, ParallelConfig& p, TrainSpec& t) {
  int64_t train = 0, micro = 0, accum = 0;  // 0: absent
  r.opt_integer("train_batch_size", train, 1, limits::kGlobalBatch);
  r.opt_integer("train_micro_batch_size_per_gpu", micro, 1, limits::kGlobalBatch);
  r.opt_integer("gradient_accumulation_steps", accum, 1, limits::kGlobalBatch);
  if (r.failed()) return *r.error();
  const bool accum_given = accum > 0, micro_given = micro > 0;
  if (train == 0 && micro == 0)
    return make_error(r.where() + ": train_batch_size", "either train_batch_size or train_micro_batch_size_per_gpu is required");
  // Products in 128 bits: each factor is below 2^40, so micro x accum x dp cannot wrap there.
  if (train > 0 && micro > 0 && accum == 0) accum = train / micro / dp;
  else if (train > 0 && accum > 0 && micro == 0) micro = train / dp / accum;
  else if (micro == 0) micro = train / dp, accum = 1;
  if (accum == 0) accum = 1;
  const __int128 product = static_cast<__int128>(micro) * accum * dp;
  if (train == 0 && product <= limits::kGlobalBatch) train = static_cast<int64_t>(product);
  if (micro < 1 || train < 1 || product != train)
    return make_error(r.where() + ": train_batch_size",
                      fmt::format("must equal train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp ({} x {} x {}{})"
                                  " (got {})", micro, accum, dp,
                                  micro_given && accum_given ? ""
                                  : micro_given ? "; the steps derived as DeepSpeed does, train / micro / dp, rounded down"
                                  : accum_given ? "; the micro-batch derived as DeepSpeed does, train / dp / steps, rounded down"
                                                : "; the micro-batch derived as DeepSpeed does, train / dp, rounded down, with 1 step",
                                  train));
  t.global_batch = train;
  p.micro_batch = micro;
  // DeepSpeed adds each accumulation step's gradients in a pass of their own (autograd, or
  // ZeRO's own buffers): GradAccumulation::separate when there is more than one.
  if (accum > 1) t.grad_accumulation = GradAccumulation::separate;
  return ok_status();
}

// AutoTP (deepspeed/module_inject): its backward's all-reduces run in-line.
void ds_tp_backward(const ParallelConfig& p, TrainSpec& t) {
  if (p.tp > 1) t.tp_backward_overlap = false;
}

// Tensor and pipeline sizes: --tp/--pp, or tensor_parallel.autotp_size and pipeline.stages;
// recompute: pipeline.activation_checkpoint_interval with pp, else --recompute.
Status ds_parallel(ObjectReader& r, const ImportOptions& o, ParallelConfig& p, Ignored& ig) {
  int64_t autotp = 0, stages = 0, interval = -1;
  if (const nlohmann::json* tp = r.opt_object("tensor_parallel")) {
    ObjectReader tr(r, "tensor_parallel", *tp);
    tr.opt_integer("autotp_size", autotp, 1, limits::kGpus);
    collect_unread(tr, *tp, "tensor_parallel.", ig);
  }
  const nlohmann::json* pipe = r.opt_object("pipeline");
  if (pipe) {
    ObjectReader pr(r, "pipeline", *pipe);
    if (pipe->contains("stages") && !(pipe->at("stages").is_string() && pipe->at("stages") == "auto"))
      pr.opt_integer("stages", stages, 1, limits::kGpus);
    else
      pr.skip("stages");
    pr.opt_integer("activation_checkpoint_interval", interval, 0, limits::kLayers);
    collect_unread(pr, *pipe, "pipeline.", ig);
  }
  if (r.failed()) return *r.error();
  if (o.tp && autotp > 0 && *o.tp != autotp)
    return make_error("--tp", fmt::format("the config's tensor_parallel.autotp_size is {} (got {})", autotp, *o.tp));
  if (o.pp && stages > 0 && *o.pp != stages)
    return make_error("--pp", fmt::format("the config's pipeline.stages is {} (got {})", stages, *o.pp));
  p.tp = o.tp.value_or(autotp > 0 ? autotp : 1);
  p.pp = o.pp.value_or(stages > 0 ? stages : 1);
  if (pipe && p.pp == 1 && !o.pp)
    return make_error("--pp", "is required: the config has a pipeline section (give PipelineModule's num_stages)");
  Recompute flag = Recompute::none;
  if (!o.recompute.empty()) flag = static_cast<Recompute>(std::find(recompute_names().begin(), recompute_names().end(), o.recompute) - recompute_names().begin());
  if (p.pp == 1 || interval < 0) {
    p.recompute = flag;
    return ok_status();
  }
  if (interval > 1)
    return make_error(r.where() + ": pipeline.activation_checkpoint_interval",
                      fmt::format("loom prices recompute of every layer (1) or of none (0) (got {})", interval));
  p.recompute = interval == 1 ? Recompute::full : Recompute::none;
  if (!o.recompute.empty() && flag != p.recompute)
    return make_error("--recompute", "the config's pipeline.activation_checkpoint_interval " + std::to_string(interval) +
                                         " says " + to_string(p.recompute) + " (got " + o.recompute + ")");
  return ok_status();
}

Expected<ModelSpec> ds_model(const ImportOptions& o, TrainSpec& t) {
  std::vector<std::string> unused;
  auto m = load_model(o.model, "--model", &unused);
  if (!m) return m.error();
  if (!unused.empty()) {
    std::string list;
    for (const auto& u : unused) list += (list.empty() ? "" : ", ") + u;
    fmt::print(stderr, "loom: {}: keys not used by loom: {}\n", o.model, list);
  }
  if (!o.seq && m->seq_len_is_limit)
    return make_error("--seq", "is required for a Hugging Face config (max_position_embeddings " + std::to_string(m->seq_len) +
                                   " is a limit, not a training length)");
  t.seq = o.seq.value_or(m->seq_len);
  if (m->sliding_window > 0 && t.seq > m->sliding_window)
    return make_error("--seq", fmt::format("must be <= the model's sliding_window {}: sliding-window attention is not modelled "
                                           "yet (got {})", m->sliding_window, t.seq));
  return m;
}

// Keys that change what runs in ways loom does not price.
Status ds_refuse_unpriced(ObjectReader& r) {
  int64_t sp = 1;
  r.opt_integer("sequence_parallel_size", sp, 1, limits::kGpus);
  if (r.failed()) return *r.error();
  if (sp > 1)
    return make_error(r.where() + ": sequence_parallel_size",
                      fmt::format("Ulysses sequence parallelism is not modelled (got {})", sp));
  return ok_status();
}

// Where DeepSpeed reduces after the backward whatever overlap_comm says: the pipeline engine,
// once its last backward is done (pipe/engine.py _exec_reduce_grads), and stage 0
// (engine.py allreduce_gradients); said on stderr where the config asks for the overlap. One
// replica has nothing to reduce: the default stays.
void ds_grad_reduce_rules(const nlohmann::json& doc, const std::string& path, ParallelConfig& p) {
  const nlohmann::json* z = doc.contains("zero_optimization") ? &doc.at("zero_optimization") : nullptr;
  const bool asked = z && z->is_object() && z->contains("overlap_comm") && z->at("overlap_comm") == true;
  if (p.pp > 1 || p.zero == 0) {
    if (asked && p.dp > 1)
      fmt::print(stderr, "loom: {}: zero_optimization.overlap_comm true: {} reduces gradients after the backward ({}); "
                         "priced so\n", path, p.pp > 1 ? "the pipeline engine" : "stage 0",
                 p.pp > 1 ? "pipe/engine.py _exec_reduce_grads" : "engine.py allreduce_gradients");
    p.overlap_grad_reduce = false;
  }
  if (p.dp <= 1) p.overlap_grad_reduce = true;
}

}  // namespace

Expected<Plan> plan_from_deepspeed(const ImportOptions& o) {
  auto doc = read_json_file(o.path);
  if (!doc) return doc.error();
  ObjectReader r(*doc, o.path);
  if (r.failed()) return *r.error();
  Plan plan;
  Ignored ig;
  auto m = ds_model(o, plan.train);
  if (!m) return m.error();
  plan.model = *m;
  auto c = import_cluster(o);
  if (!c) return c.error();
  plan.cluster = *c;
  auto& p = plan.parallel;
  int64_t bucket_elems = 500'000'000;  // zero/config.py reduce_bucket_size; engine.py MEMORY_OPT_ALLREDUCE_SIZE
  Status st = ds_refuse_unpriced(r);
  if (st) st = ds_zero(r, p, bucket_elems, ig);
  if (st) st = offload_from_deepspeed(*doc, o.path, p);
  if (st) st = ds_precision(r, p.zero, plan.train, ig);
  if (st) st = ds_parallel(r, o, p, ig);
  if (!st) return st.error();
  if (*o.gpus % (p.tp * p.pp) != 0)
    return make_error("--gpus", fmt::format("must be a multiple of tp x pp = {} (got {})", p.tp * p.pp, *o.gpus));
  p.dp = *o.gpus / (p.tp * p.pp);
  if (p.pp > 1 && p.zero >= 2)  // pipe/engine.py
    return make_error(o.path + ": zero_optimization.stage",
                      fmt::format("ZeRO-2 and ZeRO-3 are incompatible with DeepSpeed's pipeline engine (pp {}; got {})", p.pp, p.zero));
  ds_grad_reduce_rules(*doc, o.path, p);
  if (st = ds_batch(r, p.dp, p, plan.train); !st) return st.error();
  ds_tp_backward(p, plan.train);
  // Stage 0 reduces in fixed buckets of 5e8 elements; ZeRO 1-3 in reduce_bucket_size ones.
  if (p.zero == 0) bucket_elems = 500'000'000;
  plan.train.dp_bucket_bytes = bucket_elems * dtype_bytes(plan.train.grad_dtype);
  collect_unread(r, *doc, "", ig);
  print_ignored(o.path, ig);
  st = validate_config(plan.model, plan.cluster, plan.train, p, [&](const std::string& f) { return o.path + ": " + f; });
  if (!st) return st.error();
  return plan;
}

}  // namespace loom::cli
