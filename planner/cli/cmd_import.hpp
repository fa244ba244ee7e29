// `loom import ENGINE FILE`: what the importers share. Each engine's reader (cmd_import.cpp:
// Megatron-LM, cmd_import_torchtitan.cpp, cmd_import_deepspeed.cpp) turns the file into a Plan
// without a prediction; a key that changes the model in a way loom does not price refuses the
// file, any other key loom does not read is listed on stderr, one line each.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::cli {

struct ImportOptions {
  std::string engine;
  std::string path;
  std::string cluster;
  std::optional<int64_t> gpus;
  std::string out_path;
  bool json = false;
  bool compare_best = false;
  // What the engine's file does not hold: the model (a DeepSpeed config never names it; a
  // torchtitan flavor registered in Python), the sequence length and, for DeepSpeed, the
  // tensor and pipeline sizes and recompute that its model code decides.
  std::string model;
  std::optional<int64_t> seq;
  std::optional<int64_t> tp, pp;
  std::string recompute;
};

Expected<Plan> plan_from_megatron(const ImportOptions& o);
Expected<Plan> plan_from_torchtitan(const ImportOptions& o);
Expected<Plan> plan_from_deepspeed(const ImportOptions& o);

// The cluster named by --cluster, sized to --gpus (both required).
Expected<ClusterSpec> import_cluster(const ImportOptions& o);
// One stderr line per key loom read but does not price: "loom: FILE: KEY VALUE: ignored (...)".
void print_ignored(const std::string& path, const std::vector<std::pair<std::string, std::string>>& keys);

// "your configuration runs at X; loom's best at Y, because ...": the search `loom plan` runs for
// the same model, cluster, GPUs, batch, sequence and dtype, set against the imported plan.
struct BestComparison {
  std::string text;   // the human-readable comparison
  nlohmann::json json;  // {"imported", "best" (null when nothing fits), "speedup"}
};
Expected<BestComparison> compare_with_best(const Plan& imported);

}  // namespace loom::cli
