// `loom export plan.json --to megatron|torchtitan|deepspeed`: a plan as the arguments or
// config of the engine a user already runs at scale, and the list of what that engine cannot
// express. Every option name was read in the engine's source at a fixed commit (Megatron-LM
// d98e8a64, torchtitan v0.2.2 73a0e697, DeepSpeed edaa7221; recorded beside each exporter in
// export.cpp); none from memory.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom {

enum class Engine { megatron, torchtitan, deepspeed };
const std::vector<std::string>& engine_names();  // "megatron", "torchtitan", "deepspeed"

struct ExportResult {
  std::string text;                        // what goes to stdout (arguments, TOML or JSON)
  std::vector<std::string> unexpressible;  // one line each: what the engine cannot express, what was emitted instead
};

// The plan must have passed validate_config (plan_from_json does that).
ExportResult export_plan(const Plan& plan, Engine engine);

// torchtitan v0.2.2 checkpoints every K-th block by a process-wide count that runs on across a
// rank's model parts, where ParallelConfig::recompute_every counts each chunk from 1: the two
// agree where each of a rank's chunks but its last holds a multiple of K layers. The first
// chunk where they part (its stage, its index on the rank, its layers), or none. Export and
// import both read this one rule.
struct ChunkAt {
  int64_t stage = 0, chunk = 0, layers = 0;
};
std::optional<ChunkAt> torchtitan_count_parts(const ModelSpec& m, const ParallelConfig& p, int64_t k);

}  // namespace loom
