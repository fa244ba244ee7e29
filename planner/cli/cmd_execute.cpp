// loom execute: run a plan. `mpirun -np N loom execute plan.json --device cpu --steps K` trains
// the plan's model on N CPU ranks with exactly its parallelism and reports what it measured in
// the prediction's field names (--report). The trainers are modules loaded here, after the flags,
// the outputs and the plan were checked (planner/cli/backend_module.hpp): `loom` links neither
// Open MPI nor CUDA.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>

#include "executor/backend_entry.h"
#include "executor/cuda/plan_limits.hpp"
#include "executor/run_checks.hpp"
#include "executor/trainer.hpp"  // ExecOptions: the flags' defaults, shared with the trainer
#include "planner/cli/backend_module.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/flags.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/offload_cli.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"

namespace loom::cli {

namespace {

struct ExecuteOptions {
  std::string plan_path;
  std::string device = "cpu";
  std::string report_path;
  double timeout_s = 60;
  int64_t emulate_rank = -1;
  bool quiet = false;
  std::string die_in_save;     // hidden: "RANK:BYTES" or "RANK:POINT" (exec::SaveFault)
  bool lr_given = false, timeout_given = false;  // typed on the command line (not the defaults)
  std::string stage_layers;    // --stage-layers: overrides the plan's layers per stage
  exec::ExecOptions exec;
};

// The longest a rank waits on one message: a week, far beyond any step, and small enough that
// the deadline (now + timeout, in int64 nanoseconds) cannot overflow.
constexpr double kMaxTimeoutS = 7 * 24 * 3600;

// Checks made before MPI starts run in every process `mpirun -np N` starts, on the same flags
// and the same shared paths: only world rank 0 (or a process started without mpirun) prints the
// line, the others end with the same code quietly.
int refuse(const Error& e) {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (rank == nullptr || std::string(rank) == "0") return fail(e);
  return 2;
}

// --steps counts to a step: 1 or more (its text was held to decimal digits as it was parsed).
Status check_flags(const ExecuteOptions& o) {
  if (o.exec.steps < 1) return make_error("--steps", "must be >= 1 (got " + std::to_string(o.exec.steps) + ")");
  return ok_status();
}

// "RANK:BYTES" (the rank dies after that many bytes of its file) or "RANK:POINT" (a named point).
Expected<exec::SaveFault> parse_save_fault(const std::string& text) {
  const auto colon = text.find(':');
  auto digits = [](const std::string& t) { return !t.empty() && t.size() < 15 && t.find_first_not_of("0123456789") == std::string::npos; };
  exec::SaveFault f;
  if (colon == std::string::npos || !digits(text.substr(0, colon)))
    return make_error("--die-in-save", "must be RANK:BYTES or RANK:POINT (got " + text + ")");
  f.rank = std::stoll(text.substr(0, colon));
  const std::string at = text.substr(colon + 1);
  if (digits(at)) {
    f.bytes = std::stoll(at);
    return f;
  }
  const auto& points = exec::save_fault_points();
  if (std::find(points.begin(), points.end(), at) == points.end())
    return make_error("--die-in-save", "unknown point " + at);
  f.point = at;
  return f;
}

// Every output, before any work: a run of hours must not end unable to write what it measured.
Status check_outputs(const ExecuteOptions& o) {
  const std::pair<const std::string*, const char*> files[] = {
      {&o.report_path, "--report"}, {&o.exec.trace_path, "--trace"}, {&o.exec.weights_out, "--weights-out"}};
  for (const auto& [path, flag] : files)
    if (!path->empty())
      if (auto st = exec::check_output_file(*path, flag); !st) return st;
  if (!o.exec.save_dir.empty())
    if (auto st = exec::check_output_folder(o.exec.save_dir, "--save"); !st) return st;
  return ok_status();
}

// What run_execute needs settled before it starts: the flags, the fault spec, the outputs.
Status prepare(ExecuteOptions& o) {
  if (auto st = check_flags(o); !st) return st;
  if (!o.die_in_save.empty()) {
    auto f = parse_save_fault(o.die_in_save);
    if (!f) return f.error();
    o.exec.save_fault = *f;
  }
  return check_outputs(o);
}

// The arguments both modules take (executor/backend_entry.h); the strings stay owned by `o` and
// `plan_json`, which outlive the call.
LoomExecuteArgs execute_args(const ExecuteOptions& o, const std::string& plan_json) {
  const exec::SaveFault& f = o.exec.save_fault;
  return LoomExecuteArgs{o.plan_path.c_str(), plan_json.c_str(), o.report_path.c_str(), o.exec.trace_path.c_str(),
                         o.exec.save_dir.c_str(), o.exec.resume_dir.c_str(), o.exec.weights_out.c_str(),
                         o.exec.steps, o.exec.seed, o.quiet ? 0 : 1, o.lr_given ? o.exec.lr : 0.0,
                         o.timeout_s, o.emulate_rank, o.exec.die_at_step, o.exec.die_rank,
                         o.exec.nan_at_step, o.exec.stall ? 1 : 0, f.rank, f.bytes, f.point.c_str()};
}

bool writes_model(const ExecuteOptions& o) {
  return !o.exec.save_dir.empty() || !o.exec.resume_dir.empty() || !o.exec.weights_out.empty();
}

// What both devices check before they load a trainer, in this order: the device's rules for
// the plan (`device_rules`, already evaluated), --steps against the plan, the fit, and
// --emulate-rank's rules.
Status check_run(const ExecuteOptions& o, const Plan& plan, Status device_rules) {
  if (!device_rules) return device_rules;
  if (auto st = exec::check_step_count(o.exec.steps, plan); !st) return st;
  if (!plan.prediction.fits) return make_error(o.plan_path, "does not fit: " + plan.prediction.reason);
  if (o.emulate_rank >= 0) return exec::check_emulation(o.emulate_rank, plan, writes_model(o));
  return ok_status();
}

// The plan, as checked, on a trainer module's entry table (either device), every flag passed.
template <class Backend>
int run_module(const Expected<const Backend*>& backend, const ExecuteOptions& o, const Plan& plan) {
  if (!backend) return refuse(backend.error());
  const std::string plan_json = plan_to_json(plan).dump();
  const LoomExecuteArgs args = execute_args(o, plan_json);
  return (*backend)->execute(&args);
}

// The CUDA backend (executor/cuda: the same trainer on the CUDA compute backend, every flag
// forwarded), loaded only here, after the flags and the plan were checked: a bad plan gets the
// same line as on the CPU backend, and a plan the CUDA path cannot run is refused before the
// module is loaded or anything allocated. Under mpirun every rank runs this: world rank 0 prints.
int run_cuda(const ExecuteOptions& o) {
  auto plan = load_plan(o.plan_path);
  if (!plan) return refuse(plan.error());
  if (auto st = refuse_offload(*plan, o.plan_path); !st) return refuse(st.error());
  if (!o.stage_layers.empty())  // the module reads the plan file itself
    return refuse(make_error("--stage-layers", "the CUDA backend runs the plan file as written: put the layout in the plan"));
  if (auto st = check_run(o, *plan, cuda::check_cuda_plan(*plan)); !st) return refuse(st.error());
  return run_module(load_cuda_backend("--device"), o, *plan);
}

// The CPU reference trainer (libloom_cpu.so): the plan read, its --stage-layers applied, what
// the trainer runs (check_cpu_plan), the steps, the fit and --emulate-rank's rules checked here,
// so a plan it cannot run is refused in one line whether or not the module is built; then the
// module runs it on the ranks mpirun started, or one rank alone (--emulate-rank).
int run_execute(const ExecuteOptions& o) {
  if (o.device == "cuda") return run_cuda(o);
  if (o.device != "cpu") return fail(make_error("--device", "must be cpu or cuda (got " + o.device + ")"));
  auto plan = load_plan(o.plan_path);
  if (!plan) return fail(plan.error());
  if (auto st = refuse_offload(*plan, o.plan_path); !st) return fail(st.error());
  if (auto st = apply_stage_layers(*plan, o.stage_layers); !st) return fail(st.error());
  if (auto st = check_run(o, *plan, exec::check_cpu_plan(*plan)); !st) return fail(st.error());
  return run_module(load_cpu_backend("--device"), o, *plan);
}

}  // namespace

void add_execute(CLI::App& app, Run& run) {
  auto o = std::make_shared<ExecuteOptions>();
  auto* cmd = app.add_subcommand("execute", "train a plan (under mpirun -np N, one rank per device) and measure it");
  cmd->add_option("plan", o->plan_path, "plan.json (from loom plan or loom predict -o)")->required();
  cmd->add_option("--device", o->device,
                  "cpu (the fp32 reference backend) or cuda (bf16 on GPUs, one rank per GPU or several sharing one; built where nvcc and Open MPI are found)");
  cmd->add_option("--steps", o->exec.steps, "train until this step")->transform(Integer(INT64_MIN, INT64_MAX));
  cmd->add_option("--report", o->report_path, "write what was measured (Estimate field names, ranks[] beside)");
  cmd->add_option("--save", o->exec.save_dir, "write a checkpoint to this folder after the last step");
  cmd->add_option("--resume", o->exec.resume_dir, "continue from the checkpoint in this folder");
  cmd->add_option("--lr", o->exec.lr, "AdamW learning rate (default: cpu 1e-3, cuda 3e-4)")
      ->transform(Number(0, std::numeric_limits<double>::max(), Bound::exclusive));
  cmd->add_option("--seed", o->exec.seed, "weights and synthetic data seed")->transform(Integer(0, INT64_MAX));
  cmd->add_option("--timeout-s", o->timeout_s, "give up on a peer after this many seconds without progress")
      ->transform(Number(0, kMaxTimeoutS, Bound::exclusive));
  cmd->add_option("--weights-out", o->exec.weights_out, "write the trained model (cpu::Gpt layout, raw fp32)");
  cmd->add_option("--trace", o->exec.trace_path,
                  "write the last step of every rank as a Chrome trace (the names of loom simulate --trace)");
  cmd->add_option("--stage-layers", o->stage_layers, "override the plan's layers per pipeline stage, e.g. 7,8,8,7");
  cmd->add_option("--emulate-rank", o->emulate_rank,
                  "run only this rank of the plan, in one process: its shapes, layers and schedule, with communication as local copies")
      ->transform(Integer(0, INT64_MAX));  // -1 (not given) is the default, never typed
  cmd->add_flag("--quiet", o->quiet, "print nothing on success");
  // Fault injection, for the reliability tests.
  cmd->add_option("--die-at-step", o->exec.die_at_step)->group("")->transform(Integer(0, INT64_MAX));
  cmd->add_option("--die-rank", o->exec.die_rank)->group("")->transform(Integer(0, INT64_MAX));
  cmd->add_flag("--stall", o->exec.stall)->group("");
  cmd->add_option("--nan-at-step", o->exec.nan_at_step)->group("")->transform(Integer(0, INT64_MAX));
  cmd->add_option("--die-in-save", o->die_in_save)->group("");
  cmd->callback([o, cmd, &run] {
    o->lr_given = cmd->count("--lr") > 0;
    o->timeout_given = cmd->count("--timeout-s") > 0;
    run = [o] {
      if (auto st = prepare(*o); !st) return refuse(st.error());
      return run_execute(*o);
    };
  });
}

}  // namespace loom::cli
