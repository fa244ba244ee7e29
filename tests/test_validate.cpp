// loom validate and compare's trace mode: the arithmetic of error, MAPE, worst case and
// matching, on SYNTHETIC fixtures (tests/data/validate/README.md). Nothing here says anything
// about loom's accuracy; traces/h100 (the `validate_h100` ctest) does that.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "run_loom.hpp"
#include "sim/validation.hpp"

using namespace loom;
namespace fs = std::filesystem;

namespace {
const std::string kData = std::string(LOOM_SOURCE_DIR) + "/tests/data/validate";

ValidationRow row(const std::string& name, double ps, double ms, double pm, double mm) {
  ValidationRow r;
  r.config = name;
  r.predicted_step_s = ps;
  r.measured_step_s = ms;
  r.predicted_peak_bytes = pm;
  r.measured_peak_bytes = mm;
  return r;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("loom_validate_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST_CASE("error and MAPE are relative to the measurement") {
  CHECK(error_pct(110, 100) == Approx(10.0));  // a prediction 10% above the measurement
  CHECK(error_pct(80, 100) == Approx(-20.0));
  CHECK(mape_pct({10, -20, 5}) == Approx(35.0 / 3));
  CHECK(mape_pct({}) == 0);
  // Step errors +10, -20, +5; memory errors 0, +1, -4: exact decimal cases.
  const std::vector<ValidationRow> rows = {row("a", 1.1, 1.0, 100, 100), row("b", 0.8, 1.0, 101, 100),
                                           row("c", 2.1, 2.0, 96, 100)};
  const ValidationSummary s = summarize(rows);
  CHECK(s.configs == 3);
  CHECK(s.step_time_mape_pct == Approx(35.0 / 3));
  CHECK(s.memory_mape_pct == Approx(5.0 / 3));
  CHECK(s.worst_step == 1);
  CHECK(s.worst_memory == 2);
  const auto j = validation_json(rows, s);
  CHECK(j["configs"] == 3);
  CHECK(j["worst"]["step_time"]["config"] == "b");
  CHECK(j["worst"]["step_time"]["error_pct"].get<double>() == Approx(-20.0));
  CHECK(j["worst"]["memory"]["config"] == "c");
  CHECK(j["rows"].size() == 3);
}

TEST_CASE("configurations: folders and NAME.plan.json pairs, sorted; a lone half is an error") {
  auto c = find_configs(kData);
  REQUIRE(c.ok());
  REQUIRE(c->size() == 3);
  CHECK((*c)[0].name == "gpt2-124m-b8");
  CHECK((*c)[1].name == "pairs/gpt2-124m-b32");
  CHECK((*c)[2].name == "pairs/gpt2-350m-full");
  CHECK(fs::path((*c)[1].measured_path).filename() == "gpt2-124m-b32.measured.json");

  const fs::path d = fresh_dir("lone");
  fs::copy_file(kData + "/gpt2-124m-b8/plan.json", d / "x.plan.json");
  auto lone = find_configs(d.string());
  REQUIRE_FALSE(lone.ok());
  CHECK(lone.error().message.find("x.plan.json: has no x.measured.json") != std::string::npos);
  CHECK_FALSE(find_configs((d / "missing").string()).ok());
  auto empty = find_configs(fresh_dir("empty").string());
  REQUIRE(empty.ok());
  CHECK(empty->empty());
}

TEST_CASE("loom validate --json: every row, its error from its own numbers, MAPE the mean") {
  LoomRun r = run_loom("validate " + kData + " --json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["schema_version"] == 1);
  REQUIRE(j["configs"] == 3);
  REQUIRE(j["rows"].size() == 3);
  double step_sum = 0, mem_sum = 0;
  for (const auto& row : j["rows"]) {
    for (const char* k : {"step_time_s", "memory_peak_bytes"}) {
      const auto& f = row[k];
      const double p = f["predicted"], m = f["measured"];
      CHECK(p > 0);
      CHECK(f["error_pct"].get<double>() == Approx((p - m) / m * 100));
    }
    step_sum += std::fabs(row["step_time_s"]["error_pct"].get<double>());
    mem_sum += std::fabs(row["memory_peak_bytes"]["error_pct"].get<double>());
  }
  CHECK(j["step_time_mape"].get<double>() == Approx(step_sum / 3));
  CHECK(j["memory_mape"].get<double>() == Approx(mem_sum / 3));
  // The measured side is the fixture's, exactly.
  CHECK(j["rows"][0]["step_time_s"]["measured"] == 0.018);
  CHECK(j["rows"][0]["memory_peak_bytes"]["measured"] == 9.0e9);
  // The deliberately bad point (measured 0.07 s for a step loom prices at a few tens of ms) is
  // kept and is the worst case.
  CHECK(j["worst"]["step_time"]["config"] == "pairs/gpt2-124m-b32");
  CHECK(j["worst"]["step_time"]["error_pct"].get<double>() < -30);

  // Bounds turn it into a check: exit 1 above, 0 at or below.
  const double mape = j["step_time_mape"];
  CHECK(run_loom("validate " + kData + " --max-step-mape " + std::to_string(mape * 0.99)).code == 1);
  CHECK(run_loom("validate " + kData + " --max-step-mape " + std::to_string(mape * 1.01) + " --max-memory-mape 100").code == 0);
}

TEST_CASE("loom validate: bad input is one line and exit 2, never a dropped point") {
  auto expect_2 = [](const std::string& dir, const std::string& text) {
    LoomRun r = run_loom("validate " + dir);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find(text) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  };
  expect_2(fresh_dir("none").string(), "holds no measured configuration");
  // The fixture's measurement with one field changed (a JSON pointer into it) beside its plan.
  auto edited = [](const std::string& name, const std::string& pointer, const nlohmann::json& value) {
    const fs::path d = fresh_dir(name);
    fs::copy_file(kData + "/gpt2-124m-b8/plan.json", d / "plan.json");
    auto m = nlohmann::json::parse(slurp(kData + "/gpt2-124m-b8/measured.json"));
    m[nlohmann::json::json_pointer(pointer)] = value;
    std::ofstream(d / "measured.json") << m.dump(2);
    return d.string();
  };
  // A measurement of another configuration (a consistent one: another sequence length).
  expect_2(edited("other", "/seq", 512), "/train/seq differs (plan 1024, report 512): a measurement of another configuration");
  // A zero step time gives no error: rejected, not skipped.
  expect_2(edited("zero", "/step_time_s", 0), "measured.json: /step_time_s: must be a number > 0");
  // The report is read as strictly as a model file: unknown keys, wrong types, negative sizes,
  // parts that do not add up.
  expect_2(edited("unknown", "/synthetic", "note"), "measured.json: /synthetic: unknown field");
  expect_2(edited("type", "/step_time_s", "0.02"), "measured.json: /step_time_s: must be a number");
  expect_2(edited("negative", "/memory_bytes/weights", -1), "measured.json: /memory_bytes/weights: must be >= 0 (got -1)");
  expect_2(edited("sum", "/memory_bytes/peak", 1), "measured.json: /memory_bytes/peak: must be the sum of the categories");
}

TEST_CASE("trace against trace: matched by name on the ranks both traces hold") {
  LoomRun r = run_loom("compare " + kData + "/trace_predicted.json " + kData + "/trace_measured.json --json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["schema_version"] == 1);
  CHECK(j["ranks"] == nlohmann::json::array({0}));  // rank 1 is only in the predicted trace
  CHECK(j["shared_ranks"] == true);
  std::map<std::string, nlohmann::json> by;
  for (const auto& e : j["events"]) by[e["name"]] = e;
  REQUIRE(by.size() == 6);
  CHECK(by["F mb0 c0"]["error_pct"].get<double>() == Approx(-20.0));  // 1000 us against 1250
  CHECK(by["B mb0 c0"]["error_pct"].get<double>() == Approx(25.0));   // 2000 against 1600
  CHECK(by["tp allreduce"]["measured_count"] == 2);                   // one X, one B/E pair
  CHECK(by["tp allreduce"]["measured_s"].get<double>() == Approx(250e-6));
  CHECK(by["tp allreduce"]["error_pct"].get<double>() == Approx(-20.0));
  CHECK(by["optimizer"]["error_pct"].get<double>() == Approx(0.0));
  CHECK(by["dp allreduce bucket 0"]["error_pct"].is_null());  // only predicted: listed, no error
  CHECK(by["cudaMemcpy"]["error_pct"].is_null());             // only measured: listed too
  std::map<std::string, nlohmann::json> cat;
  for (const auto& e : j["categories"]) cat[e["name"]] = e;
  CHECK(cat["forward"]["error_pct"].get<double>() == Approx(-20.0));
  CHECK(cat["other"]["measured_count"] == 1);

  LoomRun text = run_loom("compare " + kData + "/trace_predicted.json " + kData + "/trace_measured.json");
  CHECK(text.code == 0);
  CHECK(text.out.find("B mb0 c0") != std::string::npos);
  CHECK(text.out.find("+25.00") != std::string::npos);
  LoomRun bad = run_loom("compare " + kData + "/trace_predicted.json " + kData + "/gpt2-124m-b8/measured.json");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("is not a Chrome trace") != std::string::npos);
}

TEST_CASE("trace comparison with no rank in common compares all of each") {
  const std::vector<TraceEvent> p = {{0, "F mb0 c0", 1.0}, {0, "pp send F mb0", 0.5}};
  const std::vector<TraceEvent> m = {{5, "F mb0 c0", 2.0}};
  const TraceComparison c = compare_traces(p, m);
  CHECK_FALSE(c.shared_ranks);
  CHECK(c.ranks == std::vector<int64_t>{0, 5});
  REQUIRE(c.rows.size() == 2);
  CHECK(c.rows[0].name == "F mb0 c0");  // forward before pp
  CHECK(*c.rows[0].error_pct == Approx(-50.0));
  CHECK_FALSE(c.rows[1].error_pct.has_value());
  CHECK(event_category("R mb1 c0") == "recompute");
  CHECK(event_category("dp all_gather F mb0 c0") == "dp");
}

TEST_CASE("trace comparison counts a micro-batch's pass once, however many segments cut it") {
  // The executor's trace closes a compute event at each blocking call and reopens it after, and
  // records a blocking send as its post and its wait: both sides count one pass each.
  const std::vector<TraceEvent> p = {{0, "F mb0 c0", 1.0}, {0, "pp send F mb0", 0.5}, {0, "tp allreduce", 0.1},
                                     {0, "tp allreduce", 0.1}};
  const std::vector<TraceEvent> m = {{0, "F mb0 c0", 0.9}, {0, "F mb0 c0", 0.1}, {0, "pp send F mb0", 0.1},
                                     {0, "pp send F mb0", 0.4}, {0, "tp allreduce", 0.2}, {0, "tp allreduce", 0.2},
                                     {1, "F mb0 c0", 1.0}};
  const TraceComparison c = compare_traces(p, m);
  std::map<std::string, TraceRow> by;
  for (const auto& r : c.rows) by[r.name] = r;
  CHECK(by["F mb0 c0"].measured_count == 1);  // rank 1 is only measured: left out
  CHECK(by["F mb0 c0"].measured_s == Approx(1.0));
  CHECK(*by["F mb0 c0"].error_pct == Approx(0.0));
  CHECK(by["pp send F mb0"].measured_count == 1);
  CHECK(by["pp send F mb0"].measured_s == Approx(0.5));
  CHECK(by["tp allreduce"].predicted_count == 2);  // a layer's collectives: event by event
  CHECK(by["tp allreduce"].measured_count == 2);
}
