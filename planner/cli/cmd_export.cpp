// loom export plan.json --to megatron|torchtitan|deepspeed: the plan as the engine's
// arguments or config on stdout; what the engine cannot express, one line each, on stderr.
#include <fmt/core.h>

#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/export.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"

namespace loom::cli {

namespace {

struct ExportOptions {
  std::string plan_path;
  std::string to;
  std::string out_path;
};

int run_export(const ExportOptions& o) {
  auto j = read_json_file(o.plan_path);
  if (!j) return fail(j.error());
  auto plan = plan_from_json(*j, o.plan_path);
  if (!plan) return fail(plan.error());
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
  cmd->callback([o, &run] { run = [o] { return run_export(*o); }; });
}

}  // namespace loom::cli
