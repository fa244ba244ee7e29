// libFuzzer target over every JSON loader, the hardware profile and the command-line parser.
// The first byte picks the entry point (mod 7: model, cluster, train, parallel, plan, CLI,
// profile); the rest is its input. Loaders must return an Error value for anything malformed;
// what they accept must price without wrapping around (a positive parameter count, a finite
// step time, no negative memory); the CLI must return 0 or 2. Any crash, sanitizer report,
// hang or other exit code is a bug.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "planner/cli/command.hpp"
#include "sim/json_reader.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/plan.hpp"
#include "sim/profile.hpp"
#include "sim/spec_json.hpp"

namespace {

int run_cli(const std::string& text) {
  // Whitespace-separated arguments, as a shell would pass them.
  std::vector<std::string> args{"loom"};
  std::string cur;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\t' || c == '\0') {
      if (!cur.empty()) args.push_back(cur), cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  if (args.size() > 64) return 0;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  CLI::App app{"loom"};
  app.require_subcommand(1);
  loom::cli::Run run;
  loom::cli::add_predict(app, run);
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError&) {
    return 2;  // main prints the line and exits 2
  }
  return run ? run() : 2;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The CLI prints tables and errors: keep the fuzzer's output readable.
  if (!std::freopen("/dev/null", "w", stdout)) return 0;
  if (!std::freopen("/dev/null", "w", stderr)) return 0;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const int mode = data[0] % 7;
  if (mode == 5) {
    const int code = run_cli(text);
    if (code != 0 && code != 2) std::abort();
    return 0;
  }
  auto j = loom::parse_json_text(text, "fuzz");
  if (!j) return 0;
  std::vector<std::string> ignored;
  switch (mode) {
    case 0: {
      auto m = loom::model_from_json(*j, "fuzz", &ignored);
      if (m && loom::total_params(*m) <= 0) std::abort();  // an accepted model wrapped around
      break;
    }
    case 1: (void)loom::cluster_from_json(*j, "fuzz"); break;
    case 2: (void)loom::train_from_json(*j, "fuzz"); break;
    case 3: (void)loom::parallel_from_json(*j, "fuzz"); break;
    case 4: {
      auto plan = loom::plan_from_json(*j, "fuzz");
      if (!plan) break;
      const loom::Estimate e = loom::CostModel(plan->model, plan->cluster, plan->train).evaluate(plan->parallel);
      if (!std::isfinite(e.step_time_s) || e.step_time_s < 0 || e.memory.peak() < 0) std::abort();
      break;
    }
    case 6: (void)loom::profile_from_json(*j, "fuzz"); break;
  }
  return 0;
}
