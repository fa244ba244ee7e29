// loom validate DIR: every measured configuration under DIR (plan.json + measured.json from
// `loom execute --report`, in a folder or as NAME.plan.json + NAME.measured.json), re-predicted
// by the cost model: step time and peak memory, predicted against measured, the MAPE of each
// and the worst case (sim/validation.hpp). Every configuration found is a row; one that cannot
// be read is an error (exit 2), never left out. --max-step-mape / --max-memory-mape turn the
// report into a check (exit 1 when exceeded), which is how `make test` gates the H100 traces.
#include <fmt/core.h>

#include <memory>
#include <optional>

#include "planner/cli/flags.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "sim/validation.hpp"

namespace loom::cli {

namespace {

struct ValidateOptions {
  std::string dir;
  bool json = false;
  std::optional<double> max_step_mape, max_memory_mape;
};

double gib(double b) { return b / 1073741824.0; }

void print_table(const std::vector<ValidationRow>& rows, const ValidationSummary& s) {
  fmt::print("error % = (predicted - measured) / measured\n\n");
  fmt::print("{:<28} {:<14} {:<42} {:>11} {:>11} {:>8}  {:>10} {:>10} {:>8}\n", "configuration", "model", "parallel",
             "step s pred", "step s meas", "error %", "peak GiB p", "peak GiB m", "error %");
  for (const auto& r : rows)
    fmt::print("{:<28} {:<14} {:<42} {:>11.5g} {:>11.5g} {:>+8.2f}  {:>10.3f} {:>10.3f} {:>+8.2f}\n", r.config, r.model,
               r.parallel, r.predicted_step_s, r.measured_step_s, r.step_error_pct(), gib(r.predicted_peak_bytes),
               gib(r.measured_peak_bytes), r.memory_error_pct());
  const auto& ws = rows[s.worst_step];
  const auto& wm = rows[s.worst_memory];
  fmt::print("\n{} configurations: step time MAPE {:.2f}% (worst {}: {:+.2f}%), peak memory MAPE {:.2f}% (worst {}: "
             "{:+.2f}%)\n",
             s.configs, s.step_time_mape_pct, ws.config, ws.step_error_pct(), s.memory_mape_pct, wm.config,
             wm.memory_error_pct());
}

int run_validate(const ValidateOptions& o) {
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
  cmd->add_option("dir", o->dir, "folder of plan.json + measured.json pairs (any depth)")->required();
  cmd->add_flag("--json", o->json,
                "print {\"configs\", \"step_time_mape\", \"memory_mape\", \"worst\", \"rows\"} (percent)");
  cmd->add_option("--max-step-mape", o->max_step_mape, "exit 1 if the step-time MAPE (%) is above this")
      ->transform(Number(0, 1e6));
  cmd->add_option("--max-memory-mape", o->max_memory_mape, "exit 1 if the peak-memory MAPE (%) is above this")
      ->transform(Number(0, 1e6));
  cmd->callback([o, &run] { run = [o] { return run_validate(*o); }; });
}

}  // namespace loom::cli
