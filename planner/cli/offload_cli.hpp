// --offload on the command line (sim/offload.hpp): parsing, the plan a flag changes, the
// refusals, and the report lines that say what the host link costs.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"
#include "sim/specs.hpp"

namespace loom::cli {

// predict, simulate: one of none, optimizer, optimizer+params, activations.
Expected<Offload> parse_offload(const std::string& text);
// plan: the choices to search: one of them, a comma-separated list, or "any" (all four).
Expected<std::vector<Offload>> parse_offload_choices(const std::string& text);
// simulate --offload: the plan's offload replaced, checked and priced again ("" leaves it).
Status apply_offload(Plan& plan, const std::string& text);
// An offload the user asked for whose host buffers exceed the node's host memory: one line.
Status check_host_memory_fits(const Estimate& e);
// loom's executors run no offload: the plan is refused by name (export it to an engine).
Status refuse_offload(const Plan& plan, const std::string& path);
// loom import deepspeed: zero_optimization.offload_optimizer / offload_param with device cpu
// (ds_zero refuses other devices) -> optimizer or optimizer+params; a partial ratio, or params
// without the optimizer, is refused.
Status offload_from_deepspeed(const nlohmann::json& doc, const std::string& path, ParallelConfig& p);

// "host link: ..." lines of a report: bytes and exposed time per step, host memory; "" without offload.
std::string offload_report(const Estimate& e);

}  // namespace loom::cli
