// Validation: how far the cost model's predictions are from measurements on end-to-end runs
// that calibration never saw (calibration uses microbenchmarks only, sim/profile.hpp), with
// no configuration dropped. Two comparisons, both pure functions over values the commands
// read from files:
//   - configurations: a plan (re-predicted by the cost model, never its stored prediction)
//     against the measured report `loom execute --report` wrote; step time and peak memory per
//     configuration, the mean absolute percentage error (MAPE) over all of them and the worst
//     case (`loom validate DIR`);
//   - traces: a predicted Chrome trace (`loom simulate --trace`) against a measured one, event
//     names matched exactly (sim/trace_names.hpp), total duration per name and per op category
//     (`loom compare predicted_trace.json measured_trace.json`).
// Error convention, everywhere here: error % = (predicted - measured) / measured x 100, so a
// positive error is a prediction above the measurement; MAPE = mean of |error %| (the usual
// definition, relative to the measurement). No point is ever dropped: a configuration whose
// measurement cannot give an error (missing, zero or negative) is an input error, not a row.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

// (predicted - measured) / measured x 100; `measured` must be > 0.
inline double error_pct(double predicted, double measured) { return (predicted - measured) / measured * 100.0; }

// Mean of |error %|; 0 for an empty list.
double mape_pct(const std::vector<double>& errors_pct);

// ---- configurations ---------------------------------------------------------------------

struct ConfigFiles {
  std::string name;           // path relative to the folder searched ("gpt2-124m-b8", "tp/tp4")
  std::string plan_path, measured_path;
};

// Every configuration under `dir`, sorted by name, at any depth: a folder holding plan.json
// and measured.json (named by the folder), or a file pair NAME.plan.json + NAME.measured.json
// (named NAME). A plan without its measurement, or a measurement without its plan, is an
// error (a missing point must not pass unseen). `dir` must exist; it may hold none.
Expected<std::vector<ConfigFiles>> find_configs(const std::string& dir);

struct ValidationRow {
  std::string config;
  std::string model, cluster, parallel;  // parallel: "dp 1 tp 4 pp 2 zero 1 mb 2 1f1b none"
  double predicted_step_s = 0, measured_step_s = 0;
  double predicted_peak_bytes = 0, measured_peak_bytes = 0;
  double step_error_pct() const { return error_pct(predicted_step_s, measured_step_s); }
  double memory_error_pct() const { return error_pct(predicted_peak_bytes, measured_peak_bytes); }
};

// Loads the plan, re-predicts it with the cost model and reads the measurement, a measured
// step result (sim/step_result.hpp, as strictly as any input) whose step_time_s and
// memory_bytes.peak must be > 0 and whose configuration (model, parallel layout, schedule,
// global batch, sequence, dtypes) must be the plan's.
Expected<ValidationRow> validate_config(const ConfigFiles& files);

struct ValidationSummary {
  int64_t configs = 0;
  double step_time_mape_pct = 0, memory_mape_pct = 0;
  size_t worst_step = 0, worst_memory = 0;  // rows with the largest |error| (first on ties)
};
ValidationSummary summarize(const std::vector<ValidationRow>& rows);

// {"configs", "step_time_mape", "memory_mape", "worst": {"step_time": {...}, "memory": {...}},
//  "rows": [...]}; MAPE and errors in percent. `rows` must not be empty.
nlohmann::json validation_json(const std::vector<ValidationRow>& rows, const ValidationSummary& s);

// ---- traces -----------------------------------------------------------------------------

struct TraceEvent {
  int64_t pid = 0;
  std::string name;
  double dur_s = 0;
};

// A Chrome trace event document: an object with "traceEvents" or a bare array of events.
bool is_chrome_trace(const nlohmann::json& j);

// Complete events ("ph": "X", dur in microseconds) and begin/end pairs ("B"/"E" on one pid and
// tid, nested); metadata and instant events carry no duration and are skipped. An "X" without
// a numeric dur, or an "E" with no open "B", is an error naming the event's index.
Expected<std::vector<TraceEvent>> trace_events(const nlohmann::json& j, const std::string& where);

// Op category of an event name (sim/trace_names.hpp): forward, backward, recompute,
// optimizer, tp, dp, pp, or other.
std::string event_category(const std::string& name);

struct TraceRow {
  std::string name;                  // event name, or category name in `categories`
  // Events; a micro-batch's pass or transfer (" mb" in its name) once per rank however many
  // segments its trace cuts it into.
  int64_t predicted_count = 0, measured_count = 0;
  double predicted_s = 0, measured_s = 0;  // total duration over the compared ranks
  std::optional<double> error_pct;   // none when either side has no event of this name
};

struct TraceComparison {
  std::vector<int64_t> ranks;  // pids compared: those in both traces; all when none is shared
  bool shared_ranks = false;   // whether `ranks` is the intersection
  std::vector<TraceRow> rows;  // every name on either side, by category then name
  std::vector<TraceRow> categories;
};

TraceComparison compare_traces(const std::vector<TraceEvent>& predicted, const std::vector<TraceEvent>& measured);

nlohmann::json trace_comparison_json(const TraceComparison& c);

}  // namespace loom
