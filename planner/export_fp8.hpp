// FP8 training (sim/fp8.hpp) in the engines' own names, for planner/export.cpp and the importers
// (planner/cli/cmd_import*.cpp). Each names what it cannot express in `no`.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "sim/specs.hpp"

namespace loom {

// Megatron-LM (arguments.py at the commit export.cpp names): Transformer Engine's delayed
// scaling, the hybrid format (E4M3 forward, E5M2 gradients), an amax history of
// kFp8AmaxHistory steps reduced by max: --fp8-format hybrid --fp8-amax-history-len 1024
// --fp8-amax-compute-algo max. The output layer stays bf16 (Megatron's default).
void megatron_fp8(const TrainSpec& t, std::vector<std::pair<std::string, std::string>>& args);
// torchtitan v0.2.2: [model] converters = ["quantize.linear.float8"] with
// [quantize.linear.float8] recipe_name = "tensorwise" and filter_fqns = ["output"] (the output
// layer in bf16, as loom prices it). Returns the [quantize.linear.float8] table ("" without
// FP8) and sets `converters` to the [model] line.
std::string torchtitan_fp8(const TrainSpec& t, std::string& converters, std::vector<std::string>& no);
// DeepSpeed has no FP8 training config (its FP8 needs Transformer Engine in the model code).
void deepspeed_fp8(const TrainSpec& t, std::vector<std::string>& no);

}  // namespace loom
