// The model and cluster zoo (models/*.json, models/clusters/*.json), embedded in the binary
// at build time so `loom` works from any directory. `--model` and `--cluster` take a zoo
// name or a path.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom {

struct ZooEntry {
  std::string_view name;
  std::string_view json;
};
const std::vector<ZooEntry>& model_zoo();
const std::vector<ZooEntry>& cluster_zoo();

// `flag` names the option in error lines ("--model"). Unused keys of a Hugging Face
// config.json are appended to `ignored_keys`.
Expected<ModelSpec> load_model(const std::string& name_or_path, const std::string& flag,
                               std::vector<std::string>* ignored_keys);
Expected<ClusterSpec> load_cluster(const std::string& name_or_path, const std::string& flag);

}  // namespace loom
