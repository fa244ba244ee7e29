#include "sim/moe_config.hpp"

#include "sim/validate.hpp"

namespace loom {

namespace {

bool moe_present(const nlohmann::json& j, const std::string& key) { return j.contains(key) && !j.at(key).is_null(); }

// Experts a layer may have (sim/moe.cpp checks the same bound on the model).
constexpr int64_t kMaxExpertCount = int64_t{1} << 16;

}  // namespace

void read_moe_keys(ObjectReader& r, ModelSpec& m) {
  r.opt_integer("experts", m.experts, 0, kMaxExpertCount);
  r.opt_integer("experts_per_token", m.experts_per_token, 0, kMaxExpertCount);
  r.opt_integer("shared_experts", m.shared_experts, 0, kMaxExpertCount);
  r.opt_boolean("shared_expert_gate", m.shared_expert_gate);
  r.opt_integer("expert_ffn_hidden", m.expert_ffn_hidden, 0, limits::kFfnHidden);
  r.opt_integer("dense_layers", m.dense_layers, 0, limits::kLayers);
  r.opt_integer("moe_layer_interval", m.moe_layer_interval, 1, limits::kLayers);
  r.opt_number("published_active_params", m.published_active_params, 0, false);
  r.opt_number("published_active_params_precision", m.published_active_params_precision, 0, false);
}

void moe_keys_to_json(nlohmann::json& j, const ModelSpec& m) {
  if (!m.is_moe()) return;
  j["experts"] = m.experts;
  j["experts_per_token"] = m.experts_per_token;
  j["shared_experts"] = m.shared_experts;
  if (m.shared_expert_gate) j["shared_expert_gate"] = true;
  j["expert_ffn_hidden"] = m.expert_ffn_hidden;
  j["dense_layers"] = m.dense_layers;
  j["moe_layer_interval"] = m.moe_layer_interval;
  if (m.published_active_params > 0) {
    j["published_active_params"] = m.published_active_params;
    j["published_active_params_precision"] = m.published_active_params_precision;
  }
}

std::string hf_dense_base_type(const std::string& type) {
  if (type == "mixtral") return "mistral";
  if (type == "qwen2_moe") return "qwen2";
  if (type == "qwen3_moe") return "qwen3";
  // DeepSeek-V2/V3: Llama's RMSNorms, RoPE and SwiGLU MLPs around latent attention (sim/mla.hpp).
  if (type == "deepseek_v2" || type == "deepseek_v3") return "llama";
  return type;
}

bool is_hf_moe_type(const std::string& type) {
  return type == "mixtral" || type == "qwen2_moe" || type == "qwen3_moe" || type == "deepseek_v2" ||
         type == "deepseek_v3";
}

const std::vector<std::pair<std::string, std::string>>& hf_moe_ignored_reasons() {
  static const std::vector<std::pair<std::string, std::string>> v{
      {"output_router_logits", "returns the router logits for the auxiliary loss; no parameters"},
      {"router_aux_loss_coef", "the load-balancing loss weight: elementwise over tokens x experts, no matrix FLOPs"},
      {"router_jitter_noise", "noise on the router input while training: elementwise"},
      {"norm_topk_prob", "renormalising the top-k weights: elementwise"},
      {"topk_method", "how the top-k is chosen, not how many experts run"},
      {"n_group", "group-limited routing: which experts, not how many"},
      {"topk_group", "group-limited routing: which experts, not how many"},
      {"routed_scaling_factor", "a scale on the routed output: elementwise"},
      {"scoring_func", "softmax or sigmoid router scores: elementwise"},
      {"aux_loss_alpha", "the load-balancing loss weight"},
      {"seq_aux", "the load-balancing loss per sequence"},
      {"ep_size", "an inference-time expert split; the plan's --ep sets it"},
      // DeepSeek-V3 (arXiv 2412.19437, Sec. 2.2): one multi-token-prediction module. transformers'
      // DeepseekV3ForCausalLM does not build it (the checkpoint's layer 61, 14B of its 685B, is
      // skipped on load), and loom does not price it: plans are for next-token training of the
      // 671B main model.
      {"num_nextn_predict_layers", "the multi-token-prediction module, not built by DeepseekV3ForCausalLM and not "
                                   "priced (next-token training of the main model)"},
      {"quantization_config", "the checkpoint's storage format (DeepSeek-V3: FP8 blocks); --dtype sets precision"},
      {"auto_map", "where transformers finds the model's Python code"},
      {"use_mla", "multi-head latent attention is read from kv_lora_rank"}};
  return v;
}

namespace {

// Which layers are MoE. Qwen2-MoE: (layer_idx + 1) % decoder_sparse_step == 0 and not in
// mlp_only_layers (transformers Qwen2MoeDecoderLayer); only step 1 (every layer) and no
// exceptions agree with DeepSeek's rule loom keeps. DeepSeek: first_k_dense_replace dense
// layers, then every moe_layer_freq-th layer.
void read_hf_moe_layers(ObjectReader& r, const nlohmann::json& j, ModelSpec& m) {
  int64_t step = 1;
  if (moe_present(j, "decoder_sparse_step")) r.integer("decoder_sparse_step", step, 1, limits::kLayers);
  else r.skip("decoder_sparse_step");
  if (!r.failed() && step != 1)
    r.fail("decoder_sparse_step", "only 1 (every layer MoE) is modelled (got " + std::to_string(step) + ")");
  if (moe_present(j, "mlp_only_layers") && !(j.at("mlp_only_layers").is_array() && j.at("mlp_only_layers").empty()))
    r.fail("mlp_only_layers", "dense exceptions among the MoE layers are not modelled (got " +
                                  j.at("mlp_only_layers").dump() + ")");
  r.skip("mlp_only_layers");
  if (moe_present(j, "first_k_dense_replace")) r.integer("first_k_dense_replace", m.dense_layers, 0, limits::kLayers);
  else r.skip("first_k_dense_replace");
  if (moe_present(j, "moe_layer_freq")) r.integer("moe_layer_freq", m.moe_layer_interval, 1, limits::kLayers);
  else r.skip("moe_layer_freq");
}

// Shared experts: DeepSeek's n_shared_experts FFNs of moe_intermediate_size; Qwen2-MoE's one
// shared FFN of shared_expert_intermediate_size, counted as that size over the expert size
// (Qwen1.5-MoE-A2.7B: 5632 = 4 x 1408). Qwen2-MoE also gates the shared expert's output with a
// hidden x 1 sigmoid gate (shared_expert_gate, set by read_hf_moe for model_type qwen2_moe).
void read_hf_shared(ObjectReader& r, const nlohmann::json& j, ModelSpec& m) {
  if (moe_present(j, "n_shared_experts")) r.integer("n_shared_experts", m.shared_experts, 0, kMaxExpertCount);
  else r.skip("n_shared_experts");
  if (!moe_present(j, "shared_expert_intermediate_size")) {
    r.skip("shared_expert_intermediate_size");
    return;
  }
  int64_t size = 0;
  r.integer("shared_expert_intermediate_size", size, 0, limits::kFfnHidden);
  if (r.failed() || size == 0) return;
  if (size % m.expert_ffn_hidden != 0)
    r.fail("shared_expert_intermediate_size", "must be a multiple of moe_intermediate_size (" +
                                                  std::to_string(size) + " % " + std::to_string(m.expert_ffn_hidden) +
                                                  " != 0)");
  m.shared_experts = size / m.expert_ffn_hidden;
}

}  // namespace

void read_hf_moe(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type) {
  const char* count_key = nullptr;
  for (const char* k : {"num_local_experts", "num_experts", "n_routed_experts"}) {
    if (!moe_present(j, k)) {
      r.skip(k);
      continue;
    }
    if (count_key) return r.fail(k, std::string("gives the experts a second time (") + count_key + " did)");
    count_key = k;
  }
  int64_t experts = 0;
  if (count_key) r.integer(count_key, experts, 0, kMaxExpertCount);
  if (r.failed()) return;
  if (experts <= 1) {  // no experts, or one: a dense MLP
    if (is_hf_moe_type(type))
      return r.fail(count_key ? count_key : "num_local_experts", "model_type " + type + " needs 2 or more experts");
    for (const char* k : {"num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                          "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers",
                          "first_k_dense_replace", "moe_layer_freq"})
      r.skip(k);
    return;
  }
  m.experts = experts;
  r.integer("num_experts_per_tok", m.experts_per_token, 1, experts);
  // Mixtral's experts are FFNs of intermediate_size (MixtralBlockSparseTop2MLP); Qwen's and
  // DeepSeek's of moe_intermediate_size, intermediate_size being their dense layers'.
  if (std::string(count_key) == "num_local_experts") m.expert_ffn_hidden = m.ffn_hidden;
  else r.integer("moe_intermediate_size", m.expert_ffn_hidden, 1, limits::kFfnHidden);
  if (r.failed()) return;
  read_hf_shared(r, j, m);
  // Qwen2MoeSparseMoeBlock always builds shared_expert_gate beside its shared expert.
  m.shared_expert_gate = type == "qwen2_moe" && m.shared_experts > 0;
  if (!r.failed()) read_hf_moe_layers(r, j, m);
}

}  // namespace loom
