// loom: plan, predict, simulate and run parallel transformer training.
// Exit codes: 0 done, 1 a gate failed (validate), 2 bad input (one line on stderr), 3 an
// internal error: an exception no library function turned into an Error value, which is a bug.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "loom_version.hpp"  // generated at build time (planner/cli/version.cmake)
#include "planner/cli/command.hpp"

namespace {

constexpr int kInternalError = 3;

int parse_and_run(int argc, char** argv) {
  CLI::App app{"loom: how to split transformer training across GPUs, what it needs, and how fast it runs"};
  app.require_subcommand(1);
  // `loom --version`: one line, the project version and the commit it was built from.
  app.set_version_flag("--version", fmt::format("loom {} (commit {})", LOOM_VERSION, LOOM_COMMIT));
  loom::cli::Run run;
  loom::cli::add_predict(app, run);
  loom::cli::add_plan(app, run);
  loom::cli::add_export(app, run);
  loom::cli::add_import(app, run);
  loom::cli::add_simulate(app, run);
  loom::cli::add_execute(app, run);
  loom::cli::add_compare(app, run);
  loom::cli::add_validate(app, run);
  loom::cli::add_calibrate(app, run);
  // A first word that is no command (and no flag): named, with the commands there are.
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known = known || sub->get_name() == argv[1];
    }
    if (!known) {
      fmt::print(stderr, "loom: {}: unknown command (commands: {})\n", argv[1], names);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line naming the flag and the rule, exit code 2 (never CLI11's multi-line usage).
    fmt::print(stderr, "loom: {}\n", e.what());
    return 2;
  }
  return run ? run() : 2;
}

// One line and a distinct exit code instead of std::terminate's abort (134). Written with
// fputs: after bad_alloc, formatting might itself need memory.
int internal_error(const char* what) {
  std::fputs("loom: internal error: ", stderr);
  std::fputs(what, stderr);
  std::fputs(" (this is a bug; please report it)\n", stderr);
  return kInternalError;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return parse_and_run(argc, argv);
  } catch (const std::bad_alloc&) {
    return internal_error("out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    return internal_error(e.what());
  } catch (...) {
    return internal_error("an exception of unknown type");
  }
}
