// loom execute: run a plan. `mpirun -np N loom execute plan.json --device cpu --steps K` trains
// the plan's model on N CPU ranks with exactly its parallelism and reports what it measured in
// the prediction's field names (--report).
#include <fmt/core.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "executor/comm.hpp"
#ifdef LOOM_CUDA
#include "executor/cuda/cuda_executor.hpp"
#endif
#include "executor/trainer.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "sim/cost_model.hpp"
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
  exec::ExecOptions exec;
};

// One rank of a plan larger than this machine, in one process, without MPI: its shapes, layers,
// schedule and memory, communication replaced by local copies (executor/comm.hpp).
int run_emulated(const ExecuteOptions& o, const Plan& plan) {
  const int64_t world = plan.parallel.gpus();
  if (o.emulate_rank >= world)
    return fail(make_error("--emulate-rank", "must be below the plan's " + std::to_string(world) + " ranks (dp " +
                                                 std::to_string(plan.parallel.dp) + " x tp " + std::to_string(plan.parallel.tp) +
                                                 " x pp " + std::to_string(plan.parallel.pp) + ")"));
  if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE"); n != nullptr && std::atoi(n) > 1)
    return fail(make_error("--emulate-rank", "runs one process: start it without mpirun"));
  if (!o.exec.save_dir.empty() || !o.exec.resume_dir.empty() || !o.exec.weights_out.empty())
    return fail(make_error("--emulate-rank", "trains no real model: --save, --resume and --weights-out do not apply"));
  auto comm = exec::make_emulated_comm(static_cast<int>(o.emulate_rank), static_cast<int>(world));
  exec::ExecOptions eo = o.exec;
  eo.emulated = true;
  auto report = exec::execute_cpu(plan, *comm, eo);
  if (!report) return fail(report.error());
  if (!o.quiet)
    fmt::print("rank {} of {} (emulated): {:.3f} s per step, peak {} bytes\n", o.emulate_rank, world,
               (*report)["step_time_s"].get<double>(), (*report)["memory_bytes"]["peak"].get<int64_t>());
  if (!o.report_path.empty())
    if (auto st = write_text_file_atomic(o.report_path, report->dump(2) + "\n"); !st) return fail(st.error());
  return 0;
}

int run_execute(const ExecuteOptions& o) {
#ifdef LOOM_CUDA
  if (o.device == "cuda") {  // the CUDA backend (executor/cuda): dp = tp = pp = 1 plans for now
    cuda::CudaOptions c;
    c.steps = o.exec.steps;
    c.seed = o.exec.seed;
    c.progress = !o.quiet;
    if (o.emulate_rank >= 0)
      return fail(make_error("--emulate-rank", "runs on the CPU backend only so far (--device cpu)"));
    return cuda::execute_cuda_command(o.plan_path, c, o.report_path, o.exec.trace_path);
  }
#endif
  if (o.device != "cpu")
    return fail(make_error("--device", "this build has no CUDA backend: use --device cpu"));
  auto j = read_json_file(o.plan_path);
  if (!j) return fail(j.error());
  auto plan = plan_from_json(*j, o.plan_path);
  if (!plan) return fail(plan.error());
  if (auto st = exec::check_cpu_plan(*plan); !st) return fail(st.error());
  if (o.exec.steps < 1) return fail(make_error("--steps", "must be >= 1"));
  CostModel cm(plan->model, plan->cluster, plan->train);
  plan->prediction = cm.evaluate(plan->parallel);
  if (!plan->prediction.fits)
    return fail(make_error(o.plan_path, "does not fit: " + plan->prediction.reason));

  for (const std::string* path : {&o.report_path, &o.exec.trace_path}) {
    if (path->empty()) continue;
    const auto dir = std::filesystem::absolute(*path).parent_path();
    if (!std::filesystem::is_directory(dir))
      return fail(make_error(*path == o.report_path ? "--report" : "--trace", "folder " + dir.string() + " does not exist"));
  }
  if (o.emulate_rank >= 0) return run_emulated(o, *plan);

  auto comm = exec::make_mpi_comm(nullptr, nullptr, {o.timeout_s});
  if (!comm) return fail(comm.error());
  exec::Comm& c = **comm;
  const int64_t want = plan->parallel.gpus();
  if (c.world() != want) {
    if (c.rank() == 0)
      fmt::print(stderr, "loom: {}: the plan needs {} ranks (dp {} x tp {} x pp {}), but {} were started (mpirun -np {})\n",
                 o.plan_path, want, plan->parallel.dp, plan->parallel.tp, plan->parallel.pp, c.world(), want);
    exec::mpi_finalize();
    return 2;
  }
  auto report = exec::execute_cpu(*plan, c, o.exec);
  if (!report) {
    fmt::print(stderr, "loom: {}\n", report.error().message);
    // A non-finite loss is seen by every rank at the same step: they stop together. Anything
    // else (a peer that died, a timeout) may leave ranks blocked: end the whole job.
    if (report.error().message.find("not finite") == std::string::npos) exec::mpi_abort(3);
    exec::mpi_finalize();
    return 3;
  }
  if (c.rank() == 0) {
    if (!o.quiet) {
      const auto& losses = (*report)["losses"];
      for (size_t i = 0; i < losses.size(); ++i)
        fmt::print("step {:>4}  loss {:.6f}\n", o.exec.steps - static_cast<int64_t>(losses.size()) + static_cast<int64_t>(i) + 1,
                   losses[i].get<double>());
      fmt::print("{} ranks, {:.3f} s per step\n", c.world(), (*report)["step_time_s"].get<double>());
    }
    if (!o.report_path.empty()) {
      if (auto st = write_text_file_atomic(o.report_path, report->dump(2) + "\n"); !st) {
        fmt::print(stderr, "loom: {}\n", st.error().message);
        exec::mpi_abort(2);
      }
    }
  }
  exec::mpi_finalize();
  return 0;
}

}  // namespace

void add_execute(CLI::App& app, Run& run) {
  auto o = std::make_shared<ExecuteOptions>();
  auto* cmd = app.add_subcommand("execute", "train a plan (under mpirun -np N, one rank per device) and measure it");
  cmd->add_option("plan", o->plan_path, "plan.json (from loom plan or loom predict -o)")->required();
  cmd->add_option("--device", o->device, "cpu (the fp32 reference backend) or cuda (one GPU, builds with nvcc)");
  cmd->add_option("--steps", o->exec.steps, "train until this step");
  cmd->add_option("--report", o->report_path, "write what was measured (Estimate field names, ranks[] beside)");
  cmd->add_option("--save", o->exec.save_dir, "write a checkpoint to this folder after the last step");
  cmd->add_option("--resume", o->exec.resume_dir, "continue from the checkpoint in this folder");
  cmd->add_option("--lr", o->exec.lr, "AdamW learning rate");
  cmd->add_option("--seed", o->exec.seed, "weights and synthetic data seed");
  cmd->add_option("--timeout-s", o->timeout_s, "give up on a peer after this many seconds without progress");
  cmd->add_option("--weights-out", o->exec.weights_out, "write the trained model (cpu::Gpt layout, raw fp32)");
  cmd->add_option("--trace", o->exec.trace_path,
                  "write the last step of every rank as a Chrome trace (the names of loom simulate --trace)");
  cmd->add_option("--emulate-rank", o->emulate_rank,
                  "run only this rank of the plan, in one process: its shapes, layers and schedule, with communication as local copies");
  cmd->add_flag("--quiet", o->quiet, "print nothing on success");
  // Fault injection, for the reliability tests.
  cmd->add_option("--die-at-step", o->exec.die_at_step)->group("");
  cmd->add_option("--die-rank", o->exec.die_rank)->group("");
  cmd->add_flag("--stall", o->exec.stall)->group("");
  cmd->add_option("--nan-at-step", o->exec.nan_at_step)->group("");
  cmd->callback([o, &run] { run = [o] { return run_execute(*o); }; });
}

}  // namespace loom::cli
