// Human-readable tables of an Estimate: what `loom predict` prints and what `loom plan`
// prints for its winner.
#pragma once
#include <string>

#include "sim/estimate.hpp"
#include "sim/specs.hpp"

namespace loom::cli {

std::string describe_config(const Estimate& e);        // "dp 8  tp 8  pp 16 ..."
std::string memory_table(const Estimate& e);
std::string time_table(const Estimate& e);
std::string throughput_line(const Estimate& e);
std::string full_report(const Estimate& e, const ClusterSpec& c);

}  // namespace loom::cli
