#include "planner/cli/offload_cli.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "sim/cost_model.hpp"
#include "sim/offload.hpp"
#include "sim/validate.hpp"

namespace loom::cli {

namespace {
double offload_gib(int64_t b) { return static_cast<double>(b) / 1073741824.0; }

std::string all_names() {
  std::string s;
  for (const auto& n : offload_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}
}  // namespace

Expected<Offload> parse_offload(const std::string& text) {
  const auto& names = offload_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == text) return static_cast<Offload>(i);
  return make_error("--offload", "must be one of " + all_names() + " (got " + text + ")");
}

Expected<std::vector<Offload>> parse_offload_choices(const std::string& text) {
  if (text == "any") return std::vector<Offload>{Offload::none, Offload::optimizer, Offload::optimizer_params,
                                                 Offload::activations};
  std::vector<Offload> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    auto o = parse_offload(text.substr(pos, comma - pos));
    if (!o) return make_error("--offload", "must be any or a comma-separated list of " + all_names() + " (got " +
                                               text + ")");
    if (std::find(out.begin(), out.end(), *o) == out.end()) out.push_back(*o);
    pos = comma + 1;
  }
  return out;
}

Status apply_offload(Plan& plan, const std::string& text) {
  if (text.empty()) return ok_status();
  auto o = parse_offload(text);
  if (!o) return o.error();
  plan.parallel.offload = *o;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) {
    return f == "offload" ? std::string("--offload") : "--offload: the plan's " + f;
  });
  if (!st) return st;
  CostModel cm(plan.model, plan.cluster, plan.train);
  plan.prediction = cm.evaluate(plan.parallel);
  return check_host_memory_fits(plan.prediction);
}

Status check_host_memory_fits(const Estimate& e) {
  if (e.parallel.offload == Offload::none || e.host_memory_bytes <= e.host_capacity_bytes) return ok_status();
  return make_error("--offload", fmt::format("{} needs {:.1f} GiB of host memory per node, more than the cluster's "
                                             "{:.1f} GiB (got {})",
                                             to_string(e.parallel.offload), offload_gib(e.host_memory_bytes),
                                             offload_gib(e.host_capacity_bytes), to_string(e.parallel.offload)));
}

Status refuse_offload(const Plan& plan, const std::string& path) {
  if (plan.parallel.offload == Offload::none) return ok_status();
  return make_error(path, "/parallel/offload: loom's executors run no offload; export the plan to DeepSpeed, "
                          "Megatron-LM or torchtitan (got " + to_string(plan.parallel.offload) + ")");
}

Status offload_from_deepspeed(const nlohmann::json& doc, const std::string& path, ParallelConfig& p) {
  const nlohmann::json* z = doc.contains("zero_optimization") ? &doc["zero_optimization"] : nullptr;
  auto on = [&](const char* key) {
    return z && z->is_object() && z->contains(key) && (*z)[key].is_object() && (*z)[key].value("device", "none") == "cpu";
  };
  const bool opt = on("offload_optimizer"), params = on("offload_param");
  if (opt && (*z)["offload_optimizer"].contains("ratio") && (*z)["offload_optimizer"]["ratio"] != 1.0)
    return make_error(path + ": zero_optimization.offload_optimizer.ratio",
                      "loom prices the whole optimizer on the CPU (1.0; got " + (*z)["offload_optimizer"]["ratio"].dump() + ")");
  if (params && !opt)
    return make_error(path + ": zero_optimization.offload_param",
                      "offloading the parameters without the optimizer is not modelled (add offload_optimizer)");
  p.offload = params ? Offload::optimizer_params : opt ? Offload::optimizer : Offload::none;
  return ok_status();
}

std::string offload_report(const Estimate& e) {
  if (e.parallel.offload == Offload::none || e.stages.empty()) return "";
  const StageEstimate& st = e.stages[e.peak_stage];
  return fmt::format("host link (offload {}): {:.3g} bytes per GPU per step, {:.4f} s exposed per step "
                     "({:.4f} s per micro-batch, {:.4f} s around the CPU optimizer); host memory "
                     "{:.1f} of {:.1f} GiB per node\n",
                     to_string(e.parallel.offload), static_cast<double>(e.comm.host), e.time.host_comm_s, st.host_s,
                     st.host_step_s, offload_gib(e.host_memory_bytes), offload_gib(e.host_capacity_bytes));
}

}  // namespace loom::cli
