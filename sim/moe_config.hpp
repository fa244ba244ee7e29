// Mixture-of-experts fields of the model inputs: the keys of a loom model file and of a
// Hugging Face config.json (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3). sim/moe.hpp prices them.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "sim/json_reader.hpp"
#include "sim/specs.hpp"

namespace loom {

// A loom model file's optional MoE keys: experts, experts_per_token, shared_experts,
// expert_ffn_hidden, dense_layers, moe_layer_interval, published_active_params(_precision).
void read_moe_keys(ObjectReader& r, ModelSpec& m);

// Writes the MoE fields of a MoE model (nothing for a dense one, whose files stay as they were).
void moe_keys_to_json(nlohmann::json& j, const ModelSpec& m);

// The base model_type a Hugging Face MoE type shares its attention and norms with
// ("mixtral" -> "mistral", "qwen2_moe" -> "qwen2", "qwen3_moe" -> "qwen3", "deepseek_v2" and
// "deepseek_v3" -> "llama"); `type` itself otherwise.
std::string hf_dense_base_type(const std::string& type);
// Whether model_type names a MoE family loom reads (mixtral, qwen2_moe, qwen3_moe, deepseek_v2/v3).
bool is_hf_moe_type(const std::string& type);

// Reads the MoE keys of any llama-like config (a "mistral" config with num_local_experts is
// Mixtral): Mixtral's num_local_experts, Qwen's num_experts, DeepSeek's n_routed_experts, with
// top-k, expert and shared-expert sizes and which layers are MoE. Keys that would change the
// parameters or FLOPs in a way loom does not model refuse the file.
void read_hf_moe(ObjectReader& r, const nlohmann::json& j, ModelSpec& m, const std::string& type);
// Routing keys that change neither parameters nor matrix FLOPs, with why (listed as ignored).
const std::vector<std::pair<std::string, std::string>>& hf_moe_ignored_reasons();

}  // namespace loom
