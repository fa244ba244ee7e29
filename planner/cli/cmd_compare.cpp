// loom compare: predicted against measured, field by field. The prediction is re-evaluated from
// the plan (a plan file's prediction is not trusted); the measurement is `loom execute --report`,
// which uses the same field names.
#include <fmt/core.h>

#include <cmath>
#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/validation.hpp"

namespace loom::cli {

namespace {

struct CompareOptions {
  std::string plan_path, measured_path;
  bool json = false;
};

const char* kMemory[] = {"weights", "grads", "optimizer", "activations", "logits",
                         "comm_buffers", "workspace", "runtime", "other", "peak"};

// Dotted names of every numeric field both documents can hold, job level then per stage. Time
// by category: the prediction's exposed times; a measured pp_comm holds the wait for the
// neighbour stage too, so it is compared with pp_comm + bubble (time_s.pp_comm+bubble).
std::vector<std::string> field_names(int64_t stages) {
  std::vector<std::string> f = {"step_time_s", "tokens_per_s", "flops.hardware"};
  for (const char* t : {"compute", "tp_comm", "dp_comm", "pp_comm+bubble", "optimizer"})
    f.push_back(std::string("time_s.") + t);
  for (const char* m : kMemory) f.push_back(std::string("memory_bytes.") + m);
  for (const char* c : {"tp", "dp", "pp"}) f.push_back(std::string("comm_bytes.") + c);
  for (int64_t s = 0; s < stages; ++s) {
    const std::string p = "stages." + std::to_string(s) + ".";
    for (const char* t : {"forward", "backward", "recompute", "tp_comm"}) f.push_back(p + "micro_batch_time_s." + t);
    f.push_back(p + "dp_comm_exposed_s");
    f.push_back(p + "optimizer_s");
    for (const char* m : kMemory) f.push_back(p + "memory_bytes." + m);
    f.push_back(p + "flops");
    for (const char* c : {"tp", "dp", "pp"}) f.push_back(p + "comm_bytes." + c);
  }
  return f;
}

// time_s.pp_comm+bubble as one number (the sum of whichever of the two the document has).
void add_pp_wait(nlohmann::json& doc) {
  if (!doc.contains("time_s") || !doc["time_s"].is_object()) return;
  auto& t = doc["time_s"];
  double sum = 0;
  for (const char* k : {"pp_comm", "bubble"})
    if (t.contains(k) && t[k].is_number()) sum += t[k].get<double>();
  t["pp_comm+bubble"] = sum;
}

const nlohmann::json* lookup(const nlohmann::json& j, const std::string& dotted) {
  const nlohmann::json* cur = &j;
  size_t start = 0;
  while (start <= dotted.size()) {
    const size_t dot = dotted.find('.', start);
    const std::string key = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_array()) {
      char* end = nullptr;
      const long i = std::strtol(key.c_str(), &end, 10);
      if (*end != '\0' || i < 0 || static_cast<size_t>(i) >= cur->size()) return nullptr;
      cur = &(*cur)[static_cast<size_t>(i)];
    } else if (cur->is_object() && cur->contains(key)) {
      cur = &(*cur)[key];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur->is_number() ? cur : nullptr;
}

// Trace against trace: a predicted Chrome trace (loom simulate --trace) and a measured one,
// matched by event name (sim/trace_names.hpp), total duration per name and per op category.
int run_trace_compare(const CompareOptions& o, const nlohmann::json& predicted_doc) {
  auto measured_doc = read_json_file(o.measured_path);
  if (!measured_doc) return fail(measured_doc.error());
  auto predicted = trace_events(predicted_doc, o.plan_path);
  if (!predicted) return fail(predicted.error());
  auto measured = trace_events(*measured_doc, o.measured_path);
  if (!measured) return fail(measured.error());
  const TraceComparison c = compare_traces(*predicted, *measured);
  if (o.json) {
    fmt::print("{}\n", trace_comparison_json(c).dump(2));
    return 0;
  }
  std::string ranks;
  for (int64_t r : c.ranks) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
  fmt::print("ranks {} ({}); error % = (predicted - measured) / measured\n\n", ranks,
             c.shared_ranks ? "in both traces" : "no rank in both traces: all of each");
  auto print = [](const char* head, const std::vector<TraceRow>& rows) {
    fmt::print("{:<36} {:>6} {:>6} {:>14} {:>14} {:>10}\n", head, "n pred", "n meas", "predicted ms", "measured ms",
               "error %");
    for (const auto& r : rows)
      fmt::print("{:<36} {:>6} {:>6} {:>14.4f} {:>14.4f} {:>10}\n", r.name, r.predicted_count, r.measured_count,
                 1e3 * r.predicted_s, 1e3 * r.measured_s, r.error_pct ? fmt::format("{:+.2f}", *r.error_pct) : "n/a");
  };
  print("event", c.rows);
  fmt::print("\n");
  print("category", c.categories);
  return 0;
}

int run_compare(const CompareOptions& o) {
  auto pj = read_json_file(o.plan_path);
  if (!pj) return fail(pj.error());
  if (is_chrome_trace(*pj)) return run_trace_compare(o, *pj);
  auto plan = plan_from_json(*pj, o.plan_path);
  if (!plan) return fail(plan.error());
  auto measured = read_json_file(o.measured_path);
  if (!measured) return fail(measured.error());
  if (!measured->is_object() || !measured->contains("memory_bytes"))
    return fail(make_error(o.measured_path, "is not a report of loom execute --report (no memory_bytes)"));
  CostModel cm(plan->model, plan->cluster, plan->train);
  nlohmann::json predicted = estimate_to_json(cm.evaluate(plan->parallel));
  add_pp_wait(predicted);
  add_pp_wait(*measured);

  nlohmann::json fields = nlohmann::json::array();
  for (const auto& name : field_names(plan->parallel.pp)) {
    const nlohmann::json* p = lookup(predicted, name);
    const nlohmann::json* m = lookup(*measured, name);
    if (!p || !m) continue;
    const double pv = p->get<double>(), mv = m->get<double>();
    // Signed error as loom validate and the trace comparison: (predicted - measured) / measured;
    // undefined against a zero measurement (unless both are zero).
    nlohmann::json err = nullptr;
    if (mv != 0) err = (pv - mv) / std::fabs(mv) * 100.0;
    else if (pv == 0) err = 0.0;
    fields.push_back({{"name", name}, {"predicted", *p}, {"measured", *m}, {"error_pct", err}});
  }
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"fields", fields}}.dump(2));
    return 0;
  }
  fmt::print("error % = (predicted - measured) / measured\n\n");
  fmt::print("{:<46} {:>18} {:>18} {:>10}\n", "field", "predicted", "measured", "error %");
  for (const auto& f : fields) {
    const std::string err = f["error_pct"].is_null() ? "n/a" : fmt::format("{:+.2f}", f["error_pct"].get<double>());
    fmt::print("{:<46} {:>18.6g} {:>18.6g} {:>10}\n", f["name"].get<std::string>(), f["predicted"].get<double>(),
               f["measured"].get<double>(), err);
  }
  return 0;
}

}  // namespace

void add_compare(CLI::App& app, Run& run) {
  auto o = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand("compare", "predicted against measured (loom execute --report), field by field");
  cmd->add_option("plan", o->plan_path, "plan.json, or a predicted Chrome trace (loom simulate --trace)")->required();
  cmd->add_option("measured", o->measured_path, "measured.json from loom execute --report, or a measured Chrome trace")
      ->required();
  cmd->add_flag("--json", o->json, "print {\"fields\": [{name, predicted, measured, error_pct}]}");
  cmd->callback([o, &run] { run = [o] { return run_compare(*o); }; });
}

}  // namespace loom::cli
