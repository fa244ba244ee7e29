// loom compare A B: two results of one training step, field by field. Each is a plan (its
// prediction priced again by the cost model: a plan file's own is not trusted), or a step result
// (sim/step_result.hpp): `loom predict --json` (predicted), `loom simulate --json` (simulated),
// `loom execute --report` (measured). Two files of different configurations are refused. Or two
// Chrome traces (`loom simulate --trace`, `loom execute --trace`), matched by event name.
#include <fmt/core.h>

#include <cmath>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/step_result.hpp"
#include "sim/validation.hpp"

namespace loom::cli {

namespace {

struct CompareOptions {
  std::string a_path, b_path;
  bool json = false;
};

struct Side {
  std::string label;  // "plan", "prediction", "simulated", "report": names it in error lines
  Estimate result;
};

// A plan file (it has "parallel"; a step result names its layout field by field), or a step result.
Expected<Side> load_side(const nlohmann::json& doc, const std::string& path) {
  if (doc.is_object() && doc.contains("parallel")) {
    auto plan = plan_from_document(doc, path);
    if (!plan) return plan.error();
    return Side{"plan", plan->prediction};
  }
  auto e = estimate_from_json(doc, path);
  if (!e) return e.error();
  const char* label = e->source == StepSource::measured ? "report"
                      : e->source == StepSource::simulated ? "simulated" : "prediction";
  return Side{label, *e};
}

const char* kMemory[] = {"weights", "grads", "optimizer", "activations", "logits",
                         "comm_buffers", "workspace", "runtime", "other", "peak"};

void add_memory(std::vector<std::pair<std::string, double>>& out, const std::string& prefix, const MemoryBytes& m) {
  const int64_t v[] = {m.weights, m.grads, m.optimizer, m.activations, m.logits,
                       m.comm_buffers, m.workspace, m.runtime, m.other(), m.peak()};
  for (size_t i = 0; i < std::size(kMemory); ++i) out.emplace_back(prefix + "memory_bytes." + kMemory[i], static_cast<double>(v[i]));
}

void add_comm(std::vector<std::pair<std::string, double>>& out, const std::string& prefix, const CommBytes& c) {
  out.emplace_back(prefix + "comm_bytes.tp", static_cast<double>(c.tp));
  out.emplace_back(prefix + "comm_bytes.dp", static_cast<double>(c.dp));
  out.emplace_back(prefix + "comm_bytes.pp", static_cast<double>(c.pp));
}

// Every number both sides can hold, by the dotted name of its JSON field, job level then per
// stage. A measured pp_comm holds the wait for the neighbour stage too, so time is compared as
// pp_comm + bubble (time_s.pp_comm+bubble). An emulated rank has no job throughput or FLOPs;
// a stage no rank reported has no numbers.
std::vector<std::pair<std::string, double>> field_values(const Estimate& e) {
  const bool emulated = e.source == StepSource::measured && e.measurement.emulated_rank >= 0;
  std::vector<std::pair<std::string, double>> f = {{"step_time_s", e.step_time_s}};
  if (!emulated) {
    f.emplace_back("tokens_per_s", e.tokens_per_s);
    f.emplace_back("flops.hardware", static_cast<double>(e.flops_hardware));
  }
  const TimeBreakdown& t = e.time;
  f.insert(f.end(), {{"time_s.compute", t.compute_s}, {"time_s.tp_comm", t.tp_comm_s}, {"time_s.dp_comm", t.dp_comm_s},
                     {"time_s.pp_comm+bubble", t.pp_comm_s + t.bubble_s}, {"time_s.optimizer", t.optimizer_s}});
  add_memory(f, "", e.memory);
  add_comm(f, "", e.comm);
  for (const StageEstimate& s : e.stages) {
    if (!s.reported) continue;
    const std::string p = "stages." + std::to_string(s.index) + ".";
    f.insert(f.end(), {{p + "micro_batch_time_s.forward", s.forward_s},
                       {p + "micro_batch_time_s.backward", s.backward_s},
                       {p + "micro_batch_time_s.recompute", s.recompute_s},
                       {p + "micro_batch_time_s.tp_comm", s.tp_comm_s},
                       {p + "dp_comm_exposed_s", s.dp_comm_exposed_s},
                       {p + "optimizer_s", s.optimizer_s}});
    add_memory(f, p, s.memory);
    f.emplace_back(p + "flops", static_cast<double>(s.flops));
    add_comm(f, p, s.comm);
  }
  return f;
}

// Trace against trace: a predicted Chrome trace (loom simulate --trace) and a measured one,
// matched by event name (sim/trace_names.hpp), total duration per name and per op category.
int run_trace_compare(const CompareOptions& o, const nlohmann::json& predicted_doc) {
  auto measured_doc = read_json_file(o.b_path, kMaxTraceFileBytes);
  if (!measured_doc) return fail(measured_doc.error());
  auto predicted = trace_events(predicted_doc, o.a_path);
  if (!predicted) return fail(predicted.error());
  auto measured = trace_events(*measured_doc, o.b_path);
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

// One sign convention: error % = (other - reference) / reference, where the reference is the
// measured side when exactly one side is measured ((predicted - measured) / measured, as loom
// validate and the trace comparison), else A ((B - A) / A).
struct Fields {
  std::string ref_key, other_key;  // JSON keys of the two values: their sources, or "a" and "b"
  nlohmann::json rows = nlohmann::json::array();
};

Fields diff_fields(const Side& a, const Side& b) {
  const bool b_ref = b.result.source == StepSource::measured && a.result.source != StepSource::measured;
  const Estimate& ref = b_ref ? b.result : a.result;
  const Estimate& other = b_ref ? a.result : b.result;
  Fields out;
  const bool same = ref.source == other.source;
  out.ref_key = same ? (b_ref ? "b" : "a") : to_string(ref.source);
  out.other_key = same ? (b_ref ? "a" : "b") : to_string(other.source);
  std::map<std::string, double> theirs;
  for (const auto& [name, v] : field_values(other)) theirs[name] = v;
  for (const auto& [name, rv] : field_values(ref)) {
    auto it = theirs.find(name);
    if (it == theirs.end()) continue;
    const double ov = it->second;
    // Undefined against a zero reference (unless both are zero).
    nlohmann::json err = nullptr;
    if (rv != 0) err = (ov - rv) / std::fabs(rv) * 100.0;
    else if (ov == 0) err = 0.0;
    out.rows.push_back({{"name", name}, {out.other_key, ov}, {out.ref_key, rv}, {"error_pct", err}});
  }
  return out;
}

int run_compare(const CompareOptions& o) {
  // A may be a trace (the larger bound); anything else is held to the bound of every other file.
  auto text = read_text_file(o.a_path, kMaxTraceFileBytes);
  if (!text) return fail(text.error());
  auto aj = parse_json_text(*text, o.a_path);
  if (!aj) return fail(aj.error());
  if (is_chrome_trace(*aj)) return run_trace_compare(o, *aj);
  if (static_cast<int64_t>(text->size()) > kMaxJsonFileBytes)
    return fail(make_error(o.a_path, "file is larger than loom reads (" + std::to_string(kMaxJsonFileBytes >> 20) +
                                         " MiB; got " + std::to_string(text->size()) + " bytes)"));
  auto bj = read_json_file(o.b_path);
  if (!bj) return fail(bj.error());
  auto a = load_side(*aj, o.a_path);
  if (!a) return fail(a.error());
  auto b = load_side(*bj, o.b_path);
  if (!b) return fail(b.error());
  const bool same_label = a->label == b->label;
  // A model's name is a label (an imported plan is named after its file): the same parameter
  // count and model FLOPs under two names is the same model.
  Estimate b_named = b->result;
  if (b_named.model != a->result.model && b_named.params > 0 && b_named.params == a->result.params &&
      b_named.flops_model == a->result.flops_model)
    b_named.model = a->result.model;
  if (auto d = configuration_difference(a->result, same_label ? o.a_path : a->label, b_named,
                                        same_label ? o.b_path : b->label))
    return fail(make_error("compare", *d + ": not the same configuration"));
  const Fields f = diff_fields(*a, *b);
  const std::string definition = "(" + f.other_key + " - " + f.ref_key + ") / " + f.ref_key + " x 100";
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"schema_version", kJsonSchemaVersion},
                                      {"a", {{"path", o.a_path}, {"source", to_string(a->result.source)}}},
                                      {"b", {{"path", o.b_path}, {"source", to_string(b->result.source)}}},
                                      {"error_definition", definition},
                                      {"fields", f.rows}}
                           .dump(2));
    return 0;
  }
  fmt::print("error % = {}\n\n", definition);
  fmt::print("{:<46} {:>18} {:>18} {:>10}\n", "field", f.other_key, f.ref_key, "error %");
  for (const auto& r : f.rows) {
    const std::string err = r["error_pct"].is_null() ? "n/a" : fmt::format("{:+.2f}", r["error_pct"].get<double>());
    fmt::print("{:<46} {:>18.6g} {:>18.6g} {:>10}\n", r["name"].get<std::string>(), r[f.other_key].get<double>(),
               r[f.ref_key].get<double>(), err);
  }
  return 0;
}

}  // namespace

void add_compare(CLI::App& app, Run& run) {
  auto o = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand("compare", "two results of one step (plan, prediction, simulation, measurement), "
                                            "field by field; or two Chrome traces");
  cmd->add_option("a", o->a_path,
                  "plan.json, a step result (loom predict --json, loom simulate --json, loom execute --report), "
                  "or a predicted Chrome trace (loom simulate --trace)")
      ->required();
  cmd->add_option("b", o->b_path, "the same kinds: measured.json from loom execute --report, or a measured Chrome trace")
      ->required();
  cmd->add_flag("--json", o->json,
                "print {\"a\", \"b\", \"error_definition\", \"fields\": [{name, <source>..., error_pct}]}");
  cmd->callback([o, &run] { run = [o] { return run_compare(*o); }; });
}

}  // namespace loom::cli
