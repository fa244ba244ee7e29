// loom export plan.json --to megatron|torchtitan|deepspeed: the plan as the engine's
// arguments or config on stdout; what the engine cannot express, one line each, on stderr. A
// plan that does not fit GPU memory is refused (exit 2) unless --force.
#include <fmt/core.h>

#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/export.hpp"
#include "sim/json_reader.hpp"

namespace loom::cli {

namespace {

struct ExportOptions {
  std::string plan_path;
  std::string to;
  std::string out_path;
  bool force = false;
};

int run_export(const ExportOptions& o) {
  auto plan = load_plan(o.plan_path);
  if (!plan) return fail(plan.error());
  // An engine would run out of memory at its first step: refused unless --force, and said
  // either way (load_plan priced the plan again, so the file's own "fits" is not trusted).
  if (!plan->prediction.fits) {
    if (!o.force) return fail(make_error(o.plan_path, "does not fit: " + plan->prediction.reason + " (--force exports it anyway)"));
    fmt::print(stderr, "loom: {}: does not fit: {} (exported anyway: --force)\n", o.plan_path, plan->prediction.reason);
  }
  Engine engine = Engine::megatron;
  for (size_t i = 0; i < engine_names().size(); ++i)
    if (engine_names()[i] == o.to) engine = static_cast<Engine>(i);
  const ExportResult r = export_plan(*plan, engine);
  if (o.out_path.empty()) {
    fmt::print("{}", r.text);
  } else {
    auto st = write_text_file_atomic(o.out_path, r.text);
    if (!st) return fail(st.error());
  }
  for (const auto& line : r.unexpressible) fmt::print(stderr, "loom: {} cannot express: {}\n", o.to, line);
  return 0;
}

}  // namespace

void add_export(CLI::App& app, Run& run) {
  auto o = std::make_shared<ExportOptions>();
  auto* cmd = app.add_subcommand("export", "a plan.json as Megatron-LM arguments, a torchtitan TOML or a DeepSpeed JSON");
  cmd->add_option("plan", o->plan_path, "plan.json (from `loom plan -o` or `loom predict -o`)")->required();
  cmd->add_option("--to", o->to, "target engine")->required()->check(CLI::IsMember(engine_names()));
  cmd->add_option("-o,--out", o->out_path, "write to a file instead of stdout");
  cmd->add_flag("--force", o->force,
                "export a plan that does not fit GPU memory (refused otherwise; either way one line on stderr says so)");
  cmd->callback([o, &run] { run = [o] { return run_export(*o); }; });
}

}  // namespace loom::cli
