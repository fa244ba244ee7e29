// loom validate DIR: every measured configuration under DIR (plan.json + measured.json from
// `loom execute --report`, in a folder or as NAME.plan.json + NAME.measured.json), re-predicted
// by the cost model: step time and peak memory, predicted against measured, the MAPE of each
// and the worst case (sim/validation.hpp). Every configuration found is a row; one that cannot
// be read is an error (exit 2), never left out. --max-step-mape / --max-memory-mape turn the
// report into a check (exit 1 when exceeded), which is how `make test` gates the H100 traces.
//
// loom validate --published DIR: the published tables of DIR (02, 06, 09, 10, 11; see
// planner/published_validation.hpp), each row predicted against its published figure or listed
// with the reason loom cannot express it; per table the MAPE and the worst row.
// --max-mape / --max-row-error turn it into a check (exit 1 when a table's MAPE, or one
// figure's |error|, is above the bound; "P" bounds every table, "06=P" one table), which is
// how `make test` gates them.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>

#include "planner/cli/flags.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/published_validation.hpp"
#include "sim/validation.hpp"

namespace loom::cli {

namespace {

struct ValidateOptions {
  std::string dir;
  bool json = false;
  bool published = false;
  std::optional<double> max_step_mape, max_memory_mape;  // measured configurations
  std::vector<std::string> max_mape, max_row_error;      // --published: "P" or "TABLE=P", repeatable
};

double validate_gib(double b) { return b / 1073741824.0; }

void print_table(const std::vector<ValidationRow>& rows, const ValidationSummary& s) {
  fmt::print("error % = (predicted - measured) / measured\n\n");
  fmt::print("{:<28} {:<14} {:<42} {:>11} {:>11} {:>8}  {:>10} {:>10} {:>8}\n", "configuration", "model", "parallel",
             "step s pred", "step s meas", "error %", "peak GiB p", "peak GiB m", "error %");
  for (const auto& r : rows)
    fmt::print("{:<28} {:<14} {:<42} {:>11.5g} {:>11.5g} {:>+8.2f}  {:>10.3f} {:>10.3f} {:>+8.2f}\n", r.config, r.model,
               r.parallel, r.predicted_step_s, r.measured_step_s, r.step_error_pct(), validate_gib(r.predicted_peak_bytes),
               validate_gib(r.measured_peak_bytes), r.memory_error_pct());
  const auto& ws = rows[s.worst_step];
  const auto& wm = rows[s.worst_memory];
  fmt::print("\n{} configurations: step time MAPE {:.2f}% (worst {}: {:+.2f}%), peak memory MAPE {:.2f}% (worst {}: "
             "{:+.2f}%)\n",
             s.configs, s.step_time_mape_pct, ws.config, ws.step_error_pct(), s.memory_mape_pct, wm.config,
             wm.memory_error_pct());
}

// ---- --published --------------------------------------------------------------------------

// How many of a table's figures priced from a whole step have the simulator's step within 3% of
// the analytical one, and the farthest.
struct SimAgreement {
  size_t rows = 0, within = 0;
  double worst_pct = 0;
  std::string worst_label;
};
SimAgreement sim_agreement(const TableResult& t) {
  SimAgreement a;
  for (const auto& p : t.points) {
    if (!p.sim_vs_analytical_pct) continue;
    const double d = *p.sim_vs_analytical_pct;
    ++a.rows;
    a.within += std::abs(d) <= 3.0;
    if (std::abs(d) >= std::abs(a.worst_pct)) a.worst_pct = d, a.worst_label = p.label;
  }
  return a;
}

void print_points(const TableResult& t) {
  if (t.points.empty()) {
    fmt::print("no row can be expressed\n");
    return;
  }
  fmt::print("{:<44} {:>5}  {:<16} {:>10} {:>10} {:>8} {:>7}  {}\n", "row", "line", "metric", "published", "predicted",
             "error %", "sim %", "loom configuration");
  for (const auto& p : t.points) {
    const std::string sim = p.sim_vs_analytical_pct ? fmt::format("{:+.2f}", *p.sim_vs_analytical_pct) : "-";
    fmt::print("{:<44} {:>5}  {:<16} {:>10} {:>10.4g} {:>+8.2f} {:>7}  {}\n", p.label, p.line, p.metric,
               (p.approximate ? "~" : "") + fmt::format("{:.4g}", p.published), p.predicted, p.error_pct(), sim,
               p.config);
    if (!p.note.empty()) fmt::print("{:<44}        note: {}\n", "", p.note);
  }
  const auto& w = t.points[t.worst];
  fmt::print("MAPE {:.2f}% over {} figures; worst: {} (line {}) {} {:+.2f}%\n", t.mape_pct, t.points.size(), w.label,
             w.line, w.metric, w.error_pct());
  const SimAgreement a = sim_agreement(t);
  if (a.rows > 0)
    fmt::print("analytical and simulated steps within 3%: {} of {} (worst {:+.2f}%, {})\n", a.within, a.rows, a.worst_pct,
               a.worst_label);
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "" : sep) + x;
  return out;
}

void print_published_table(const TableResult& t) {
  fmt::print("\n== {}  {}\n   {}\nmetric: {}\nrules:\n", t.id, t.title, t.path, t.metric);
  for (const auto& r : t.rules) fmt::print("  - {}\n", r);
  print_points(t);
  fmt::print("cannot express {} rows{}\n", t.unexpressed.size(), t.unexpressed.empty() ? "" : ":");
  for (const auto& u : t.unexpressed)
    fmt::print("  line {:>3}  {}: {}{}\n", u.line, u.label, join(u.reasons, ", "),
               u.detail.empty() ? "" : " (" + u.detail + ")");
}

void print_published(const std::vector<TableResult>& tables) {
  fmt::print("published figures against loom's analytical cost model (CostModel::evaluate, as `loom predict`)\n"
             "error % = (predicted - published) / published; nothing here is fitted to these tables\n");
  for (const auto& t : tables) print_published_table(t);
  fmt::print("\nreasons:\n");
  for (const auto& r : unexpressible_reasons()) fmt::print("  {:<19} {}\n", r.id, r.sentence);
  fmt::print("\nsummary:\n");
  for (const auto& t : tables) {
    if (t.points.empty()) {
      fmt::print("  {}  nothing compared, {} rows cannot be expressed\n", t.id, t.unexpressed.size());
      continue;
    }
    const auto& w = t.points[t.worst];
    fmt::print("  {}  MAPE {:6.2f}%  worst {:+7.2f}% ({}, {})  {} figures compared, {} rows cannot be expressed\n",
               t.id, t.mape_pct, w.error_pct(), w.label, w.metric, t.points.size(), t.unexpressed.size());
  }
}

// A bound for every table ("P") and bounds for single tables ("06=P"), in percent.
struct TableBounds {
  std::optional<double> all;
  std::map<std::string, double> table;
  std::optional<double> of(const std::string& id) const {
    const auto it = table.find(id);
    return it != table.end() ? std::optional<double>(it->second) : all;
  }
};

Expected<TableBounds> parse_bounds(const std::vector<std::string>& items, const std::string& flag) {
  TableBounds b;
  const auto& ids = published_table_ids();
  for (const auto& item : items) {
    const size_t eq = item.find('=');
    const std::string id = eq == std::string::npos ? "" : item.substr(0, eq);
    const std::string num = eq == std::string::npos ? item : item.substr(eq + 1);
    const bool known = eq == std::string::npos || std::find(ids.begin(), ids.end(), id) != ids.end();
    const double v = flag_detail::is_decimal_number(num) ? std::strtod(num.c_str(), nullptr) : -1;
    if (!known || !(v >= 0 && v <= 1e6))
      return make_error(flag, "must be a percentage in [0, 1e6], for every table or as TABLE=P with TABLE one of "
                              "02, 06, 09, 10, 11 (got " + item + ")");
    if (id.empty()) b.all = v;
    else b.table[id] = v;
  }
  return b;
}

// Exit 1 when a table's MAPE or one figure's |error| is above its bound; every breach printed.
int gate_published(const std::vector<TableResult>& tables, const TableBounds& mape, const TableBounds& row) {
  int code = 0;
  for (const auto& t : tables) {
    const auto max_mape = mape.of(t.id), max_row = row.of(t.id);
    if (max_mape && !t.points.empty() && !(t.mape_pct <= *max_mape)) {
      fmt::print(stderr, "loom: {}: MAPE {:.2f}% is above the bound {:.2f}% (--max-mape)\n", t.path, t.mape_pct,
                 *max_mape);
      code = 1;
    }
    if (!max_row) continue;
    for (const auto& p : t.points)
      if (!(std::abs(p.error_pct()) <= *max_row)) {
        fmt::print(stderr, "loom: {}:{}: {} {}: error {:+.2f}% is beyond the bound {:.2f}% (--max-row-error)\n", t.path,
                   p.line, p.label, p.metric, p.error_pct(), *max_row);
        code = 1;
      }
  }
  return code;
}

int run_published(const ValidateOptions& o) {
  if (o.max_step_mape) return fail(make_error("--max-step-mape", "applies to measured configurations, not --published"));
  if (o.max_memory_mape)
    return fail(make_error("--max-memory-mape", "applies to measured configurations, not --published"));
  auto mape = parse_bounds(o.max_mape, "--max-mape");
  if (!mape) return fail(mape.error());
  auto row = parse_bounds(o.max_row_error, "--max-row-error");
  if (!row) return fail(row.error());
  auto tables = validate_published(o.dir);
  if (!tables) return fail(tables.error());
  if (o.json) fmt::print("{}\n", published_json(*tables).dump(2));
  else print_published(*tables);
  return gate_published(*tables, *mape, *row);
}

// ---- measured configurations ---------------------------------------------------------------

int run_validate(const ValidateOptions& o) {
  if (o.published) return run_published(o);
  if (!o.max_mape.empty()) return fail(make_error("--max-mape", "needs --published"));
  if (!o.max_row_error.empty()) return fail(make_error("--max-row-error", "needs --published"));
  auto configs = find_configs(o.dir);
  if (!configs) return fail(configs.error());
  if (configs->empty())
    return fail(make_error(o.dir, "holds no measured configuration (plan.json + measured.json in a folder, or "
                                  "NAME.plan.json + NAME.measured.json)"));
  std::vector<ValidationRow> rows;
  for (const auto& c : *configs) {
    auto row = validate_config(c);
    if (!row) return fail(row.error());
    rows.push_back(*row);
  }
  const ValidationSummary s = summarize(rows);
  if (o.json) fmt::print("{}\n", validation_json(rows, s).dump(2));
  else print_table(rows, s);

  int code = 0;
  auto gate = [&](const char* what, double mape, const std::optional<double>& max) {
    if (max && !(mape <= *max)) {
      fmt::print(stderr, "loom: {}: {} MAPE {:.2f}% is above the bound {:.2f}%\n", o.dir, what, mape, *max);
      code = 1;
    }
  };
  gate("step time", s.step_time_mape_pct, o.max_step_mape);
  gate("peak memory", s.memory_mape_pct, o.max_memory_mape);
  return code;
}

}  // namespace

void add_validate(CLI::App& app, Run& run) {
  auto o = std::make_shared<ValidateOptions>();
  auto* cmd = app.add_subcommand("validate",
                                 "every measured configuration under a folder: predicted against measured step time "
                                 "and peak memory, MAPE and worst case");
  cmd->add_option("dir", o->dir,
                  "folder of plan.json + measured.json pairs (any depth); with --published, of published tables")
      ->required();
  cmd->add_flag("--published", o->published,
                "compare with the published tables in DIR (02, 06, 09, 10, 11 *.csv): each row predicted or listed "
                "with why loom cannot express it; MAPE and worst row per table");
  cmd->add_flag("--json", o->json,
                "print {\"configs\", \"step_time_mape\", \"memory_mape\", \"worst\", \"rows\"} (percent); with "
                "--published {\"schema_version\", \"tables\", \"reasons\"}");
  cmd->add_option("--max-step-mape", o->max_step_mape, "exit 1 if the step-time MAPE (%) is above this")
      ->transform(Number(0, 1e6));
  cmd->add_option("--max-memory-mape", o->max_memory_mape, "exit 1 if the peak-memory MAPE (%) is above this")
      ->transform(Number(0, 1e6));
  cmd->add_option("--max-mape", o->max_mape,
                  "with --published: exit 1 if a table's MAPE (%) is above this; P for every table or TABLE=P "
                  "(e.g. 06=5) for one, repeatable")
      ->expected(1)
      ->take_all();
  cmd->add_option("--max-row-error", o->max_row_error,
                  "with --published: exit 1 if one figure's |error| (%) is above this; P or TABLE=P as --max-mape")
      ->expected(1)
      ->take_all();
  cmd->callback([o, &run] { run = [o] { return run_validate(*o); }; });
}

}  // namespace loom::cli
