// Strict JSON load and save of the four inputs. Loaders take the parsed document and a
// `where` (file or flag) used in error lines: "<where>: <json pointer>: <rule>".
#pragma once
#include <functional>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom {

// Names of enum values as they appear in JSON and on the command line.
const std::vector<std::string>& family_names();
const std::vector<std::string>& dtype_names();
const std::vector<std::string>& recompute_names();
const std::vector<std::string>& schedule_names();
const std::vector<std::string>& attention_names();
const std::vector<std::string>& dp_comm_names();
const std::vector<std::string>& cross_entropy_names();
const std::vector<std::string>& grad_accumulation_names();
std::string to_string(Family f);
std::string to_string(Dtype d);
std::string to_string(Recompute r);
std::string to_string(Schedule s);
std::string to_string(Attention a);
std::string to_string(DpComm d);
std::string to_string(CpComm c);
const std::vector<std::string>& cp_comm_names();
std::string to_string(CrossEntropy c);
std::string to_string(GradAccumulation g);
const std::vector<std::string>& fp8_recipe_names();
std::string to_string(Fp8Recipe f);

// A loom model file, or a Hugging Face config.json (recognised by "model_type"). Keys of a
// Hugging Face config that loom does not use are appended to `ignored_keys`.
// `pointer` is where the object sits inside `where` ("/model" inside a plan file), so error
// lines read "plan.json: /model/layers: must be >= 1".
Expected<ModelSpec> model_from_json(const nlohmann::json& j, const std::string& where,
                                    std::vector<std::string>* ignored_keys = nullptr,
                                    const std::string& pointer = "");
Expected<ModelSpec> model_from_hf_config(const nlohmann::json& j, const std::string& where,
                                         std::vector<std::string>* ignored_keys);
Expected<ClusterSpec> cluster_from_json(const nlohmann::json& j, const std::string& where,
                                        const std::string& pointer = "");
Expected<TrainSpec> train_from_json(const nlohmann::json& j, const std::string& where,
                                    const std::string& pointer = "");
Expected<ParallelConfig> parallel_from_json(const nlohmann::json& j, const std::string& where,
                                            const std::string& pointer = "");

nlohmann::json to_json(const ModelSpec& m);
nlohmann::json to_json(const ClusterSpec& c);
nlohmann::json to_json(const TrainSpec& t);
nlohmann::json to_json(const ParallelConfig& p);

// Per-model checks that need no configuration: heads divide hidden, kv_heads divide heads.
// `key` (when set) names a field as the file names it (a Hugging Face config's keys).
Status check_model(const ModelSpec& m, const std::string& where, const std::string& pointer = "",
                   const std::function<std::string(const std::string&)>& key = nullptr);

}  // namespace loom
