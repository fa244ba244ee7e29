// loom: plan, predict, simulate and run parallel transformer training.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "planner/cli/command.hpp"

int main(int argc, char** argv) {
  CLI::App app{"loom: how to split transformer training across GPUs, what it needs, and how fast it runs"};
  app.require_subcommand(1);
  loom::cli::Run run;
  loom::cli::add_predict(app, run);
  loom::cli::add_plan(app, run);
  loom::cli::add_export(app, run);
  loom::cli::add_simulate(app, run);
  loom::cli::add_execute(app, run);
  loom::cli::add_compare(app, run);
  loom::cli::add_validate(app, run);
  loom::cli::add_calibrate(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line naming the flag and the rule, exit code 2 (never CLI11's multi-line usage).
    fmt::print(stderr, "loom: {}\n", e.what());
    return 2;
  }
  return run ? run() : 2;
}
