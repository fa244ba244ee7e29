#include "sim/plan.hpp"

#include <optional>
#include <string>

#include "sim/json_reader.hpp"
#include "sim/schedule.hpp"
#include "sim/spec_json.hpp"
#include "sim/step_result.hpp"
#include "sim/validate.hpp"

namespace loom {

std::vector<LayerPlacement> layer_placement(int64_t layers, int64_t pp, int64_t vpp,
                                            const std::vector<int64_t>& stage_layers) {
  std::vector<LayerPlacement> out;
  ParallelConfig p;
  p.pp = pp, p.vpp = vpp, p.stage_layers = stage_layers;
  int64_t l = 0;
  for (int64_t c = 0; c < pp * vpp; ++c) {
    const int64_t stage = c % pp, chunk = c / pp, n = chunk_layers_at(p, layers, stage, chunk);
    for (int64_t i = 0; i < n && l < layers; ++i, ++l) out.push_back({l, stage, chunk});
  }
  return out;
}

std::vector<LayerPlacement> layer_placement(const ParallelConfig& p, int64_t layers) {
  if (p.schedule != Schedule::zb_v) return layer_placement(layers, p.pp, p.vpp, p.stage_layers);
  std::vector<LayerPlacement> out;
  const int64_t per_chunk = layers / (2 * p.pp);
  for (int64_t l = 0; l < per_chunk * 2 * p.pp; ++l) {
    const StageChunk sc = stage_chunk(p.schedule, l / per_chunk, p.pp);
    out.push_back({l, sc.stage, sc.chunk});
  }
  return out;
}

nlohmann::json layout_to_json(const ParallelConfig& p, int64_t layers) {
  nlohmann::json lay = nlohmann::json::array();
  for (const auto& l : layer_placement(p, layers))
    lay.push_back({{"layer", l.layer}, {"stage", l.stage}, {"chunk", l.chunk}});
  nlohmann::json ranks = nlohmann::json::array();
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (grid)
    for (int64_t r = 0; r < grid->world(); ++r) {
      auto c = grid->coords(r);
      ranks.push_back({{"rank", r}, {"dp", c.dp}, {"pp", c.pp}, {"tp", c.tp}});
      if (p.cp > 1) ranks.back()["cp"] = c.cp;  // context parallelism: the rank's place in its cp group
    }
  return {{"layers", lay}, {"ranks", ranks}};
}

nlohmann::json plan_to_json(const Plan& plan) {
  return {{"schema_version", kJsonSchemaVersion},
          {"model", to_json(plan.model)},
          {"cluster", to_json(plan.cluster)},
          {"train", to_json(plan.train)},
          {"parallel", to_json(plan.parallel)},
          {"layout", layout_to_json(plan.parallel, plan.model.layers)},
          {"prediction", estimate_to_json(plan.prediction)}};
}

namespace {

// A plan's prediction is re-evaluated by whoever reads it, but it must still be a well-formed
// prediction of this plan's configuration.
Status check_prediction(const nlohmann::json& j, const Plan& plan, const std::string& where) {
  auto e = estimate_from_json(j, where, "/prediction");
  if (!e) return e.error();
  if (e->source != StepSource::predicted)
    return make_error(where, "/prediction/source: must be predicted (got " + to_string(e->source) + ")");
  Estimate config;
  config.model = plan.model.name;
  config.parallel = plan.parallel;
  config.train = plan.train;
  if (auto d = configuration_difference(*e, "prediction", config, "plan"))
    return make_error(where, "/prediction: " + *d + ": not the plan's configuration");
  return ok_status();
}

// What a JSON document is when it is another of loom's documents, not a plan: a Chrome trace,
// a step result (predict --json, simulate --json, a measured report) or plan --json's output.
std::optional<std::string> other_document(const nlohmann::json& j) {
  if (!j.is_object()) return std::nullopt;
  if (j.contains("traceEvents")) return "a Chrome trace (simulate or execute --trace)";
  if (j.contains("source") && j["source"].is_string() && j.contains("step_time_s"))
    return "a " + j["source"].get<std::string>() + " step result (predict --json, simulate --json or execute --report)";
  if (j.contains("top") && j.contains("considered")) return "plan --json's output";
  return std::nullopt;
}

}  // namespace

Expected<Plan> plan_from_json(const nlohmann::json& j, const std::string& where) {
  if (auto what = other_document(j))
    return make_error(where, "is " + *what + ", not a plan (predict -o or plan -o writes one)");
  ObjectReader r(j, where);
  read_schema_version(r, j);
  const nlohmann::json* mj = r.object("model");
  const nlohmann::json* cj = r.object("cluster");
  const nlohmann::json* tj = r.object("train");
  const nlohmann::json* pj = r.object("parallel");
  const nlohmann::json* lj = r.object("layout");
  const nlohmann::json* ej = r.opt_object("prediction");
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  Plan plan;
  // Sub-documents report their fields under the plan's pointer ("plan.json: /model/...").
  auto m = model_from_json(*mj, where, nullptr, "/model");
  if (!m) return m.error();
  auto c = cluster_from_json(*cj, where, "/cluster");
  if (!c) return c.error();
  auto t = train_from_json(*tj, where, "/train");
  if (!t) return t.error();
  auto p = parallel_from_json(*pj, where, "/parallel");
  if (!p) return p.error();
  plan.model = *m;
  plan.cluster = *c;
  plan.train = *t;
  plan.parallel = *p;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [&](const std::string& f) {
    const bool train_field = f == "global_batch" || f == "seq" || f == "moe_capacity_factor";
    return where + ": /" + (train_field ? "train/" : "parallel/") + f;
  });
  if (!st) return st.error();
  if (*lj != layout_to_json(plan.parallel, plan.model.layers))
    return make_error(where, "/layout: does not match the layout /parallel implies (edit parallel, not layout)");
  if (ej) {
    auto st = check_prediction(*ej, plan, where);
    if (!st) return st.error();
  }
  return plan;
}

}  // namespace loom
