#include "sim/validation.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/spec_json.hpp"
#include "sim/step_result.hpp"

namespace loom {

namespace fs = std::filesystem;

double mape_pct(const std::vector<double>& errors_pct) {
  if (errors_pct.empty()) return 0;
  double sum = 0;
  for (double e : errors_pct) sum += std::fabs(e);
  return sum / static_cast<double>(errors_pct.size());
}

// ---- configurations ---------------------------------------------------------------------

namespace {

constexpr const char* kPlan = "plan.json";
constexpr const char* kMeasured = "measured.json";
constexpr const char* kPlanSuffix = ".plan.json";
constexpr const char* kMeasuredSuffix = ".measured.json";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string relative_name(const fs::path& p, const fs::path& root) {
  const std::string rel = fs::relative(p, root).generic_string();
  return rel.empty() || rel == "." ? root.filename().generic_string() : rel;
}

}  // namespace

Expected<std::vector<ConfigFiles>> find_configs(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(dir, "is not a folder");
  const fs::path root(dir);
  // Per folder: its file names; a folder and its file pairs are read the same way.
  std::map<fs::path, std::set<std::string>> files;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file()) files[it->path().parent_path()].insert(it->path().filename().string());
  if (ec) return make_error(dir, ec.message());

  std::vector<ConfigFiles> out;
  for (const auto& entry : files) {
    // Not a structured binding: clang 14 (the fuzz build) cannot capture one in a lambda.
    const fs::path& folder = entry.first;
    const std::set<std::string>& names = entry.second;
    auto missing = [&](const std::string& have, const std::string& want) {
      return make_error((folder / have).generic_string(), "has no " + want + " beside it (every measured "
                                                          "configuration is a plan and its measurement)");
    };
    const bool plan = names.count(kPlan) > 0, measured = names.count(kMeasured) > 0;
    if (plan != measured) return plan ? missing(kPlan, kMeasured) : missing(kMeasured, kPlan);
    if (plan)
      out.push_back({relative_name(folder, root), (folder / kPlan).string(), (folder / kMeasured).string()});
    for (const auto& n : names) {
      const bool is_plan = ends_with(n, kPlanSuffix), is_measured = ends_with(n, kMeasuredSuffix);
      if (!is_plan && !is_measured) continue;
      const std::string stem = n.substr(0, n.size() - std::string(is_plan ? kPlanSuffix : kMeasuredSuffix).size());
      const std::string other = stem + (is_plan ? kMeasuredSuffix : kPlanSuffix);
      if (!names.count(other)) return missing(n, other);
      if (is_plan)
        out.push_back({relative_name(folder / stem, root), (folder / n).string(), (folder / other).string()});
    }
  }
  std::sort(out.begin(), out.end(), [](const ConfigFiles& a, const ConfigFiles& b) { return a.name < b.name; });
  return out;
}

namespace {

// A measured report (sim/step_result.hpp, read strictly) that can give an error: a zero or
// negative step time or peak has no relative error, and would otherwise be a dropped point.
Expected<Estimate> read_measurement(const std::string& path) {
  auto j = read_json_file(path);
  if (!j) return j.error();
  auto m = estimate_from_json(*j, path);
  if (!m) return m.error();
  if (m->source != StepSource::measured)
    return make_error(path, "/source: must be measured, a report of loom execute --report (got " +
                                to_string(m->source) + ")");
  if (!(m->step_time_s > 0)) return make_error(path, "/step_time_s: must be a number > 0 (got 0)");
  if (m->memory.peak() <= 0) return make_error(path, "/memory_bytes/peak: must be > 0 (got 0)");
  return m;
}

std::string describe(const ParallelConfig& p) {
  std::string s = "dp " + std::to_string(p.dp) + " tp " + std::to_string(p.tp) + " pp " + std::to_string(p.pp) +
                  " zero " + std::to_string(p.zero) + " mb " + std::to_string(p.micro_batch) + " " +
                  to_string(p.schedule);
  if (p.vpp > 1) s += " vpp " + std::to_string(p.vpp);
  s += " rc " + to_string(p.recompute);
  if (p.sp) s += " sp";
  return s;
}

}  // namespace

Expected<ValidationRow> validate_config(const ConfigFiles& files) {
  auto pj = read_json_file(files.plan_path);
  if (!pj) return pj.error();
  auto plan = plan_from_json(*pj, files.plan_path);
  if (!plan) return plan.error();
  auto measured = read_measurement(files.measured_path);
  if (!measured) return measured.error();
  const Estimate e = CostModel(plan->model, plan->cluster, plan->train).evaluate(plan->parallel);
  if (auto d = configuration_difference(e, "plan", *measured, "report"))
    return make_error(files.measured_path, *d + ": a measurement of another configuration");
  ValidationRow row;
  row.config = files.name;
  row.model = plan->model.name;
  row.cluster = plan->cluster.name;
  row.parallel = describe(plan->parallel);
  row.predicted_step_s = e.step_time_s;
  row.measured_step_s = measured->step_time_s;
  row.predicted_peak_bytes = static_cast<double>(e.memory.peak());
  row.measured_peak_bytes = static_cast<double>(measured->memory.peak());
  return row;
}

ValidationSummary summarize(const std::vector<ValidationRow>& rows) {
  ValidationSummary s;
  s.configs = static_cast<int64_t>(rows.size());
  std::vector<double> step, mem;
  for (size_t i = 0; i < rows.size(); ++i) {
    step.push_back(rows[i].step_error_pct());
    mem.push_back(rows[i].memory_error_pct());
    if (std::fabs(step[i]) > std::fabs(step[s.worst_step])) s.worst_step = i;
    if (std::fabs(mem[i]) > std::fabs(mem[s.worst_memory])) s.worst_memory = i;
  }
  s.step_time_mape_pct = mape_pct(step);
  s.memory_mape_pct = mape_pct(mem);
  return s;
}

namespace {
nlohmann::json row_json(const ValidationRow& r) {
  return {{"config", r.config},
          {"model", r.model},
          {"cluster", r.cluster},
          {"parallel", r.parallel},
          {"step_time_s", {{"predicted", r.predicted_step_s}, {"measured", r.measured_step_s},
                           {"error_pct", r.step_error_pct()}}},
          {"memory_peak_bytes", {{"predicted", r.predicted_peak_bytes}, {"measured", r.measured_peak_bytes},
                                 {"error_pct", r.memory_error_pct()}}}};
}
}  // namespace

nlohmann::json validation_json(const std::vector<ValidationRow>& rows, const ValidationSummary& s) {
  nlohmann::json out_rows = nlohmann::json::array();
  for (const auto& r : rows) out_rows.push_back(row_json(r));
  const ValidationRow& ws = rows.at(s.worst_step);
  const ValidationRow& wm = rows.at(s.worst_memory);
  return {{"schema_version", kJsonSchemaVersion},
          {"configs", s.configs},
          {"step_time_mape", s.step_time_mape_pct},
          {"memory_mape", s.memory_mape_pct},
          {"error_definition", "(predicted - measured) / measured x 100; MAPE = mean |error|, percent"},
          {"worst",
           {{"step_time", {{"config", ws.config}, {"error_pct", ws.step_error_pct()}}},
            {"memory", {{"config", wm.config}, {"error_pct", wm.memory_error_pct()}}}}},
          {"rows", out_rows}};
}

// ---- traces -----------------------------------------------------------------------------

bool is_chrome_trace(const nlohmann::json& j) {
  if (j.is_object()) return j.contains("traceEvents") && j["traceEvents"].is_array();
  return j.is_array() && (j.empty() || (j[0].is_object() && j[0].contains("ph")));
}

Expected<std::vector<TraceEvent>> trace_events(const nlohmann::json& j, const std::string& where) {
  if (!is_chrome_trace(j)) return make_error(where, "is not a Chrome trace (no traceEvents array)");
  const nlohmann::json& events = j.is_object() ? j["traceEvents"] : j;
  std::vector<TraceEvent> out;
  std::map<std::pair<int64_t, int64_t>, std::vector<std::pair<std::string, double>>> open;  // (pid, tid) -> B stack
  for (size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    const std::string at = "/traceEvents/" + std::to_string(i);
    if (!e.is_object() || !e.contains("ph") || !e["ph"].is_string())
      return make_error(where, at + ": an event must be an object with a string ph");
    const std::string ph = e["ph"];
    if (ph != "X" && ph != "B" && ph != "E") continue;  // metadata, instants, counters: no duration
    const int64_t pid = e.contains("pid") && e["pid"].is_number_integer() ? e["pid"].get<int64_t>() : 0;
    const int64_t tid = e.contains("tid") && e["tid"].is_number_integer() ? e["tid"].get<int64_t>() : 0;
    if (!e.contains("ts") || !e["ts"].is_number()) return make_error(where, at + "/ts: must be a number");
    const double ts_us = e["ts"].get<double>();
    const std::string name = e.contains("name") && e["name"].is_string() ? e["name"].get<std::string>() : "";
    if (ph == "X") {
      if (!e.contains("dur") || !e["dur"].is_number() || e["dur"].get<double>() < 0)
        return make_error(where, at + "/dur: a complete event needs a number >= 0 (microseconds)");
      out.push_back({pid, name, e["dur"].get<double>() * 1e-6});
    } else if (ph == "B") {
      open[{pid, tid}].emplace_back(name, ts_us);
    } else {
      auto& stack = open[{pid, tid}];
      if (stack.empty()) return make_error(where, at + ": an E event with no open B on its pid and tid");
      out.push_back({pid, stack.back().first, (ts_us - stack.back().second) * 1e-6});
      stack.pop_back();
    }
  }
  return out;
}

namespace {
// The categories of notebooks/render_trace.py, in its order.
const std::vector<std::string>& categories() {
  static const std::vector<std::string> c = {"forward", "backward", "recompute", "optimizer", "tp", "dp", "pp", "other"};
  return c;
}
size_t category_index(const std::string& cat) {
  const auto& c = categories();
  return static_cast<size_t>(std::find(c.begin(), c.end(), cat) - c.begin());
}
}  // namespace

std::string event_category(const std::string& name) {
  auto starts = [&](const char* p) { return name.rfind(p, 0) == 0; };
  if (starts("F ")) return "forward";
  if (starts("B ")) return "backward";
  if (starts("R ")) return "recompute";
  if (name == "optimizer") return "optimizer";
  if (starts("tp ")) return "tp";
  if (starts("dp ")) return "dp";
  if (starts("pp ")) return "pp";
  return "other";
}

TraceComparison compare_traces(const std::vector<TraceEvent>& predicted, const std::vector<TraceEvent>& measured) {
  TraceComparison c;
  std::set<int64_t> pp, mp, shared;
  for (const auto& e : predicted) pp.insert(e.pid);
  for (const auto& e : measured) mp.insert(e.pid);
  std::set_intersection(pp.begin(), pp.end(), mp.begin(), mp.end(), std::inserter(shared, shared.begin()));
  c.shared_ranks = !shared.empty();
  if (!c.shared_ranks) {  // nothing in common (different rank numbering): compare everything
    shared = pp;
    shared.insert(mp.begin(), mp.end());
  }
  c.ranks.assign(shared.begin(), shared.end());

  // A name with " mb" (a micro-batch's pass, or its transfer) is counted once per rank however
  // many segments its trace cuts it into (the executor's trace closes a compute event at every
  // blocking call and reopens it after; a blocking send is its post and its wait). A pass names
  // its chunk, so it happens once per rank in a step; a transfer does not, so with interleaved
  // chunks its count is the micro-batches it carried, not its sends (the time is all of them).
  // Other names (a layer's tp collectives) are counted event by event.
  std::set<std::pair<int64_t, std::string>> seen_predicted, seen_measured;
  auto counts = [](std::set<std::pair<int64_t, std::string>>& seen, const TraceEvent& e) -> int64_t {
    return e.name.find(" mb") == std::string::npos || seen.insert({e.pid, e.name}).second ? 1 : 0;
  };
  std::map<std::string, TraceRow> by_name;
  for (const auto& e : predicted)
    if (shared.count(e.pid)) {
      auto& r = by_name[e.name];
      r.predicted_count += counts(seen_predicted, e);
      r.predicted_s += e.dur_s;
    }
  for (const auto& e : measured)
    if (shared.count(e.pid)) {
      auto& r = by_name[e.name];
      r.measured_count += counts(seen_measured, e);
      r.measured_s += e.dur_s;
    }
  std::vector<TraceRow> cats(categories().size());
  for (size_t i = 0; i < cats.size(); ++i) cats[i].name = categories()[i];
  for (auto& [name, r] : by_name) {
    r.name = name;
    TraceRow& cat = cats[category_index(event_category(name))];
    cat.predicted_count += r.predicted_count;
    cat.measured_count += r.measured_count;
    cat.predicted_s += r.predicted_s;
    cat.measured_s += r.measured_s;
    c.rows.push_back(r);
  }
  auto finish = [](TraceRow& r) {
    if (r.predicted_count > 0 && r.measured_count > 0 && r.measured_s > 0) r.error_pct = error_pct(r.predicted_s, r.measured_s);
  };
  for (auto& r : c.rows) finish(r);
  for (auto& r : cats) {
    finish(r);
    if (r.predicted_count + r.measured_count > 0) c.categories.push_back(r);
  }
  std::stable_sort(c.rows.begin(), c.rows.end(), [](const TraceRow& a, const TraceRow& b) {
    return category_index(event_category(a.name)) < category_index(event_category(b.name));
  });
  return c;
}

nlohmann::json trace_comparison_json(const TraceComparison& c) {
  auto rows = [](const std::vector<TraceRow>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& r : v)
      a.push_back({{"name", r.name},
                   {"predicted_count", r.predicted_count},
                   {"measured_count", r.measured_count},
                   {"predicted_s", r.predicted_s},
                   {"measured_s", r.measured_s},
                   {"error_pct", r.error_pct ? nlohmann::json(*r.error_pct) : nlohmann::json(nullptr)}});
    return a;
  };
  return {{"schema_version", kJsonSchemaVersion},
          {"ranks", c.ranks},
          {"shared_ranks", c.shared_ranks},
          {"error_definition", "(predicted - measured) / measured x 100, total duration per event name"},
          {"events", rows(c.rows)},
          {"categories", rows(c.categories)}};
}

}  // namespace loom
