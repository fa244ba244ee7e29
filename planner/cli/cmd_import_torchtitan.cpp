// loom import torchtitan job.toml --cluster C --gpus N [--model M]: a torchtitan job TOML as a
// loom plan. Keys, types and defaults are torchtitan v0.2.2's JobConfig (pytorch/torchtitan
// 73a0e6979dd10b6b1904098eb3c8f62c18ab87ce, torchtitan/config/job_config.py; the parallel
// rules from torchtitan/distributed/parallel_dims.py, pipeline_parallel.py and
// models/llama3/infra/parallelize.py), the release `loom export --to torchtitan` writes for.
// torchtitan refuses unknown sections and keys, and so does this reader; known keys that do not
// change what loom prices are listed as ignored, one line each on stderr.
#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "planner/cli/cmd_import.hpp"
#include "planner/export.hpp"
#include "sim/json_reader.hpp"
#include "sim/stage_split.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

namespace {

// Every JobConfig field of v0.2.2 by table ("quantize.linear.float8" is [quantize.linear.float8]).
const std::map<std::string, std::set<std::string>>& torchtitan_schema() {
  static const std::map<std::string, std::set<std::string>> schema{
      {"job", {"config_file", "dump_folder", "description", "print_config", "save_config_file", "custom_config_module"}},
      {"profiling", {"enable_profiling", "save_traces_folder", "profile_freq", "profiler_active", "profiler_warmup",
                     "enable_memory_snapshot", "save_memory_snapshot_folder"}},
      {"metrics", {"log_freq", "enable_tensorboard", "disable_color_printing", "save_tb_folder", "save_for_all_ranks",
                   "enable_wandb"}},
      {"model", {"name", "flavor", "hf_assets_path", "tokenizer_path", "converters", "print_after_conversion"}},
      {"optimizer", {"name", "lr", "beta1", "beta2", "eps", "weight_decay", "implementation", "early_step_in_backward"}},
      {"lr_scheduler", {"warmup_steps", "total_steps", "decay_ratio", "decay_type", "min_lr_factor"}},
      {"training", {"dataset", "dataset_path", "local_batch_size", "global_batch_size", "seq_len", "max_norm", "steps",
                    "enable_cpu_offload", "dtype", "mixed_precision_param", "mixed_precision_reduce", "gc_freq",
                    "gc_debug"}},
      {"training.dataloader", {"num_workers", "persistent_workers", "pin_memory", "prefetch_factor"}},
      {"parallelism",
       {"data_parallel_replicate_degree", "data_parallel_shard_degree", "fsdp_reshard_after_forward",
        "tensor_parallel_degree", "disable_loss_parallel", "enable_async_tensor_parallel", "pipeline_parallel_degree",
        "module_fqns_per_model_part", "pipeline_parallel_first_stage_less_layers",
        "pipeline_parallel_last_stage_less_layers", "pipeline_parallel_layers_per_stage", "pipeline_parallel_schedule",
        "pipeline_parallel_schedule_csv", "pipeline_parallel_microbatch_size", "pipeline_parallel_expert_parallel_overlap",
        "context_parallel_degree", "context_parallel_load_balancer", "context_parallel_rotate_method",
        "expert_parallel_degree", "expert_tensor_parallel_degree", "expert_parallel_comm_backend"}},
      {"checkpoint", {"enable", "enable_ft_dataloader_checkpoints", "folder", "interval", "initial_load_path",
                      "initial_load_model_only", "initial_load_in_hf", "initial_load_in_hf_quantized",
                      "last_save_model_only", "last_save_in_hf", "export_dtype", "async_mode", "keep_latest_k",
                      "load_step", "exclude_from_loading", "enable_first_step_checkpoint", "create_seed_checkpoint",
                      "load_only"}},
      {"activation_checkpoint", {"mode", "selective_ac_option", "per_op_sac_force_recompute_mm_shapes_by_fqns",
                                 "early_stop", "memory_budget", "visualize_memory_budget_pareto", "preserve_rng_state",
                                 "determinism_check", "debug"}},
      {"compile", {"enable", "components", "backend"}},
      {"quantize", {}},
      {"quantize.linear", {}},
      {"quantize.linear.float8", {"enable_fsdp_float8_all_gather", "precompute_float8_dynamic_scale_for_fsdp",
                                  "recipe_name", "filter_fqns", "emulate"}},
      {"quantize.linear.mx", {"mxfp8_dim1_cast_kernel_choice", "recipe_name", "filter_fqns"}},
      {"quantize.grouped_mm", {}},
      {"quantize.grouped_mm.float8", {"fqns"}},
      {"quantize.grouped_mm.mx", {"recipe_name", "fqns"}},
      {"comm", {"init_timeout_seconds", "train_timeout_seconds", "trace_buf_size", "save_traces_folder",
                "save_traces_file_prefix", "mode"}},
      {"memory_estimation", {"enable", "disable_fake_mode"}},
      {"fault_tolerance", {"enable", "process_group", "process_group_timeout_ms", "replica_id", "group_size",
                           "min_replica_size", "semi_sync_method"}},
      {"experimental", {"custom_import", "custom_args_module"}},
      {"validation", {"enable", "dataset", "dataset_path", "local_batch_size", "seq_len", "freq", "steps"}},
      {"validation.dataloader", {"num_workers", "persistent_workers", "pin_memory", "prefetch_factor"}},
      {"debug", {"seed", "deterministic", "deterministic_warn_only", "moe_force_load_balance"}}};
  return schema;
}

// The file's keys as "table.key" -> value, and the ones read so far.
struct TomlKeys {
  std::string path;
  std::shared_ptr<const toml::table> doc;  // owns the nodes `values` points into
  std::map<std::string, const toml::node*> values;
  std::set<std::string> used;
  std::string at(const toml::node& n) const { return path + ":" + std::to_string(n.source().begin.line); }
  const toml::node* get(const std::string& key) {
    used.insert(key);
    auto it = values.find(key);
    return it == values.end() ? nullptr : it->second;
  }
};

std::string show(const toml::node& n) {
  std::ostringstream s;
  if (auto str = n.as_string()) s << '"' << str->get() << '"';
  else if (auto f = n.as_floating_point()) s << nlohmann::json(f->get()).dump();  // shortest round-trip form
  else n.visit([&](auto&& v) { s << v; });
  return s.str();
}

Status flatten(const toml::table& t, const std::string& table, TomlKeys& k) {
  const auto& schema = torchtitan_schema();
  for (auto&& [key, node] : t) {
    const std::string name = table.empty() ? std::string(key.str()) : table + "." + std::string(key.str());
    if (node.is_table() && schema.count(name)) {
      if (auto st = flatten(*node.as_table(), name, k); !st) return st;
      continue;
    }
    auto sec = schema.find(table);
    if (table.empty() || sec == schema.end() || !sec->second.count(std::string(key.str())))
      return make_error(k.at(node) + ": " + name, node.is_table() ? "not a torchtitan v0.2.2 JobConfig section"
                                                                   : "not a torchtitan v0.2.2 JobConfig key");
    k.values[name] = &node;
  }
  return ok_status();
}

Expected<TomlKeys> read_toml(const std::string& path) {
  auto text = read_text_file(path);
  if (!text) return text.error();
  TomlKeys k;
  k.path = path;
  toml::table t;
  try {
    t = toml::parse(*text, path);
  } catch (const toml::parse_error& e) {
    return make_error(path + ":" + std::to_string(e.source().begin.line), std::string(e.description()));
  }
  k.doc = std::make_shared<const toml::table>(std::move(t));
  if (auto st = flatten(*k.doc, "", k); !st) return st.error();
  return k;
}

// Typed reads; an absent key leaves `out` at torchtitan's default, set by the caller.
Status get_int(TomlKeys& k, const std::string& key, int64_t& out, int64_t min, int64_t max) {
  const toml::node* n = k.get(key);
  if (!n) return ok_status();
  auto v = n->as_integer();
  if (!v || v->get() < min || v->get() > max)
    return make_error(k.at(*n) + ": " + key, fmt::format("must be an integer in [{}, {}] (got {})", min, max, show(*n)));
  out = v->get();
  return ok_status();
}

Status get_str(TomlKeys& k, const std::string& key, std::string& out, const std::vector<std::string>& allowed = {}) {
  const toml::node* n = k.get(key);
  if (!n) return ok_status();
  auto v = n->as_string();
  bool known = v && allowed.empty();
  for (const auto& a : allowed) known = known || (v && v->get() == a);
  if (!known) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "\"" : ", \"") + a + "\"";
    return make_error(k.at(*n) + ": " + key, (allowed.empty() ? "must be a string" : "must be one of " + list) +
                                                 " (got " + show(*n) + ")");
  }
  out = v->get();
  return ok_status();
}

Status get_bool(TomlKeys& k, const std::string& key, bool& out) {
  const toml::node* n = k.get(key);
  if (!n) return ok_status();
  auto v = n->as_boolean();
  if (!v) return make_error(k.at(*n) + ": " + key, "must be true or false (got " + show(*n) + ")");
  out = v->get();
  return ok_status();
}

// A key whose value loom cannot price: refused with the reason.
Error refused(TomlKeys& k, const std::string& key, const std::string& why) {
  const toml::node* n = k.get(key);
  return make_error((n ? k.at(*n) : k.path) + ": " + key, why + (n ? " (got " + show(*n) + ")" : ""));
}

// torchtitan's registered llama3 flavors (torchtitan/models/llama3/__init__.py) that loom's zoo holds.
std::string zoo_of_flavor(const std::string& flavor) {
  if (flavor == "8B") return "llama3-8b";
  if (flavor == "70B") return "llama3-70b";
  if (flavor == "405B") return "llama3-405b";
  return "";
}

Expected<ModelSpec> load_flavor_or_model(TomlKeys& k, const ImportOptions& o, const std::string& flavor) {
  const std::string zoo = zoo_of_flavor(flavor);
  if (o.model.empty() && zoo.empty())
    return refused(k, "model.flavor", "loom knows the llama3 flavors 8B, 70B and 405B; for another, pass --model with its shape");
  std::vector<std::string> unused;
  auto m = load_model(o.model.empty() ? zoo : o.model, "--model", &unused);
  if (!m) return m.error();
  if (!unused.empty()) {
    std::string list;
    for (const auto& u : unused) list += (list.empty() ? "" : ", ") + u;
    fmt::print(stderr, "loom: {}: keys not used by loom: {}\n", o.model, list);
  }
  if (!o.model.empty() && !zoo.empty() && m->name != zoo)
    return make_error("--model", "model.flavor \"" + flavor + "\" is " + zoo + "; drop --model or the flavor (got " + o.model + ")");
  if (!o.model.empty() && zoo.empty() && m->name != flavor)
    fmt::print(stderr, "loom: {}: model.flavor \"{}\": registered in Python, not known to loom; priced with the shape of {}\n",
               k.path, flavor, o.model);
  return m;
}

// Float8 training (sim/fp8.hpp; what planner/export_fp8.hpp writes): model.converters =
// ["quantize.linear.float8"] swaps the linear layers for torchao's Float8Linear. recipe_name
// "tensorwise" (the default) or "rowwise" scale per tensor or per row from the tensor's own
// amax, FP8 GEMMs either way: both priced as Fp8Recipe::tensorwise (an amax pass over each
// tensor before its cast; per row or per tensor, the same bytes read);
// "rowwise_with_gw_hp" keeps the weight-gradient GEMM in bf16, which loom does not price. loom
// prices the output layer in bf16: filter_fqns must hold "output" (torchtitan's default list is
// empty, so the output layer would run in FP8).
bool tt_float8_converter(const toml::array& a) {
  return a.size() == 1 && a[0].as_string() && a[0].as_string()->get() == "quantize.linear.float8";
}

Status tt_fp8(TomlKeys& k, TrainSpec& t) {
  const toml::node* c = k.get("model.converters");
  if (!c || !c->as_array() || c->as_array()->empty()) return ok_status();
  std::string recipe = "tensorwise";
  if (auto st = get_str(k, "quantize.linear.float8.recipe_name", recipe, {"tensorwise", "rowwise", "rowwise_with_gw_hp"}); !st)
    return st;
  if (recipe == "rowwise_with_gw_hp")
    return refused(k, "quantize.linear.float8.recipe_name", "a bf16 weight-gradient GEMM beside FP8 ones is not modelled");
  bool output = false;
  if (const toml::node* f = k.get("quantize.linear.float8.filter_fqns"); f && f->as_array())
    for (const auto& e : *f->as_array()) output = output || (e.as_string() && e.as_string()->get() == "output");
  if (!output)
    return refused(k, "quantize.linear.float8.filter_fqns", "must hold \"output\": loom prices the output layer in bf16");
  if (t.dtype != Dtype::bf16)
    return refused(k, "training.mixed_precision_param", "Float8 training needs \"bfloat16\" beside it");
  t.fp8 = true;
  t.fp8_recipe = Fp8Recipe::tensorwise;
  return ok_status();
}

// [model]: llama3 only, in the shape of a flavor loom knows or of --model.
Expected<ModelSpec> tt_model(TomlKeys& k, const ImportOptions& o) {
  std::string name = "llama3", flavor = "debugmodel";
  Status st = get_str(k, "model.name", name);
  if (st) st = get_str(k, "model.flavor", flavor);
  if (!st) return st.error();
  if (name != "llama3") return refused(k, "model.name", "loom prices torchtitan's llama3 model only");
  if (const toml::node* c = k.get("model.converters")) {
    auto arr = c->as_array();
    if (!arr || !(arr->empty() || tt_float8_converter(*arr)))  // Float8: tt_fp8
      return refused(k, "model.converters", "loom prices the converter [\"quantize.linear.float8\"] only (mx converters "
                                            "change the GEMMs in ways loom does not price)");
  }
  auto m = load_flavor_or_model(k, o, flavor);
  if (!m) return m.error();
  if (m->family != Family::llama)
    return make_error("--model", "torchtitan's llama3 is a Llama-family model (RMSNorm, RoPE, SwiGLU); got a GPT-family model");
  if (m->qkv_bias) return make_error("--model", "torchtitan's llama3 has no q/k/v biases; this model has them");
  if (m->tied_embeddings)
    fmt::print(stderr, "loom: {}: torchtitan's llama3 unties the embeddings; priced untied\n", k.path);
  m->tied_embeddings = false;
  m->dropout = false;
  return m;
}

struct TtBatch {
  int64_t local = 8, global = -1;  // JobConfig defaults
  bool cpu_offload = false;        // training.enable_cpu_offload
};

// [training]: batch, sequence and precision. Gradients are reduced in float32 (the only
// mixed_precision_reduce v0.2.2 accepts) and FSDP/DDP keep fp32 gradients.
Status tt_training(TomlKeys& k, TrainSpec& t, TtBatch& b) {
  t.seq = 2048;
  Status st = get_int(k, "training.local_batch_size", b.local, 1, limits::kGlobalBatch);
  if (st) st = get_int(k, "training.global_batch_size", b.global, -1, limits::kGlobalBatch);
  if (st && b.global == 0) return refused(k, "training.global_batch_size", "must be -1 (local x dp) or >= 1");
  if (st) st = get_int(k, "training.seq_len", t.seq, 1, limits::kSeq);
  std::string dtype = "float32", param = "bfloat16", reduce = "float32";
  if (st) st = get_str(k, "training.dtype", dtype, {"bfloat16", "float32"});
  if (st) st = get_str(k, "training.mixed_precision_param", param, {"bfloat16", "float32"});
  if (st) st = get_str(k, "training.mixed_precision_reduce", reduce, {"float32"});
  bool offload = false;
  if (st) st = get_bool(k, "training.enable_cpu_offload", offload);
  if (!st) return st;
  if (dtype == "bfloat16")
    return refused(k, "training.dtype", "bf16 weights, gradients and optimizer state without fp32 master weights are not modelled");
  b.cpu_offload = offload;  // FSDP2's CPUOffloadPolicy: loom's optimizer+params, under ZeRO-3 (tt_offload)
  t.dtype = param == "bfloat16" ? Dtype::bf16 : Dtype::fp32;
  t.grad_dtype = Dtype::fp32;
  t.attention = Attention::fused;  // SDPA
  t.dp_bucket_bytes = 0;  // loom's default bucket (FSDP reduces per layer)
  return ok_status();
}

// Context and expert parallelism, and the other keys that change what runs in ways loom does
// not price, when set away from their defaults.
Status tt_refuse_unpriced(TomlKeys& k) {
  for (const char* key : {"parallelism.expert_parallel_degree", "parallelism.expert_tensor_parallel_degree"}) {
    int64_t d = 1;
    if (auto st = get_int(k, key, d, 1, limits::kGpus); !st) return st;
    if (d > 1) return refused(k, key, "expert parallelism is not modelled yet");
  }
  if (k.get("parallelism.module_fqns_per_model_part"))
    return refused(k, "parallelism.module_fqns_per_model_part", "loom places equal blocks of layers per stage");
  std::string csv;
  if (auto st = get_str(k, "parallelism.pipeline_parallel_schedule_csv", csv); !st) return st;
  if (!csv.empty()) return refused(k, "parallelism.pipeline_parallel_schedule_csv", "loom prices GPipe, 1F1B and Interleaved1F1B");
  return ok_status();
}

// Data, tensor and pipeline degrees (parallel_dims.py) and the ZeRO stage they amount to.
Status tt_degrees(TomlKeys& k, int64_t gpus, ParallelConfig& p) {
  int64_t rep = 1, shard = -1, tp = 1, pp = 1, cp = 1;
  Status st = get_int(k, "parallelism.data_parallel_replicate_degree", rep, 1, limits::kGpus);
  // Context parallelism (sim/context_parallel.hpp): loom prices the ring passing K and V blocks,
  // torchtitan's rotate method "alltoall". Its default, "allgather", is neither that nor
  // TransformerEngine's all-gather (CpComm::all_gather): PyTorch's ring attention gathers K and V
  // once, overlapping the first block, but still passes dK and dV round a ring in backward
  // (torch.distributed.tensor.experimental._attention, _templated_ring_attention_backward).
  std::string rotate = "allgather";
  if (st) st = get_int(k, "parallelism.context_parallel_degree", cp, 1, gpus);
  if (st) st = get_str(k, "parallelism.context_parallel_rotate_method", rotate, {"allgather", "alltoall"});
  if (st && cp > 1 && rotate != "alltoall")
    return refused(k, "parallelism.context_parallel_rotate_method",
                   "loom prices the ring of K and V blocks, \"alltoall\"; \"allgather\" (torchtitan's default: K and V "
                   "gathered, dK and dV passed round a ring) is not modelled");
  if (st) st = get_int(k, "parallelism.data_parallel_shard_degree", shard, -1, limits::kGpus);
  if (st && shard == 0) return refused(k, "parallelism.data_parallel_shard_degree", "must be -1 (the GPUs left) or >= 1");
  if (st) st = get_int(k, "parallelism.tensor_parallel_degree", tp, 1, limits::kGpus);
  if (st) st = get_int(k, "parallelism.pipeline_parallel_degree", pp, 1, limits::kGpus);
  std::string reshard = "default";
  if (st) st = get_str(k, "parallelism.fsdp_reshard_after_forward", reshard, {"default", "always", "never"});
  if (!st) return st;
  if (shard == -1) {
    if (gpus % (rep * tp * pp * cp) != 0)
      return make_error("--gpus", fmt::format("must be a multiple of replicate x tp x pp x cp = {} for data_parallel_shard_degree -1 (got {})",
                                              rep * tp * pp * cp, gpus));
    shard = gpus / (rep * tp * pp * cp);
  }
  if (rep * shard * tp * pp * cp != gpus)
    return make_error(k.path + ": parallelism",
                      cp == 1 ? fmt::format("replicate x shard x tp x pp = {} x {} x {} x {} must equal --gpus {}", rep,
                                            shard, tp, pp, gpus)
                              : fmt::format("replicate x shard x tp x pp x cp = {} x {} x {} x {} x {} must equal --gpus {}",
                                            rep, shard, tp, pp, cp, gpus));
  if (rep > 1 && shard > 1) return refused(k, "parallelism.data_parallel_replicate_degree", "HSDP (replicate and shard both > 1) is not modelled");
  if (rep > 1 && (tp > 1 || pp > 1))
    return refused(k, "parallelism.data_parallel_replicate_degree", "torchtitan v0.2.2 has no DDP with tensor or pipeline parallelism");
  p.dp = rep * shard, p.tp = tp, p.pp = pp, p.cp = cp;
  p.sp = tp > 1;  // torchtitan always shards the sequence between TP regions
  bool async_tp = false, compiled = false;  // async TP (parallelize.py): needs the model compiled
  if (auto b = get_bool(k, "parallelism.enable_async_tensor_parallel", async_tp); !b) return b;
  if (auto b = get_bool(k, "compile.enable", compiled); !b) return b;
  if (const toml::node* c = k.get("compile.components"); c != nullptr && c->as_array() != nullptr) {
    bool model = false;  // v0.2.2's default components hold "model"
    for (auto&& e : *c->as_array()) model = model || e.value<std::string>() == std::optional<std::string>("model");
    compiled = compiled && model;
  }
  if (async_tp && tp > 1 && !compiled)
    return refused(k, "parallelism.enable_async_tensor_parallel", "torchtitan raises \"Async TP requires torch.compile\" "
                                                                  "without [compile] enable = true and \"model\" in components");
  p.tp_comm_overlap = async_tp && tp > 1;
  // parallelize.py: "default" reshards after forward except with PP.
  if (shard > 1) p.zero = reshard == "always" || (reshard == "default" && pp == 1) ? 3 : 2;
  return ok_status();
}

// ZBVZeroBubble (torch.distributed.pipelining): exactly two stages per rank, rank r running
// stages r and 2 pp - 1 - r (the V, sim/schedule.hpp), which loom prices with equal stages only.
Status tt_zbv_split(TomlKeys& k, const std::vector<int64_t>& split, ParallelConfig& p) {
  if (p.vpp != 2)
    return refused(k, "parallelism.pipeline_parallel_layers_per_stage",
                   fmt::format("ZBVZeroBubble needs exactly 2 stages per rank (got {})", p.vpp));
  if (std::any_of(split.begin(), split.end(), [&](int64_t x) { return x != split.front(); }))
    return refused(k, "parallelism.pipeline_parallel_first_stage_less_layers",
                   fmt::format("torchtitan's split {} is uneven; loom's zb-v places equal stages only (set "
                               "first_stage_less_layers and last_stage_less_layers to 0)", stage_layers_text(split)));
  p.schedule = Schedule::zb_v;
  return ok_status();
}

// Schedule, virtual stages and micro-batch (pipeline_parallel.py).
Status tt_pipeline(TomlKeys& k, int64_t layers, ParallelConfig& p) {
  std::string sched = "1F1B";
  int64_t mb = 1, per_stage = 0, first_less = 1, last_less = 1;
  Status st = get_str(k, "parallelism.pipeline_parallel_schedule", sched);
  if (st) st = get_int(k, "parallelism.pipeline_parallel_microbatch_size", mb, 1, limits::kGlobalBatch);
  if (st) st = get_int(k, "parallelism.pipeline_parallel_layers_per_stage", per_stage, 1, limits::kLayers);
  if (st) st = get_int(k, "parallelism.pipeline_parallel_first_stage_less_layers", first_less, 0, limits::kLayers);
  if (st) st = get_int(k, "parallelism.pipeline_parallel_last_stage_less_layers", last_less, 0, limits::kLayers);
  if (!st || p.pp == 1) return st;  // without PP torchtitan reads none of them
  // torch.distributed.pipelining's get_schedule_class matches schedule names case-insensitively.
  std::string lower = sched;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const bool zbv = lower == "zbvzerobubble", multi = lower == "interleaved1f1b" || zbv;
  if (lower != "gpipe" && lower != "1f1b" && !multi)
    return refused(k, "parallelism.pipeline_parallel_schedule",
                   "loom prices \"GPipe\", \"1F1B\", \"Interleaved1F1B\" and \"ZBVZeroBubble\"");
  // Virtual stages: layers_per_stage "effective" layers each (the embedding and the output
  // counting as first/last_stage_less_layers layers), else 1 per rank, 2 for looped schedules.
  const int64_t effective = layers + first_less + last_less;
  int64_t stages = p.pp * (multi ? 2 : 1);
  if (per_stage > 0) {
    if (effective % per_stage != 0 || (effective / per_stage) % p.pp != 0)
      return refused(k, "parallelism.pipeline_parallel_layers_per_stage",
                     fmt::format("must split the model's {} layers plus the first and last stage's {} + {} into a "
                                 "multiple of pp {} stages", layers, first_less, last_less, p.pp));
    stages = effective / per_stage;
    if (multi != (stages > p.pp))
      return refused(k, "parallelism.pipeline_parallel_layers_per_stage",
                     multi ? sched + " needs at least 2 stages per rank" : sched + " needs exactly 1 stage per rank");
  }
  auto split = torchtitan_split(layers, stages, first_less, last_less,
                                k.path + ": parallelism.pipeline_parallel_first_stage_less_layers");
  if (!split) return split.error();
  p.vpp = stages / p.pp;
  if (zbv) {
    p.micro_batch = mb;
    return tt_zbv_split(k, *split, p);
  }
  // loom gives each of a rank's chunks the same layers (Megatron-core's rule for uneven stages).
  std::vector<int64_t> per_rank(static_cast<size_t>(p.pp), 0);
  for (int64_t c = 0; c < stages; ++c) {
    if ((*split)[static_cast<size_t>(c)] != (*split)[static_cast<size_t>(c % p.pp)])
      return refused(k, first_less > 0 ? "parallelism.pipeline_parallel_first_stage_less_layers"
                                       : "parallelism.pipeline_parallel_last_stage_less_layers",
                     fmt::format("torchtitan's split {} puts unequal chunks on one rank; loom splits a rank's layers "
                                 "equally between its chunks", stage_layers_text(*split)));
    per_rank[static_cast<size_t>(c % p.pp)] += (*split)[static_cast<size_t>(c)];
  }
  if (std::any_of(per_rank.begin(), per_rank.end(), [&](int64_t x) { return x != per_rank.front(); }))
    p.stage_layers = per_rank;
  p.schedule = lower == "gpipe" ? Schedule::gpipe : multi ? Schedule::interleaved : Schedule::one_f_one_b;
  // torch.distributed.pipelining posts its sends asynchronously in every schedule, 1F1B's too.
  if (p.schedule == Schedule::one_f_one_b) p.pp_comm_overlap = true;
  p.micro_batch = mb;
  return ok_status();
}

// How torchtitan's backward runs: it adds each micro-batch's gradients in autograd
// (AccumulateGrad), whether the micro-batches are gradient accumulation steps or a pipeline's
// (GradAccumulation::separate when a step has more than one), and its tensor parallelism
// (DTensor) runs the backward's collectives in-line (async TP aside, which --tp-comm-overlap
// prices instead).
void torchtitan_backward(const ParallelConfig& p, TrainSpec& t) {
  if (t.global_batch / (p.dp * p.micro_batch) > 1) t.grad_accumulation = GradAccumulation::separate;
  if (p.tp > 1) t.tp_backward_overlap = false;
}

// Global batch and micro-batch (train.py): without PP a forward takes local_batch_size and
// gradient accumulation makes up the global batch; with PP local_batch_size is cut into
// pipeline micro-batches, and each accumulation step would be another pipeline flush.
Status tt_batch(TomlKeys& k, const TtBatch& b, ParallelConfig& p, TrainSpec& t) {
  if (static_cast<__int128>(b.local) * p.dp > limits::kGlobalBatch)
    return refused(k, "training.local_batch_size", fmt::format("local_batch_size x dp must be <= {}", limits::kGlobalBatch));
  const int64_t global = b.global == -1 ? b.local * p.dp : b.global;
  if (global % (b.local * p.dp) != 0)
    return refused(k, "training.global_batch_size", fmt::format("must be a multiple of local_batch_size x dp = {}", b.local * p.dp));
  t.global_batch = global;
  if (p.pp == 1) {
    p.micro_batch = b.local;
    torchtitan_backward(p, t);
    return ok_status();
  }
  if (global != b.local * p.dp)
    return refused(k, "training.local_batch_size",
                   fmt::format("with pipeline parallelism loom prices one pipeline flush per step: must be global_batch_size / dp = {}",
                               global / p.dp));
  if (b.local % p.micro_batch != 0)
    return refused(k, "parallelism.pipeline_parallel_microbatch_size", fmt::format("must divide local_batch_size {}", b.local));
  torchtitan_backward(p, t);
  return ok_status();
}

// [activation_checkpoint]: torchtitan's default is selective with "2", every second layer.
// selective_ac_option "K" (activation_checkpoint.py _apply_layer_sac): a block is checkpointed
// when a process-wide count of the blocks it has seen is a multiple of K, "0" and "1" every
// block. At v0.2.2 the count (_layer_sac_count) is never reset, so it runs on from one of a
// rank's model parts to the next: loom's count per chunk (ParallelConfig::recompute_every) is
// the same where each of a rank's chunks but its last holds a multiple of K layers.
Status tt_recompute(TomlKeys& k, const ModelSpec& m, const TrainSpec& t, ParallelConfig& p) {
  std::string mode = "selective", option = "2";
  Status st = get_str(k, "activation_checkpoint.mode", mode, {"selective", "full", "memory_budget", "none"});
  if (st) st = get_str(k, "activation_checkpoint.selective_ac_option", option);
  if (!st) return st;
  if (mode == "memory_budget") return refused(k, "activation_checkpoint.mode", "a memory-budget recompute is not modelled");
  p.recompute = mode == "full" ? Recompute::full : Recompute::none;
  if (mode != "selective") return ok_status();
  const bool digits = !option.empty() &&
                      std::all_of(option.begin(), option.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
  if (digits) {  // every layer checkpointed ("0", "1"), or every K-th of the rank's blocks
    p.recompute = Recompute::full;
    const std::string value = option.substr(std::min(option.find_first_not_of('0'), option.size()));  // int("007") = 7
    if (value.size() > 7)
      return refused(k, "activation_checkpoint.selective_ac_option", "must be at most " + std::to_string(limits::kLayers));
    const int64_t every = value.empty() ? 0 : std::stoll(value);
    if (every < 2) return ok_status();
    if (m.is_moe())
      return refused(k, "activation_checkpoint.selective_ac_option",
                     "loom prices every K-th layer recomputed for dense models only (a MoE model's cost depends on "
                     "which layers are MoE layers): use \"1\" or mode = \"full\"");
    if (every > limits::kLayers)
      return refused(k, "activation_checkpoint.selective_ac_option", "must be at most " + std::to_string(limits::kLayers));
    if (const auto at = torchtitan_count_parts(m, p, every))
      return refused(k, "activation_checkpoint.selective_ac_option",
                     fmt::format("torchtitan v0.2.2 counts blocks on across a rank's model parts, which loom prices "
                                 "where each part but a rank's last holds a multiple of {} blocks (stage {}'s part {} "
                                 "holds {})",
                                 every, at->stage, at->chunk, at->layers));
    p.recompute_every = every;
  } else if (option == "op") {  // per-op checkpointing (Recompute::op) where loom prices it
    p.recompute = Recompute::op;
    const Status priced = check_recompute_op(m, t, p, [](const std::string& f) { return f; });
    if (!priced) {
      p.recompute = Recompute::selective;
      fmt::print(stderr, "loom: {}: activation_checkpoint.selective_ac_option \"op\": priced as loom's selective "
                 "recompute (the attention core), not torchtitan's per-op save list ({})\n",
                 k.path, priced.error().message);
    }
  } else {
    return refused(k, "activation_checkpoint.selective_ac_option",
                   "must be \"op\" or a non-negative integer, as torchtitan's ActivationCheckpoint asserts");
  }
  return ok_status();
}

}  // namespace

Expected<Plan> plan_from_torchtitan(const ImportOptions& o) {
  auto k = read_toml(o.path);
  if (!k) return k.error();
  if (auto st = tt_refuse_unpriced(*k); !st) return st.error();
  Plan plan;
  auto m = tt_model(*k, o);
  if (!m) return m.error();
  plan.model = *m;
  auto c = import_cluster(o);
  if (!c) return c.error();
  plan.cluster = *c;
  TtBatch b;
  auto& p = plan.parallel;
  Status st = tt_training(*k, plan.train, b);
  if (st) st = tt_fp8(*k, plan.train);
  if (st) st = tt_degrees(*k, *o.gpus, p);
  if (st) st = tt_pipeline(*k, plan.model.layers, p);
  if (st) st = tt_batch(*k, b, p, plan.train);
  if (st) st = tt_recompute(*k, plan.model, plan.train, p);
  if (st && b.cpu_offload) {
    if (p.zero != 3)
      return refused(*k, "training.enable_cpu_offload", "loom prices CPU offload with FSDP resharding after forward "
                                                         "(fsdp_reshard_after_forward = \"always\", ZeRO-3)");
    p.offload = Offload::optimizer_params;
  }
  if (!st) return st.error();
  if (plan.train.seq % (2 * p.tp) != 0)  // parallelize.py asserts seq_len % (tp x 2 cp) == 0
    return refused(*k, "training.seq_len", fmt::format("torchtitan needs a multiple of 2 x tp = {}", 2 * p.tp));
  if (plan.model.sliding_window > 0 && plan.train.seq > plan.model.sliding_window)
    return refused(*k, "training.seq_len", fmt::format("must be <= the model's sliding_window {}: sliding-window attention is not "
                                                       "modelled yet", plan.model.sliding_window));
  std::vector<std::pair<std::string, std::string>> ignored;
  for (const auto& [key, node] : k->values)
    if (!k->used.count(key)) ignored.emplace_back(key, "= " + show(*node));
  print_ignored(o.path, ignored);
  st = validate_config(plan.model, plan.cluster, plan.train, p, [&](const std::string& f) { return o.path + ": " + f; });
  if (!st) return st.error();
  return plan;
}

}  // namespace loom::cli
