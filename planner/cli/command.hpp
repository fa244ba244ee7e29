// Each subcommand registers itself on the CLI11 app and leaves a `run` to call after a
// successful parse. run() returns the exit code: 0 done, 2 bad input (one line on stderr).
#pragma once
#include <CLI/CLI.hpp>

#include <functional>

namespace loom::cli {

using Run = std::function<int()>;

void add_predict(CLI::App& app, Run& run);
void add_plan(CLI::App& app, Run& run);
void add_export(CLI::App& app, Run& run);
void add_import(CLI::App& app, Run& run);  // a Megatron-LM launch as a plan.json
void add_simulate(CLI::App& app, Run& run);
void add_execute(CLI::App& app, Run& run);
void add_compare(CLI::App& app, Run& run);
void add_validate(CLI::App& app, Run& run);  // measured configurations: MAPE, worst case
void add_calibrate(CLI::App& app, Run& run);  // GPU microbenchmarks (CUDA builds)

}  // namespace loom::cli
