// The event simulator's step as a step result (sim/step_result.hpp): what the simulation
// decides (the step time, its breakdown, the throughput that follows from it) from SimResult;
// memory, FLOPs and bytes from the cost model's description of the same configuration, which
// the simulator schedules and does not change.
#pragma once
#include "sim/estimate.hpp"
#include "sim/simulator.hpp"

namespace loom {

// `analytical`: CostModel::evaluate of the configuration that `sim` simulated.
Estimate simulated_estimate(const Estimate& analytical, const SimResult& sim);

}  // namespace loom
