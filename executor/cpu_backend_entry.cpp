// libloom_cpu.so's entry table (executor/backend_entry.h): `loom execute --device cpu`, the CPU
// reference trainer (trainer.hpp, execute_cpu) on ranks over MPI, or one rank of a larger plan
// alone (--emulate-rank), behind a plain C call. `loom` has checked the flags and the outputs and
// read the plan (--stage-layers applied) before it loads this module; the checks that need the
// trainer start here, in the order `loom` has always made them.
#include <fmt/core.h>

#include <string>

#include "executor/backend_entry.h"
#include "executor/backend_guard.hpp"
#include "executor/comm.hpp"
#include "executor/run_checks.hpp"
#include "executor/trainer.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"

namespace loom::exec {

namespace {

struct CpuRun {
  std::string plan_path, report_path;
  ExecOptions exec;
  double timeout_s = 60;
  int64_t emulate_rank = -1;
  bool quiet = false;
};

CpuRun from_args(const LoomExecuteArgs& a) {
  CpuRun r;
  r.plan_path = a.plan_path;
  r.report_path = a.report_path;
  r.exec.trace_path = a.trace_path;
  r.exec.save_dir = a.save_dir;
  r.exec.resume_dir = a.resume_dir;
  r.exec.weights_out = a.weights_out;
  r.exec.steps = a.steps;
  r.exec.seed = a.seed;
  if (a.lr > 0) r.exec.lr = a.lr;  // else the CPU default (ExecOptions, `loom execute --help`)
  r.exec.die_at_step = a.die_at_step;
  r.exec.die_rank = a.die_rank;
  r.exec.nan_at_step = a.nan_at_step;
  r.exec.stall = a.stall != 0;
  r.exec.save_fault.rank = a.save_fault_rank;
  r.exec.save_fault.bytes = a.save_fault_bytes;
  r.exec.save_fault.point = a.save_fault_point;
  r.timeout_s = a.timeout_s;
  r.emulate_rank = a.emulate_rank;
  r.quiet = a.progress == 0;
  return r;
}

// Prints "loom: <message>" on stderr and returns 2 (every rank: each refuses the same input).
int refuse(const Error& e) {
  fmt::print(stderr, "loom: {}\n", e.message);
  return 2;
}

// The plan `loom` read and checked (plan_json), priced again: the prediction decides the fit.
Expected<Plan> plan_from_text(const std::string& text, const std::string& where) {
  auto doc = parse_json_text(text, where);
  if (!doc) return doc.error();
  auto plan = plan_from_json(*doc, where);
  if (!plan) return plan.error();
  plan->prediction = CostModel(plan->model, plan->cluster, plan->train).evaluate(plan->parallel);
  return plan;
}

// One rank of a plan larger than this machine, in one process, without MPI: its shapes, layers,
// schedule and memory, communication replaced by local copies (executor/comm.hpp).
int run_emulated(const CpuRun& r, const Plan& plan) {
  const int64_t world = plan.parallel.gpus();
  const bool writes_model = !r.exec.save_dir.empty() || !r.exec.resume_dir.empty() || !r.exec.weights_out.empty();
  if (auto st = check_emulation(r.emulate_rank, plan, writes_model); !st) return refuse(st.error());
  auto comm = make_emulated_comm(static_cast<int>(r.emulate_rank), static_cast<int>(world));
  ExecOptions eo = r.exec;
  eo.emulated = true;
  auto report = execute_cpu(plan, *comm, eo);
  if (!report) return refuse(report.error());
  if (!r.quiet)
    fmt::print("rank {} of {} (emulated): {:.3f} s per step, peak {} bytes\n", r.emulate_rank, world,
               (*report)["step_time_s"].get<double>(), (*report)["memory_bytes"]["peak"].get<int64_t>());
  if (!r.report_path.empty())
    if (auto st = write_text_file_atomic(r.report_path, report->dump(2) + "\n"); !st) return refuse(st.error());
  return 0;
}

// Rank 0's output of a run that succeeded: the losses and the step time, then the report.
void finish_rank0(const CpuRun& r, const Comm& c, const nlohmann::json& report) {
  if (!r.quiet) {
    const auto& losses = report["losses"];
    for (size_t i = 0; i < losses.size(); ++i)
      fmt::print("step {:>4}  loss {:.6f}\n", r.exec.steps - static_cast<int64_t>(losses.size()) + static_cast<int64_t>(i) + 1,
                 losses[i].get<double>());
    fmt::print("{} ranks, {:.3f} s per step\n", c.world(), report["step_time_s"].get<double>());
  }
  if (!r.report_path.empty()) {
    if (auto st = write_text_file_atomic(r.report_path, report.dump(2) + "\n"); !st) {
      fmt::print(stderr, "loom: {}\n", st.error().message);
      mpi_abort(2);
    }
  }
}

// The plan on the ranks mpirun started, one per plan rank.
int run_ranks(const CpuRun& r, const Plan& plan) {
  auto comm = make_mpi_comm(nullptr, nullptr, {r.timeout_s});
  if (!comm) return refuse(comm.error());
  Comm& c = **comm;
  const int64_t want = plan.parallel.gpus();
  if (c.world() != want) {
    if (c.rank() == 0)
      fmt::print(stderr, "loom: {}: the plan needs {} ranks (dp {} x tp {} x pp {}), but {} were started (mpirun -np {})\n",
                 r.plan_path, want, plan.parallel.dp, plan.parallel.tp, plan.parallel.pp, c.world(), want);
    mpi_finalize();
    return 2;
  }
  Ending ending = Ending::abort;
  auto report = execute_cpu(plan, c, r.exec, &ending);
  if (!report) {
    // A refused input (a checkpoint that does not resume) is the same line on every rank:
    // rank 0 prints it. A non-finite loss or a failed save is seen by every rank at the same
    // point: they stop together. Anything else (a peer that died, a timeout) may leave ranks
    // blocked: end the whole job.
    if (ending != Ending::refused || c.rank() == 0) fmt::print(stderr, "loom: {}\n", report.error().message);
    if (ending == Ending::abort) mpi_abort(3);
    mpi_finalize();
    return ending == Ending::refused ? 2 : 3;
  }
  if (c.rank() == 0) finish_rank0(r, c, *report);
  mpi_finalize();
  return 0;
}

int execute(const LoomExecuteArgs& a) {
  const CpuRun r = from_args(a);
  auto plan = plan_from_text(a.plan_json, r.plan_path);
  if (!plan) return refuse(plan.error());
  if (auto st = check_cpu_plan(*plan); !st) return refuse(st.error());
  if (auto st = check_step_count(r.exec.steps, *plan); !st) return refuse(st.error());
  if (!plan->prediction.fits) return refuse(make_error(r.plan_path, "does not fit: " + plan->prediction.reason));
  if (r.emulate_rank >= 0) return run_emulated(r, *plan);
  return run_ranks(r, *plan);
}

int execute_entry(const LoomExecuteArgs* a) {
  return guarded_entry("execute --device cpu", [a] { return execute(*a); });
}

constexpr LoomCpuBackend kBackend{LOOM_BACKEND_ABI, execute_entry};

}  // namespace

}  // namespace loom::exec

extern "C" __attribute__((visibility("default"))) const LoomCpuBackend* loom_cpu_backend(void) {
  return &loom::exec::kBackend;
}
