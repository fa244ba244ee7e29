#include "sim/plan.hpp"

#include "sim/json_reader.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"

namespace loom {

std::vector<LayerPlacement> layer_placement(int64_t layers, int64_t pp, int64_t vpp) {
  std::vector<LayerPlacement> out;
  const int64_t per_chunk = layers / (pp * vpp);
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t c = l / per_chunk;
    out.push_back({l, c % pp, c / pp});
  }
  return out;
}

namespace {

double as_double(FlopCount f) { return static_cast<double>(f); }

nlohmann::json memory_json(const MemoryBytes& m) {
  return {{"weights", m.weights},   {"grads", m.grads},         {"optimizer", m.optimizer},
          {"activations", m.activations}, {"logits", m.logits}, {"comm_buffers", m.comm_buffers},
          {"workspace", m.workspace}, {"runtime", m.runtime},   {"other", m.other()},
          {"peak", m.peak()}};
}

nlohmann::json comm_json(const CommBytes& c) { return {{"tp", c.tp}, {"dp", c.dp}, {"pp", c.pp}}; }

}  // namespace

nlohmann::json estimate_to_json(const Estimate& e) {
  const auto& p = e.parallel;
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : e.stages) {
    stages.push_back({{"stage", s.index},
                      {"layers", s.layers},
                      {"params", s.params},
                      {"in_flight", s.in_flight},
                      {"memory_bytes", memory_json(s.memory)},
                      {"flops", as_double(s.flops)},
                      {"comm_bytes", comm_json(s.comm)},
                      {"micro_batch_time_s",
                       {{"forward", s.forward_s},
                        {"backward", s.backward_s},
                        {"recompute", s.recompute_s},
                        {"tp_comm", s.tp_comm_s}}},
                      {"dp_comm_exposed_s", s.dp_comm_exposed_s},
                      {"optimizer_s", s.optimizer_s}});
  }
  return {{"model", e.model},
          {"cluster", e.cluster},
          {"params", e.params},
          {"gpus", e.gpus},
          {"dp", p.dp},
          {"tp", p.tp},
          {"pp", p.pp},
          {"zero", p.zero},
          {"micro_batch", p.micro_batch},
          {"micro_batches", e.micro_batches},
          {"global_batch", e.train.global_batch},
          {"seq", e.train.seq},
          {"vpp", p.vpp},
          {"recompute", to_string(p.recompute)},
          {"sp", p.sp},
          {"schedule", to_string(p.schedule)},
          {"order", p.order},
          {"dtype", to_string(e.train.dtype)},
          {"grad_dtype", to_string(e.train.grad_dtype)},
          {"step_time_s", e.step_time_s},
          {"simulated_step_time_s",
           e.simulated_step_time_s > 0 ? nlohmann::json(e.simulated_step_time_s) : nlohmann::json(nullptr)},
          {"tokens_per_s", e.tokens_per_s},
          {"tflops_per_gpu", e.tflops_per_gpu},
          {"mfu", e.mfu},
          {"flops", {{"model", as_double(e.flops_model)}, {"hardware", as_double(e.flops_hardware)}}},
          {"memory_bytes", memory_json(e.memory)},
          {"peak_stage", e.peak_stage},
          {"capacity_bytes", e.capacity_bytes},
          {"usable_bytes", e.usable_bytes},
          {"comm_bytes", comm_json(e.comm)},
          {"time_s",
           {{"compute", e.time.compute_s},
            {"tp_comm", e.time.tp_comm_s},
            {"dp_comm", e.time.dp_comm_s},
            {"pp_comm", e.time.pp_comm_s},
            {"bubble", e.time.bubble_s},
            {"optimizer", e.time.optimizer_s}}},
          {"dp_alternatives_s",
           {{"ring_all_reduce", e.dp_alternatives.ring_all_reduce_s},
            {"parameter_server", e.dp_alternatives.parameter_server_s},
            {"compressed_ring", e.dp_alternatives.compressed_ring_s}}},
          {"stages", stages},
          {"fits", e.fits},
          {"reason", e.reason}};
}

nlohmann::json layout_to_json(const ParallelConfig& p, int64_t layers) {
  nlohmann::json lay = nlohmann::json::array();
  for (const auto& l : layer_placement(layers, p.pp, p.vpp))
    lay.push_back({{"layer", l.layer}, {"stage", l.stage}, {"chunk", l.chunk}});
  nlohmann::json ranks = nlohmann::json::array();
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  if (grid)
    for (int64_t r = 0; r < grid->world(); ++r) {
      auto c = grid->coords(r);
      ranks.push_back({{"rank", r}, {"dp", c.dp}, {"pp", c.pp}, {"tp", c.tp}});
    }
  return {{"layers", lay}, {"ranks", ranks}};
}

nlohmann::json plan_to_json(const Plan& plan) {
  return {{"model", to_json(plan.model)},
          {"cluster", to_json(plan.cluster)},
          {"train", to_json(plan.train)},
          {"parallel", to_json(plan.parallel)},
          {"layout", layout_to_json(plan.parallel, plan.model.layers)},
          {"prediction", estimate_to_json(plan.prediction)}};
}

Expected<Plan> plan_from_json(const nlohmann::json& j, const std::string& where) {
  ObjectReader r(j, where);
  const nlohmann::json* mj = r.object("model");
  const nlohmann::json* cj = r.object("cluster");
  const nlohmann::json* tj = r.object("train");
  const nlohmann::json* pj = r.object("parallel");
  const nlohmann::json* lj = r.object("layout");
  r.opt_object("prediction");
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
    const bool train_field = f == "global_batch" || f == "seq";
    return where + ": /" + (train_field ? "train/" : "parallel/") + f;
  });
  if (!st) return st.error();
  if (*lj != layout_to_json(plan.parallel, plan.model.layers))
    return make_error(where, "/layout: does not match the layout /parallel implies (edit parallel, not layout)");
  return plan;
}

}  // namespace loom
