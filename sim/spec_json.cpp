#include "sim/spec_json.hpp"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <tuple>

#include "sim/fp8.hpp"
#include "sim/json_reader.hpp"
#include "sim/mla.hpp"
#include "sim/moe.hpp"
#include "sim/moe_config.hpp"
#include "sim/offload.hpp"
#include "sim/profile.hpp"
#include "sim/stage_split.hpp"
#include "sim/validate.hpp"

namespace loom {

const std::vector<std::string>& family_names() {
  static const std::vector<std::string> n{"gpt", "llama"};
  return n;
}
const std::vector<std::string>& dtype_names() {
  static const std::vector<std::string> n{"bf16", "fp32"};
  return n;
}
const std::vector<std::string>& recompute_names() {
  static const std::vector<std::string> n{"none", "selective", "full", "op"};
  return n;
}
const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> n{"gpipe", "1f1b", "interleaved", "zb-h1", "zb-v"};
  return n;
}
const std::vector<std::string>& attention_names() {
  static const std::vector<std::string> n{"fused", "unfused"};
  return n;
}
const std::vector<std::string>& dp_comm_names() {
  static const std::vector<std::string> n{"ring", "ps"};
  return n;
}
const std::vector<std::string>& cross_entropy_names() {
  static const std::vector<std::string> n{"unfused", "fused"};
  return n;
}
std::string to_string(CrossEntropy c) { return cross_entropy_names()[static_cast<int>(c)]; }
const std::vector<std::string>& grad_accumulation_names() {
  static const std::vector<std::string> n{"fused", "separate"};
  return n;
}
std::string to_string(GradAccumulation g) { return grad_accumulation_names()[static_cast<int>(g)]; }
const std::vector<std::string>& fp8_recipe_names() {
  static const std::vector<std::string> n{"delayed", "tensorwise"};
  return n;
}
std::string to_string(Fp8Recipe f) { return fp8_recipe_names()[static_cast<int>(f)]; }
std::string to_string(Family f) { return family_names()[static_cast<int>(f)]; }
std::string to_string(Dtype d) { return dtype_names()[static_cast<int>(d)]; }
std::string to_string(Recompute r) { return recompute_names()[static_cast<int>(r)]; }
std::string to_string(Schedule s) { return schedule_names()[static_cast<int>(s)]; }
std::string to_string(Attention a) { return attention_names()[static_cast<int>(a)]; }
std::string to_string(DpComm d) { return dp_comm_names()[static_cast<int>(d)]; }
const std::vector<std::string>& cp_comm_names() {
  static const std::vector<std::string> n{"p2p", "all_gather"};  // Megatron-core's --cp-comm-type names
  return n;
}
std::string to_string(CpComm c) { return cp_comm_names()[static_cast<int>(c)]; }
// ZeRO-3's gather granularity (Zero3Gather in specs.hpp): FSDP's layer or DeepSpeed 0.3's tensor.
static const std::vector<std::string>& zero3_gather_names() {
  static const std::vector<std::string> n{"layer", "tensor"};
  return n;
}

template <class E>
static void read_enum(ObjectReader& r, const std::string& key, const std::vector<std::string>& names,
                      E& out, bool required) {
  int idx = static_cast<int>(out);
  if (required) r.choice(key, names, idx);
  else r.opt_choice(key, names, idx);
  out = static_cast<E>(idx);
}

Status check_model(const ModelSpec& m, const std::string& where_, const std::string& pointer,
                   const std::function<std::string(const std::string&)>& key) {
  const std::string where = where_ + ": " + pointer;
  const FieldNamer name = [&](const std::string& f) { return where + "/" + (key ? key(f) : f); };
  // Sizes first: a bound per field and on the parameter count, so nothing below wraps around.
  if (auto st = check_model_sizes(m, name); !st) return st;
  if (auto st = check_moe_model(m, name); !st) return st;
  if (auto st = check_mla_model(m, name); !st) return st;
  if (m.head_size == 0 && m.hidden % m.heads != 0)
    return Error{name("heads") + ": must divide hidden (" + std::to_string(m.hidden) + " % " +
                 std::to_string(m.heads) + " != 0)"};
  if (m.heads % m.kv_heads != 0)
    return Error{name("kv_heads") + ": must divide heads (" + std::to_string(m.heads) + " % " +
                 std::to_string(m.kv_heads) + " != 0)"};
  if (m.kv_heads > m.heads) return Error{name("kv_heads") + ": must be <= heads"};
  return ok_status();
}

namespace {
// A Hugging Face config's key for a field of loom's model (the fields model_from_hf_config reads
// from a key of another name: GPT2Config's n_* keys, the others' *_size and num_* keys), so a rule
// it breaks names the key the user wrote.
std::string hf_key(const std::string& type, const std::string& field) {
  static const std::map<std::string, std::string> gpt2 = {
      {"layers", "n_layer"}, {"hidden", "n_embd"}, {"heads", "n_head"}, {"kv_heads", "n_head"},
      {"ffn_hidden", "n_inner"}, {"seq_len", "n_positions"}, {"vocab", "vocab_size"}};
  static const std::map<std::string, std::string> others = {
      {"layers", "num_hidden_layers"}, {"hidden", "hidden_size"},     {"heads", "num_attention_heads"},
      {"kv_heads", "num_key_value_heads"}, {"ffn_hidden", "intermediate_size"}, {"vocab", "vocab_size"},
      {"seq_len", "max_position_embeddings"}, {"head_size", "head_dim"}};
  const auto& keys = type == "gpt2" ? gpt2 : others;
  const auto it = keys.find(field);
  return it == keys.end() ? field : it->second;
}
}  // namespace

Expected<ModelSpec> model_from_json(const nlohmann::json& j, const std::string& where,
                                    std::vector<std::string>* ignored_keys, const std::string& pointer) {
  if (j.is_object() && j.contains("model_type") && pointer.empty()) return model_from_hf_config(j, where, ignored_keys);
  ModelSpec m;
  ObjectReader r(j, where, pointer);
  r.string("name", m.name);
  read_enum(r, "family", family_names(), m.family, true);
  r.integer("layers", m.layers, 1, limits::kLayers);
  r.integer("hidden", m.hidden, 1, limits::kHidden);
  r.integer("heads", m.heads, 1, limits::kHeads);
  m.kv_heads = m.heads;
  r.opt_integer("kv_heads", m.kv_heads, 1, limits::kHeads);
  r.integer("ffn_hidden", m.ffn_hidden, 1, limits::kFfnHidden);
  r.integer("vocab", m.vocab, 1, limits::kVocab);
  r.integer("seq_len", m.seq_len, 1, limits::kSeq);
  r.boolean("tied_embeddings", m.tied_embeddings);
  r.boolean("dropout", m.dropout);
  r.opt_number("norm_eps", m.norm_eps, 0, true);
  r.opt_number("rope_theta", m.rope_theta, 0, true);
  r.opt_boolean("qkv_bias", m.qkv_bias);
  r.opt_integer("head_size", m.head_size, 1, limits::kHidden);
  r.opt_boolean("qk_norm", m.qk_norm);
  r.opt_boolean("post_norms", m.post_norms);
  r.opt_boolean("gated_gelu", m.gated_gelu);
  read_moe_keys(r, m);  // mixture of experts (sim/moe_config.hpp)
  read_mla_keys(r, m);  // multi-head latent attention (sim/mla.hpp)
  r.opt_number("published_params", m.published_params, 0, false);
  r.opt_number("published_params_precision", m.published_params_precision, 0, false);
  r.opt_string("source", m.source);
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  auto st = check_model(m, where, pointer);
  if (!st) return st.error();
  return m;
}

// Hugging Face transformers config.json: GPT-2 names or Llama/Mistral/Qwen names, chosen
// by model_type (transformers' GPT2Config / LlamaConfig / MistralConfig / Qwen2Config).
// Every key either sets a field loom prices, is listed as ignored with the reason, or, when it
// changes the parameter count or the FLOPs in a way loom does not model, refuses the file.
namespace {

bool present(const nlohmann::json& j, const std::string& key) { return j.contains(key) && !j.at(key).is_null(); }

// Keys that change neither the parameter count nor the FLOPs of a training step, with why.
const std::vector<std::pair<std::string, std::string>>& hf_ignored_reasons() {
  static const std::vector<std::pair<std::string, std::string>> v{
      {"rope_scaling", "RoPE frequency scaling changes positions, not parameters or FLOPs"},
      {"architectures", "a class name; model_type chooses the shape"},
      {"bos_token_id", "a token id"}, {"eos_token_id", "a token id"}, {"pad_token_id", "a token id"},
      {"initializer_range", "initialisation only"}, {"use_cache", "inference only"},
      {"torch_dtype", "storage dtype; the plan's --dtype sets precision"},
      {"transformers_version", "metadata"}, {"pretraining_tp", "an inference-time TP emulation"},
      {"max_window_layers", "only used with use_sliding_window true"},
      {"sliding_window_size", "same as sliding_window"},
      {"attn_logit_softcapping", "a tanh over attention scores: no parameters or matrix FLOPs, not priced"},
      {"final_logit_softcapping", "a tanh over the logits: no parameters or matrix FLOPs, not priced"},
      {"query_pre_attn_scalar", "the attention scale, not a shape"},
      {"cache_implementation", "inference only"},
      {"n_ctx", "same as n_positions"}, {"embd_pdrop", "dropout: resid_pdrop decides"},
      {"attn_pdrop", "dropout: resid_pdrop decides"}, {"activation_function", "gelu variants cost the same"},
      {"task_specific_params", "generation settings"}};
  return v;
}

void read_hf_gpt2(ObjectReader& r, const nlohmann::json& j, ModelSpec& m) {
  m.family = Family::gpt;
  r.integer("n_layer", m.layers, 1, limits::kLayers);
  r.integer("n_embd", m.hidden, 1, limits::kHidden);
  r.integer("n_head", m.heads, 1, limits::kHeads);
  m.kv_heads = m.heads;
  // GPT-2 learns a table of n_positions positions and was trained at that length.
  r.integer("n_positions", m.seq_len, 1, limits::kSeq);
  r.integer("vocab_size", m.vocab, 1, limits::kVocab);
  m.ffn_hidden = 4 * m.hidden;  // GPT2Config: n_inner null means 4 * n_embd
  if (present(j, "n_inner")) r.integer("n_inner", m.ffn_hidden, 1, limits::kFfnHidden);
  else r.skip("n_inner");
  m.tied_embeddings = true;
  r.opt_boolean("tie_word_embeddings", m.tied_embeddings);
  double pdrop = 0;
  r.opt_number("resid_pdrop", pdrop, 0, false);
  m.dropout = pdrop > 0;
  r.opt_number("layer_norm_epsilon", m.norm_eps, 0, true);
}

// Sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window): recorded, and a plan
// whose sequence is longer than the window is refused, since loom prices full causal attention.
void read_hf_window(ObjectReader& r, const nlohmann::json& j, ModelSpec& m) {
  bool use = true;
  if (present(j, "use_sliding_window")) r.boolean("use_sliding_window", use);
  else r.skip("use_sliding_window");
  if (!present(j, "sliding_window") || !use) {
    r.skip("sliding_window");
    return;
  }
  r.integer("sliding_window", m.sliding_window, 1, limits::kSeq);
  if (m.sliding_window >= m.seq_len) m.sliding_window = 0;  // never narrower than the context
}

void read_hf_llama_extras(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type) {
  const bool gemma = type == "gemma2";
  std::string act = gemma ? "gelu_pytorch_tanh" : "silu";
  r.opt_string("hidden_act", act);
  if (gemma) {
    // Gemma2Config names the MLP's activation hidden_activation; hidden_act is the legacy name.
    r.opt_string("hidden_activation", act);
    if (act != "gelu_pytorch_tanh" && act != "gelu")
      r.fail("hidden_activation", "must be \"gelu_pytorch_tanh\" (GeGLU) for gemma2 (got \"" + act + "\")");
  } else if (act != "silu" && act != "swish") {
    r.fail("hidden_act", "must be \"silu\" (SwiGLU) for a llama-family model");
  }
  double pdrop = 0;
  r.opt_number("attention_dropout", pdrop, 0, false);
  m.dropout = pdrop > 0;
  r.opt_number("rms_norm_eps", m.norm_eps, 0, true);
  r.opt_number("rope_theta", m.rope_theta, 0, true);
  // Qwen2Attention always has q/k/v biases; LlamaAttention's attention_bias also biases o_proj.
  m.qkv_bias = type == "qwen2";
  bool bias = false;
  if (present(j, "attention_bias")) r.boolean("attention_bias", bias);
  if (bias && type != "qwen2") r.fail("attention_bias", "biases on q, k, v and o are not modelled (got true)");
  bool mlp_bias = false;
  if (present(j, "mlp_bias")) r.boolean("mlp_bias", mlp_bias);
  if (mlp_bias) r.fail("mlp_bias", "MLP biases are not modelled for a llama-family model (got true)");
  // An explicit head size (Qwen3, Gemma 2, Mistral's configs): q and the attention output are
  // then num_attention_heads x head_dim wide, whatever hidden_size is.
  if (present(j, "head_dim") && m.heads > 0) {
    int64_t hd = 0;
    r.integer("head_dim", hd, 1, limits::kHidden);
    if (!r.failed() && hd * m.heads != m.hidden) m.head_size = hd;
  } else {
    r.skip("head_dim");
  }
  read_hf_window(r, j, m);
}

// Qwen3 (transformers Qwen3Config): Qwen2's shapes without q/k/v biases, with an RMSNorm over
// each head of q and of k (q_norm, k_norm) and an explicit head_dim.
// Gemma 2 (transformers Gemma2Config): GeGLU MLP (gelu_pytorch_tanh gate), four RMSNorms a
// layer, head_dim 256, tied embeddings, local sliding-window attention on every other layer.
// Its soft-capping of attention scores and final logits is a tanh over tensors loom already
// reads and writes; it adds no parameters and no matrix FLOPs, and is not priced.
void read_hf_family_extras(ModelSpec& m, const std::string& type) {
  if (type == "qwen3") m.qk_norm = true;
  if (type != "gemma2") return;
  m.post_norms = true;
  m.gated_gelu = true;
}

void read_hf_llama(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type) {
  m.family = Family::llama;
  r.integer("num_hidden_layers", m.layers, 1, limits::kLayers);
  r.integer("hidden_size", m.hidden, 1, limits::kHidden);
  r.integer("num_attention_heads", m.heads, 1, limits::kHeads);
  m.kv_heads = m.heads;
  if (present(j, "num_key_value_heads")) r.integer("num_key_value_heads", m.kv_heads, 1, limits::kHeads);
  r.integer("intermediate_size", m.ffn_hidden, 1, limits::kFfnHidden);
  r.integer("vocab_size", m.vocab, 1, limits::kVocab);
  // The longest context the weights support, not a length they were trained at.
  r.integer("max_position_embeddings", m.seq_len, 1, limits::kSeq);
  m.seq_len_is_limit = true;
  m.tied_embeddings = type == "gemma2";  // LlamaConfig's default is untied, Gemma2Config's tied
  r.opt_boolean("tie_word_embeddings", m.tied_embeddings);
  if (!r.failed()) read_hf_llama_extras(r, j, m, type);
  if (!r.failed()) read_hf_family_extras(m, type);
}

void list_ignored(ObjectReader& r, std::vector<std::string>* ignored_keys) {
  if (!ignored_keys) return;
  for (auto& k : r.unread_keys()) {
    std::string why = "not a shape or cost field loom knows; assumed not to change parameters or FLOPs";
    for (auto& [key, reason] : hf_ignored_reasons())
      if (key == k) why = reason;
    for (auto& [key, reason] : hf_moe_ignored_reasons())
      if (key == k) why = reason;
    ignored_keys->push_back(k + " (" + why + ")");
  }
}

}  // namespace

Expected<ModelSpec> model_from_hf_config(const nlohmann::json& j, const std::string& where,
                                         std::vector<std::string>* ignored_keys) {
  ModelSpec m;
  ObjectReader r(j, where);
  std::string type;
  r.string("model_type", type);
  if (r.failed()) return *r.error();
  m.name = type;
  r.opt_string("_name_or_path", m.name);
  if (m.name.empty()) m.name = type;
  const std::string base = hf_dense_base_type(type);  // mixtral: mistral's attention, and so on
  if (type == "gpt2") read_hf_gpt2(r, j, m);
  else if (base == "llama" || base == "mistral" || base == "qwen2" || base == "qwen3" || base == "gemma2")
    read_hf_llama(r, j, m, base);
  else r.fail("model_type", "must be one of gpt2, llama, mistral, qwen2, qwen3, gemma2, mixtral, qwen2_moe, "
                            "qwen3_moe, deepseek_v2, deepseek_v3 (got \"" + type + "\")");
  if (!r.failed() && type != "gpt2") read_hf_moe(r, j, m, type);  // experts, if any
  if (!r.failed()) read_hf_mla(r, j, m, type);  // DeepSeek's latent attention (sim/mla.hpp)
  if (r.failed()) return *r.error();
  list_ignored(r, ignored_keys);
  auto st = check_model(m, where, "", [&type](const std::string& f) { return hf_key(type, f); });
  if (!st) return st.error();
  return m;
}

static void read_fabric(ObjectReader& parent, const std::string& key, FabricSpec& f) {
  auto* j = parent.object(key);
  if (!j) return;
  ObjectReader r(parent, key, *j);
  r.string("kind", f.kind);
  if (r.failed()) return;
  bool none = f.kind == "none";
  int64_t min_int = none ? 0 : 1;
  r.number("link_bytes_per_s", f.link_bytes_per_s, 0, !none, limits::kRate);
  r.number("busbw_bytes_per_s", f.busbw_bytes_per_s, 0, !none, limits::kRate);
  r.number("latency_s", f.latency_s, 0, false, limits::kTimeS);
  r.integer("nics_per_node", f.nics_per_node, key == "inter_node" ? min_int : 0, limits::kNicsPerNode);
  r.opt_integer("nccl_channels", f.nccl_channels, 1, limits::kNcclChannels);  // absent: 0, not stated
  const bool nvls = j->contains("nvls_algbw_bytes_per_s") || j->contains("nvls_latency_s");
  if (nvls && key != "intra_node")
    return r.fail(j->contains("nvls_algbw_bytes_per_s") ? "nvls_algbw_bytes_per_s" : "nvls_latency_s",
                  "NVLink SHARP runs on a node's NVSwitch: intra_node only");
  if (nvls) {  // both or neither
    r.number("nvls_algbw_bytes_per_s", f.nvls_algbw_bytes_per_s, 0, true, limits::kRate);
    r.number("nvls_latency_s", f.nvls_latency_s, 0, false, limits::kTimeS);
  }
  r.string("source", f.source);
  if (!r.failed() && f.busbw_bytes_per_s > f.link_bytes_per_s)
    r.fail("busbw_bytes_per_s", "must be <= link_bytes_per_s");
  r.reject_unknown_keys();
}

// A collective's CTAs take SMs from the compute beside it (cost_model.cpp, nccl_sm_share):
// NCCL's channels on either level must leave the compute some.
static void check_nccl_channels(ObjectReader& r, const ClusterSpec& c) {
  for (auto [k, f] : {std::pair{"intra_node", &c.intra_node}, {"inter_node", &c.inter_node}})
    if (!r.failed() && f->nccl_channels > 0 && c.gpu.sm_count > 0 && f->nccl_channels >= c.gpu.sm_count)
      r.fail(std::string(k) + ".nccl_channels", "must be < gpu.sm_count (" + std::to_string(c.gpu.sm_count) +
                                                    "; got " + std::to_string(f->nccl_channels) + ")");
}

// The profile `path` names, read beside the cluster file `where` (a zoo cluster: from the
// working directory or the repository root; load_profile).
static Expected<std::shared_ptr<const HardwareProfile>> profile_beside(const std::string& where,
                                                                      const std::string& path) {
  const bool from_file = where.rfind("zoo:", 0) != 0;
  return load_profile(path, from_file ? std::filesystem::path(where).parent_path().string() : "");
}

// efficiency.gemm_model: which profile's fitted GEMM model, carried by which ratios.
static void read_gemm_model_ref(ObjectReader& parent, GemmModelRef& g) {
  const auto* o = parent.object("gemm_model");
  if (!o) return;
  ObjectReader r(parent, "gemm_model", *o);
  r.string("from", g.from);
  r.number("mainloop_efficiency_scale", g.mainloop_efficiency_scale, 0, true, 2);
  r.number("clock_ratio", g.clock_ratio, 0, true, 10);
  r.string("source", g.source);
  r.reject_unknown_keys();
}

// Loads the profile efficiency.gemm_model names and carries its model to this cluster's GPU;
// an error names its field from the cluster's root (`pointer`).
static Status resolve_gemm_model(ClusterSpec& c, const std::string& where, const std::string& pointer) {
  const auto& ref = *c.efficiency.gemm_model;
  if (c.gpu.sm_count <= 0)
    return make_error(where, pointer + "/gpu/sm_count: is required with efficiency.gemm_model (the model prices tiles per SM)");
  const std::string from = pointer + "/efficiency/gemm_model/from: ";
  auto prof = profile_beside(where, ref.from);
  if (!prof) return make_error(where, from + prof.error().message);
  const GemmModel& m = (*prof)->gemm_model;
  if (!m.valid())
    return make_error(where, from + ref.from + ": the profile has no gemm_model (run `loom calibrate --fit-gemm " +
                                 ref.from + " --cluster NAME`)");
  const GemmHardware to{c.gpu.peak_flops_bf16, c.gpu.sm_count, c.gpu.hbm_bytes_per_s};
  // Measured: carried with both ratios 1 to the very GPU the profile describes.
  auto measured_here = [&](const GemmModel& from, const GemmHardware& here) {
    return ref.mainloop_efficiency_scale == 1 && ref.clock_ratio == 1 && from.hw.sm_count == here.sm_count &&
           from.hw.peak_flops == here.peak_flops && from.hw.hbm_bytes_per_s == here.hbm_bytes_per_s;
  };
  c.gemm_model = std::make_shared<const GemmModel>(
      scale_gemm_model(m, to, ref.mainloop_efficiency_scale, ref.clock_ratio));
  c.gemm_model_measured = measured_here(m, to);
  const GemmModel& f = (*prof)->gemm_model_fp8;
  const GemmHardware to8{c.gpu.peak_flops_fp8, c.gpu.sm_count, c.gpu.hbm_bytes_per_s};
  const double fp8_ratio = c.efficiency.fp8_gemm_efficiency_ratio;
  if (f.valid() && c.gpu.peak_flops_fp8 > 0) {
    c.gemm_model_fp8 = std::make_shared<const GemmModel>(
        scale_gemm_model(f, to8, ref.mainloop_efficiency_scale, ref.clock_ratio));
    c.gemm_model_fp8_measured = measured_here(f, to8);
  } else if (fp8_ratio > 0 && c.gpu.peak_flops_fp8 > 0) {
    // No FP8 GEMM measured: the bf16 model's tiles at the FP8 peak, their main loop reaching the
    // stated fraction of the bf16 one's efficiency (operand bytes are 1 where it is called).
    c.gemm_model_fp8 = std::make_shared<const GemmModel>(
        scale_gemm_model(m, to8, ref.mainloop_efficiency_scale * fp8_ratio, ref.clock_ratio));
    c.gemm_model_fp8_from_bf16 = true;
  }
  return ok_status();
}

// efficiency.memory_curves: which profile's memory-bound curves, carried by which ratio.
static void read_memory_curves_ref(ObjectReader& parent, MemoryCurvesRef& m) {
  const auto* o = parent.object("memory_curves");
  if (!o) return;
  ObjectReader r(parent, "memory_curves", *o);
  r.string("from", m.from);
  r.number("bandwidth_ratio", m.bandwidth_ratio, 0, true, 10);
  r.string("source", m.source);
  r.reject_unknown_keys();
}

// Loads the profile efficiency.memory_curves names and keeps its bandwidth curves, scaled.
static Status resolve_memory_curves(ClusterSpec& c, const std::string& where, const std::string& pointer) {
  const auto& ref = *c.efficiency.memory_curves;
  auto prof = profile_beside(where, ref.from);
  if (!prof) return make_error(where, pointer + "/efficiency/memory_curves/from: " + prof.error().message);
  HardwareProfile curves;
  curves.name = (*prof)->name;
  curves.device = (*prof)->device;
  curves.memory_bound = (*prof)->memory_bound;
  curves.memory_by_kind = (*prof)->memory_by_kind;
  for (auto& b : curves.memory_bound) b.bytes_per_s *= ref.bandwidth_ratio;
  for (auto& b : curves.memory_by_kind) b.bytes_per_s *= ref.bandwidth_ratio;
  c.memory_curves = std::make_shared<const HardwareProfile>(std::move(curves));
  c.memory_curves_measured = ref.bandwidth_ratio == 1;
  return ok_status();
}

// The host side of a node (offload, sim/offload.hpp): optional; all three numbers when given.
static void read_host(ObjectReader& parent, HostSpec& h) {
  auto* j = parent.opt_object("host");
  if (!j) return;
  ObjectReader r(parent, "host", *j);
  r.number("link_bytes_per_s", h.link_bytes_per_s, 0, true, limits::kRate);
  r.integer("memory_bytes", h.memory_bytes, 1, limits::kBytes);
  r.number("memory_bytes_per_s", h.memory_bytes_per_s, 0, true, limits::kRate);
  r.string("source", h.source);
  r.reject_unknown_keys();
}

// efficiency.attention_curve (sim/attention_curve.hpp): {"kernel", "points": [{"head_dim",
// "seq", "forward_flops_per_s", "backward_flops_per_s"}, ...] sorted by (head_dim, seq) each pair
// once, "measured" (optional, false: published), "source"}. Each speed at most the GPU's bf16
// peak (checked by the caller, which has read the GPU).
static void read_attention_curve(ObjectReader& parent, AttentionCurve& c) {
  const auto* o = parent.object("attention_curve");
  if (!o) return;
  ObjectReader r(parent, "attention_curve", *o);
  r.string("kernel", c.kernel);
  r.skip("points");
  const auto it = o->find("points");
  if (it == o->end() || !it->is_array() || it->empty()) {
    r.fail("points", "must be a non-empty array of {head_dim, seq, forward_flops_per_s, backward_flops_per_s}");
    return;
  }
  for (size_t i = 0; i < it->size() && !r.failed(); ++i) {
    ObjectReader pr(r, "points/" + std::to_string(i), (*it)[i]);
    AttentionCurvePoint p;
    pr.integer("head_dim", p.head_dim, 1, 1024);
    pr.integer("seq", p.seq, 1, limits::kSeq);
    pr.number("forward_flops_per_s", p.forward_flops_per_s, 0, true, limits::kRate);
    pr.number("backward_flops_per_s", p.backward_flops_per_s, 0, true, limits::kRate);
    pr.reject_unknown_keys();
    if (!r.failed() && !c.points.empty() &&
        !(std::tie(c.points.back().head_dim, c.points.back().seq) < std::tie(p.head_dim, p.seq)))
      r.fail("points/" + std::to_string(i), "must be sorted by (head_dim, seq), each pair once");
    c.points.push_back(p);
  }
  r.opt_boolean("measured", c.measured);
  r.string("source", c.source);
  r.reject_unknown_keys();
}

static void read_efficiency(ObjectReader& r, EfficiencySpec& eff) {
  if (auto* e = r.object("efficiency")) {
    ObjectReader er(r, "efficiency", *e);
    er.number("gemm", eff.gemm, limits::kMinEfficiency, false);
    er.number("gemm_half_size_flops", eff.gemm_half_size_flops, 0, false, limits::kRate);
    er.number("attention", eff.attention, limits::kMinEfficiency, false);
    er.number("memory_bound", eff.memory_bound, limits::kMinEfficiency, false);
    er.number("kernel_launch_s", eff.kernel_launch_s, 0, false, limits::kTimeS);
    er.opt_number("fp8_gemm_efficiency_ratio", eff.fp8_gemm_efficiency_ratio, 0, true, 2);
    if (er.has("gemm_model")) read_gemm_model_ref(er, eff.gemm_model.emplace());
    if (er.has("memory_curves")) read_memory_curves_ref(er, eff.memory_curves.emplace());
    if (er.has("attention_curve")) {
      AttentionCurve curve;
      read_attention_curve(er, curve);
      eff.attention_curve = std::make_shared<const AttentionCurve>(std::move(curve));
    }
    er.string("source", eff.source);
    for (auto [k, v] : {std::pair{"gemm", eff.gemm}, {"attention", eff.attention},
                        {"memory_bound", eff.memory_bound}})
      if (!er.failed() && v > 1) er.fail(k, "must be a fraction <= 1");
    er.reject_unknown_keys();
  }
}

Expected<ClusterSpec> cluster_from_json(const nlohmann::json& j, const std::string& where,
                                        const std::string& pointer) {
  ClusterSpec c;
  ObjectReader r(j, where, pointer);
  r.string("name", c.name);
  r.string("source", c.source);
  if (auto* g = r.object("gpu")) {
    ObjectReader gr(r, "gpu", *g);
    gr.string("name", c.gpu.name);
    gr.integer("memory_bytes", c.gpu.memory_bytes, 1, limits::kBytes);
    gr.number("peak_flops_bf16", c.gpu.peak_flops_bf16, 1, false, limits::kRate);
    gr.number("peak_flops_fp32", c.gpu.peak_flops_fp32, 1, false, limits::kRate);
    gr.opt_number("peak_flops_fp8", c.gpu.peak_flops_fp8, 1, false, limits::kRate);  // absent: no FP8 (sim/fp8.hpp)
    gr.opt_integer("sm_count", c.gpu.sm_count, 1, 1024);  // absent: tp-comm overlap refused (sim/tp_overlap.hpp)
    gr.number("hbm_bytes_per_s", c.gpu.hbm_bytes_per_s, 1, false, limits::kRate);
    gr.string("source", c.gpu.source);
    gr.reject_unknown_keys();
  }
  r.integer("gpus_per_node", c.gpus_per_node, 1, limits::kGpusPerNode);
  r.integer("max_nodes", c.max_nodes, 1, limits::kNodes);
  c.nodes = c.max_nodes;
  r.opt_integer("nodes", c.nodes, 1, limits::kNodes);
  c.gpus = c.nodes * c.gpus_per_node;
  r.opt_integer("gpus", c.gpus, 1, limits::kGpus);
  read_fabric(r, "intra_node", c.intra_node);
  read_fabric(r, "inter_node", c.inter_node);
  check_nccl_channels(r, c);
  read_efficiency(r, c.efficiency);
  if (auto* m = r.object("runtime_memory")) {
    ObjectReader mr(r, "runtime_memory", *m);
    auto& rm = c.runtime_memory;
    mr.integer("cuda_context_bytes", rm.cuda_context_bytes, 0, limits::kBytes);
    mr.integer("workspace_bytes", rm.workspace_bytes, 0, limits::kBytes);
    mr.integer("nccl_bytes_per_communicator", rm.nccl_bytes_per_communicator, 0, limits::kBytes);
    mr.number("allocator_fragmentation", rm.allocator_fragmentation, 0, false);
    mr.number("memory_headroom", rm.memory_headroom, 0, false);
    mr.string("source", rm.source);
    if (!mr.failed() && rm.allocator_fragmentation >= 1) mr.fail("allocator_fragmentation", "must be < 1");
    if (!mr.failed() && rm.memory_headroom >= 1) mr.fail("memory_headroom", "must be < 1");
    mr.reject_unknown_keys();
  }
  if (r.has("profile")) {
    r.string("profile", c.profile);
  }
  read_host(r, c.host);
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  if (!c.profile.empty()) {
    auto prof = profile_beside(where, c.profile);
    if (!prof) return make_error(where, pointer + "/profile: " + prof.error().message);
    c.calibration = *prof;
  }
  if (c.efficiency.gemm_model)
    if (auto s = resolve_gemm_model(c, where, pointer); !s) return s.error();
  if (c.efficiency.memory_curves)
    if (auto s = resolve_memory_curves(c, where, pointer); !s) return s.error();
  if (const auto& a = c.efficiency.attention_curve)
    for (size_t i = 0; i < a->points.size(); ++i)
      for (auto [key, v] : {std::pair{"forward_flops_per_s", a->points[i].forward_flops_per_s},
                            {"backward_flops_per_s", a->points[i].backward_flops_per_s}})
        if (v > c.gpu.peak_flops_bf16)
          return make_error(where, pointer + "/efficiency/attention_curve/points/" + std::to_string(i) + "/" + key +
                                       ": must be <= gpu.peak_flops_bf16 (" +
                                       nlohmann::json(c.gpu.peak_flops_bf16).dump() + ")");
  if (c.gpus > limits::kGpus)
    return make_error(where, pointer + "/gpus: must be <= " + std::to_string(limits::kGpus) + " (got " +
                                 std::to_string(c.gpus) + " = nodes x gpus_per_node; set gpus or nodes)");
  if (c.nodes > c.max_nodes)
    return make_error(where, pointer + "/nodes: must be <= max_nodes (" + std::to_string(c.max_nodes) + ")");
  if (c.gpus > c.nodes * c.gpus_per_node || c.gpus <= (c.nodes - 1) * c.gpus_per_node)
    return make_error(where, pointer + "/gpus: must fill nodes: (nodes-1)*gpus_per_node < gpus <= nodes*gpus_per_node");
  if (c.gpus_per_node > 1 && c.intra_node.kind == "none")
    return make_error(where, pointer + "/intra_node/kind: must not be \"none\" with more than one GPU per node");
  if (c.max_nodes > 1 && c.inter_node.kind == "none")
    return make_error(where, pointer + "/inter_node/kind: must not be \"none\" with more than one node");
  return c;
}

Expected<TrainSpec> train_from_json(const nlohmann::json& j, const std::string& where, const std::string& pointer) {
  TrainSpec t;
  ObjectReader r(j, where, pointer);
  r.integer("global_batch", t.global_batch, 1, limits::kGlobalBatch);
  r.integer("seq", t.seq, 1, limits::kSeq);
  int dtype = 0;  // "bf16", "fp32" or "fp8" (sim/fp8.hpp)
  r.choice("dtype", train_dtype_names(), dtype);
  set_train_dtype(t, train_dtype_names()[static_cast<size_t>(dtype)]);
  read_enum(r, "grad_dtype", dtype_names(), t.grad_dtype, true);
  read_enum(r, "attention", attention_names(), t.attention, true);
  read_enum(r, "cross_entropy", cross_entropy_names(), t.cross_entropy, false);  // default unfused
  read_enum(r, "grad_accumulation", grad_accumulation_names(), t.grad_accumulation, false);  // default fused
  r.opt_boolean("tp_backward_overlap", t.tp_backward_overlap);  // default true (Megatron-LM's)
  r.opt_boolean("pp_scatter_gather", t.pp_scatter_gather);  // default false (Megatron-core's)
  r.integer("dp_bucket_bytes", t.dp_bucket_bytes, 0, limits::kBytes);  // 0: Megatron-core's default for dp
  r.opt_number("moe_capacity_factor", t.moe_capacity_factor, 0, true, 1e6);  // MoE (sim/moe.hpp)
  const bool has_recipe = j.is_object() && j.contains("fp8_recipe");
  read_enum(r, "fp8_recipe", fp8_recipe_names(), t.fp8_recipe, false);  // default delayed
  r.opt_boolean("fp8_param_gather", t.fp8_param_gather);                 // default false
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  for (const auto& [key, set] : {std::pair{"fp8_recipe", has_recipe}, {"fp8_param_gather", t.fp8_param_gather}})
    if (set && !t.fp8)
      return make_error(where, pointer + "/" + key + ": only with dtype \"fp8\" (got dtype \"" + train_dtype_name(t) + "\")");
  return t;
}

Expected<ParallelConfig> parallel_from_json(const nlohmann::json& j, const std::string& where,
                                            const std::string& pointer) {
  ParallelConfig p;
  ObjectReader r(j, where, pointer);
  r.integer("dp", p.dp, 1, limits::kGpus);
  r.integer("tp", p.tp, 1, limits::kGpus);
  r.integer("pp", p.pp, 1, limits::kGpus);
  int64_t zero = 0;
  r.integer("zero", zero, 0);
  if (!r.failed() && zero > 3) r.fail("zero", "must be 0, 1, 2 or 3");
  p.zero = static_cast<int>(zero);
  r.integer("micro_batch", p.micro_batch, 1, limits::kGlobalBatch);
  r.boolean("sp", p.sp);
  r.opt_boolean("tp_comm_overlap", p.tp_comm_overlap);  // default off (sim/tp_overlap.hpp)
  r.opt_boolean("overlap_param_gather", p.overlap_param_gather);  // default off: ZeRO 1/2's gather exposed
  r.opt_boolean("overlap_grad_reduce", p.overlap_grad_reduce);  // default on: buckets beside the backward
  r.opt_boolean("pp_comm_overlap", p.pp_comm_overlap);  // unset: as Megatron-core runs the schedule
  read_enum(r, "recompute", recompute_names(), p.recompute, true);
  r.opt_integer("recompute_layers", p.recompute_layers, 0, limits::kLayers);  // 0: every layer (validate_config)
  r.opt_integer("recompute_every", p.recompute_every, 0, limits::kLayers);    // 0: not every K-th layer
  read_enum(r, "schedule", schedule_names(), p.schedule, true);
  r.integer("vpp", p.vpp, 1, limits::kLayers);
  read_stage_layers(r, j, p.stage_layers);
  r.string("order", p.order);
  read_enum(r, "dp_comm", dp_comm_names(), p.dp_comm, true);
  r.integer("ps_servers", p.ps_servers, 0, limits::kGpus);
  r.number("grad_compression", p.grad_compression, 1, false, 1e6);
  read_enum(r, "offload", offload_names(), p.offload, false);  // default none
  read_enum(r, "cp_comm", cp_comm_names(), p.cp_comm, false);   // default p2p
  r.opt_integer("ep", p.ep, 1, limits::kGpus);    // MoE: default 1
  r.opt_integer("etp", p.etp, 1, limits::kGpus);
  r.opt_integer("cp", p.cp, 1, limits::kGpus);    // context parallelism: default 1
  read_enum(r, "zero3_gather", zero3_gather_names(), p.zero3_gather, false);  // default layer
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  return p;
}

static void add_shape_extras(nlohmann::json& j, const ModelSpec& m) {
  // Written only where set, so the files of models without them stay as they were.
  if (m.head_size > 0) j["head_size"] = m.head_size;
  if (m.qk_norm) j["qk_norm"] = true;
  if (m.post_norms) j["post_norms"] = true;
  if (m.gated_gelu) j["gated_gelu"] = true;
}

nlohmann::json to_json(const ModelSpec& m) {
  nlohmann::json j = {{"name", m.name},
          {"family", to_string(m.family)},
          {"layers", m.layers},
          {"hidden", m.hidden},
          {"heads", m.heads},
          {"kv_heads", m.kv_heads},
          {"ffn_hidden", m.ffn_hidden},
          {"vocab", m.vocab},
          {"seq_len", m.seq_len},
          {"tied_embeddings", m.tied_embeddings},
          {"dropout", m.dropout},
          {"norm_eps", m.norm_eps},
          {"rope_theta", m.rope_theta},
          {"qkv_bias", m.qkv_bias},
          {"published_params", m.published_params},
          {"published_params_precision", m.published_params_precision},
          {"source", m.source}};
  add_shape_extras(j, m);
  moe_keys_to_json(j, m);  // MoE models only (sim/moe_config.hpp)
  mla_keys_to_json(j, m);  // latent-attention models only (sim/mla.hpp)
  return j;
}

static nlohmann::json fabric_json(const FabricSpec& f) {
  nlohmann::json j = {{"kind", f.kind},
                      {"link_bytes_per_s", f.link_bytes_per_s},
                      {"busbw_bytes_per_s", f.busbw_bytes_per_s},
                      {"latency_s", f.latency_s},
                      {"nics_per_node", f.nics_per_node},
                      {"source", f.source}};
  if (f.nccl_channels > 0) j["nccl_channels"] = f.nccl_channels;
  if (f.nvls_algbw_bytes_per_s > 0)
    j["nvls_algbw_bytes_per_s"] = f.nvls_algbw_bytes_per_s, j["nvls_latency_s"] = f.nvls_latency_s;
  return j;
}

nlohmann::json to_json(const ClusterSpec& c) {
  const auto& e = c.efficiency;
  const auto& rm = c.runtime_memory;
  nlohmann::json j = {{"name", c.name},
          {"source", c.source},
          {"gpu",
           {{"name", c.gpu.name},
            {"memory_bytes", c.gpu.memory_bytes},
            {"peak_flops_bf16", c.gpu.peak_flops_bf16},
            {"peak_flops_fp32", c.gpu.peak_flops_fp32},
            {"hbm_bytes_per_s", c.gpu.hbm_bytes_per_s},
            {"source", c.gpu.source}}},
          {"gpus_per_node", c.gpus_per_node},
          {"max_nodes", c.max_nodes},
          {"nodes", c.nodes},
          {"gpus", c.gpus},
          {"intra_node", fabric_json(c.intra_node)},
          {"inter_node", fabric_json(c.inter_node)},
          {"efficiency",
           {{"gemm", e.gemm},
            {"gemm_half_size_flops", e.gemm_half_size_flops},
            {"attention", e.attention},
            {"memory_bound", e.memory_bound},
            {"kernel_launch_s", e.kernel_launch_s},
            {"source", e.source}}},
          {"runtime_memory",
           {{"cuda_context_bytes", rm.cuda_context_bytes},
            {"workspace_bytes", rm.workspace_bytes},
            {"nccl_bytes_per_communicator", rm.nccl_bytes_per_communicator},
            {"allocator_fragmentation", rm.allocator_fragmentation},
            {"memory_headroom", rm.memory_headroom},
            {"source", rm.source}}}};
  if (!c.profile.empty()) j["profile"] = c.profile;
  if (const auto& g = e.gemm_model)
    j["efficiency"]["gemm_model"] = {{"from", g->from},
                                     {"mainloop_efficiency_scale", g->mainloop_efficiency_scale},
                                     {"clock_ratio", g->clock_ratio},
                                     {"source", g->source}};
  if (const auto& m = e.memory_curves)
    j["efficiency"]["memory_curves"] = {
        {"from", m->from}, {"bandwidth_ratio", m->bandwidth_ratio}, {"source", m->source}};
  if (const auto& a = e.attention_curve) {
    nlohmann::json points = nlohmann::json::array();
    for (const AttentionCurvePoint& p : a->points)
      points.push_back({{"head_dim", p.head_dim},
                        {"seq", p.seq},
                        {"forward_flops_per_s", p.forward_flops_per_s},
                        {"backward_flops_per_s", p.backward_flops_per_s}});
    j["efficiency"]["attention_curve"] = {
        {"kernel", a->kernel}, {"points", points}, {"measured", a->measured}, {"source", a->source}};
  }
  if (c.gpu.peak_flops_fp8 > 0) j["gpu"]["peak_flops_fp8"] = c.gpu.peak_flops_fp8;
  if (e.fp8_gemm_efficiency_ratio > 0) j["efficiency"]["fp8_gemm_efficiency_ratio"] = e.fp8_gemm_efficiency_ratio;
  if (c.gpu.sm_count > 0) j["gpu"]["sm_count"] = c.gpu.sm_count;
  if (c.host.memory_bytes > 0)
    j["host"] = {{"link_bytes_per_s", c.host.link_bytes_per_s},
                 {"memory_bytes", c.host.memory_bytes},
                 {"memory_bytes_per_s", c.host.memory_bytes_per_s},
                 {"source", c.host.source}};
  return j;
}

nlohmann::json to_json(const TrainSpec& t) {
  nlohmann::json j = {{"global_batch", t.global_batch}, {"seq", t.seq},
          {"dtype", train_dtype_name(t)},    {"grad_dtype", to_string(t.grad_dtype)},
          {"attention", to_string(t.attention)}, {"cross_entropy", to_string(t.cross_entropy)},
          {"dp_bucket_bytes", t.dp_bucket_bytes}};
  // MoE: written when set apart from its documented default (TrainSpec), so dense plans stay as they were.
  if (t.moe_capacity_factor != TrainSpec{}.moe_capacity_factor) j["moe_capacity_factor"] = t.moe_capacity_factor;
  // Written when separate, so plans that accumulate in the GEMM stay as they were.
  if (t.grad_accumulation != GradAccumulation::fused) j["grad_accumulation"] = to_string(t.grad_accumulation);
  if (!t.tp_backward_overlap) j["tp_backward_overlap"] = false;  // written when off, as above
  if (t.pp_scatter_gather) j["pp_scatter_gather"] = true;  // written when on
  if (t.fp8 && t.fp8_recipe != Fp8Recipe::delayed) j["fp8_recipe"] = to_string(t.fp8_recipe);  // as above
  if (t.fp8 && t.fp8_param_gather) j["fp8_param_gather"] = true;                                    // as above
  return j;
}

nlohmann::json to_json(const ParallelConfig& p) {
  nlohmann::json j = {{"dp", p.dp},
                      {"tp", p.tp},
                      {"pp", p.pp},
                      {"zero", p.zero},
                      {"micro_batch", p.micro_batch},
                      {"sp", p.sp},
                      {"recompute", to_string(p.recompute)},
                      {"schedule", to_string(p.schedule)},
                      {"vpp", p.vpp},
                      {"order", p.order},
                      {"dp_comm", to_string(p.dp_comm)},
                      {"ps_servers", p.ps_servers},
                      {"grad_compression", p.grad_compression}};
  if (!p.stage_layers.empty()) j["stage_layers"] = p.stage_layers;
  if (p.offload != Offload::none) j["offload"] = to_string(p.offload);
  if (p.ep > 1 || p.etp > 1) j["ep"] = p.ep, j["etp"] = p.etp;  // MoE: expert parallelism
  if (p.cp > 1) j["cp"] = p.cp;  // context parallelism: written where set
  if (p.cp_comm != CpComm::p2p) j["cp_comm"] = to_string(p.cp_comm);
  if (p.tp_comm_overlap) j["tp_comm_overlap"] = true;  // written where on (sim/tp_overlap.hpp)
  if (p.overlap_param_gather) j["overlap_param_gather"] = true;  // written where on
  if (!p.overlap_grad_reduce) j["overlap_grad_reduce"] = false;  // written where off
  if (p.pp_comm_overlap) j["pp_comm_overlap"] = *p.pp_comm_overlap;  // written where set
  if (p.recompute_layers > 0) j["recompute_layers"] = p.recompute_layers;  // a block recompute
  if (p.recompute_every > 0) j["recompute_every"] = p.recompute_every;  // every K-th layer of each chunk
  if (p.zero3_gather != Zero3Gather::layer) j["zero3_gather"] = zero3_gather_names()[static_cast<int>(p.zero3_gather)];
  return j;
}

}  // namespace loom
