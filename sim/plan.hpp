// A Plan: the four inputs, the derived layout (layer -> stage and chunk, rank -> (dp, pp, tp)
// coordinates) and the prediction: one JSON document that `predict --plan`, `simulate` and
// `execute` take as is.
#pragma once
#include <nlohmann/json.hpp>

#include <vector>

#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"
#include "sim/step_result.hpp"

namespace loom {

struct LayerPlacement {
  int64_t layer = 0, stage = 0, chunk = 0;  // chunk: virtual stage index on that rank
};

// Megatron-LM's interleaved assignment: model chunk c = k * pp + i (rank i's k-th chunk)
// holds the next stage_layers[i] / v layers after chunks 0 .. c - 1 (L/(pp v) each without
// stage_layers); with v = 1 stage i holds one block.
std::vector<LayerPlacement> layer_placement(int64_t layers, int64_t pp, int64_t vpp,
                                            const std::vector<int64_t>& stage_layers = {});
// The placement `p` runs: the one above, or under zb-v the V (sim/schedule.hpp): virtual stage
// k (chunk 0 of stage k for k < pp, chunk 1 of stage 2 pp - 1 - k after) holds the next
// layers / (2 pp) layers, so stage 0 holds the first and the last layers.
std::vector<LayerPlacement> layer_placement(const ParallelConfig& p, int64_t layers);

struct Plan {
  ModelSpec model;
  ClusterSpec cluster;
  TrainSpec train;
  ParallelConfig parallel;
  Estimate prediction;
};

nlohmann::json layout_to_json(const ParallelConfig& p, int64_t layers);
nlohmann::json plan_to_json(const Plan& plan);
// Reads model, cluster, train and parallel strictly and checks that the layout is the one
// they imply; the prediction (optional) must be a well-formed step result (sim/step_result.hpp)
// of the same configuration, but is not trusted: the caller re-evaluates it.
Expected<Plan> plan_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace loom
