// Offload (sim/offload.hpp) in the engines' own names, for planner/export.cpp. Each names
// what it cannot express in `no`.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "sim/specs.hpp"

namespace loom {

// Megatron-LM (arguments.py at the commit export.cpp names): --optimizer-cpu-offload with
// --optimizer-offload-fraction 1.0 (all of the optimizer on the CPU) and
// --use-precision-aware-optimizer, which the hybrid device optimizer requires.
void megatron_offload(const ParallelConfig& p, std::vector<std::pair<std::string, std::string>>& args,
                      std::vector<std::string>& no);
// torchtitan v0.2.2: [training] enable_cpu_offload (FSDP2's CPUOffloadPolicy: parameters,
// gradients and optimizer state together). Returns the lines for [training].
std::string torchtitan_offload(const ParallelConfig& p, std::vector<std::string>& no);
// DeepSpeed (zero/offload_config.py): zero_optimization.offload_optimizer and offload_param,
// {"device": "cpu", "pin_memory": true}; offload_param needs stage 3. `stage` is the stage emitted.
void deepspeed_offload(const ParallelConfig& p, int stage, nlohmann::ordered_json& zero,
                       std::vector<std::string>& no);

}  // namespace loom
