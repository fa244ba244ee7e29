// loom simulate: one training step of a saved plan, event by event; a table of the step and
// its breakdown per stage (--json: the step result of sim/step_result.hpp, source "simulated"),
// optionally a Chrome trace (Perfetto) of the ranks asked for.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/offload_cli.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/simulated_estimate.hpp"
#include "sim/simulator.hpp"
#include "sim/step_result.hpp"
#include "sim/trace.hpp"

namespace loom::cli {

namespace {

struct SimulateOptions {
  std::string plan_path;
  std::string trace_path;
  std::string ranks;
  bool json = false;
  bool no_overlap = false;
  bool no_contention = false;
  std::string stage_layers;
  std::string offload;
};

std::string table(const SimResult& r, double wall_s) {
  std::string s = fmt::format("simulated step {:.4f} s (analytical {:.4f} s, {:+.2f}%)\n", r.step_time_s,
                              r.analytical_step_s,
                              r.analytical_step_s > 0 ? 100 * (r.step_time_s / r.analytical_step_s - 1) : 0.0);
  s += "stage   compute   tp comm   dp comm   pp comm    bubble optimizer  in flight\n";
  auto row = [&](const std::string& name, const TimeBreakdown& t, const std::string& inflight) {
    s += fmt::format("{:<6}{:>10.4f}{:>10.4f}{:>10.4f}{:>10.4f}{:>10.4f}{:>10.4f}{:>11}\n", name, t.compute_s,
                     t.tp_comm_s, t.dp_comm_s, t.pp_comm_s, t.bubble_s, t.optimizer_s, inflight);
  };
  for (const StageSim& st : r.stages) row(std::to_string(st.stage), st.time, std::to_string(st.peak_in_flight));
  row("step", r.time, "");
  s += "(seconds; communication columns are exposed time; in flight: peak micro-batch chunks held)\n";
  if (r.time.host_comm_s > 0 || std::any_of(r.stages.begin(), r.stages.end(), [](const StageSim& x) {
        return x.time.host_comm_s > 0;
      })) {  // offload: the host link's exposed copies, beside the columns above
    s += "host-link copies (exposed, offload):";
    for (const StageSim& st : r.stages) s += fmt::format(" stage {} {:.4f} s", st.stage, st.time.host_comm_s);
    s += "\n";
  }
  s += fmt::format("{} tasks, {} edges, simulated in {:.1f} ms", r.task_count, r.edge_count, wall_s * 1e3);
  if (r.contention_s > 0)
    s += fmt::format("; link sharing stretched collectives by {:.4f} s, summed over tasks", r.contention_s);
  return s + "\n";
}

int run_simulate(const SimulateOptions& o) {
  auto plan = load_plan(o.plan_path);
  if (!plan) return fail(plan.error());
  if (auto st = apply_stage_layers(*plan, o.stage_layers); !st) return fail(st.error());
  if (auto st = apply_offload(*plan, o.offload); !st) return fail(st.error());
  const ParallelConfig& p = plan->parallel;
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (!grid) return fail(grid.error());
  std::vector<int64_t> ranks = default_trace_ranks(*grid);
  if (!o.ranks.empty()) {
    auto rs = parse_rank_list(o.ranks, grid->world(), "--ranks");
    if (!rs) return fail(rs.error());
    ranks = *rs;
  }
  CostModel cm(plan->model, plan->cluster, plan->train);
  // load_plan priced the plan again (a file's prediction is not trusted). A plan that does not
  // fit is simulated as asked, but never without saying so (and the JSON says fits: false).
  const Estimate& analytical = plan->prediction;
  if (!analytical.fits) fmt::print(stderr, "loom: warning: plan does not fit: {}\n", analytical.reason);
  SimOptions so;
  so.overlap = !o.no_overlap;
  so.contention = !o.no_contention;
  so.keep_tasks = !o.trace_path.empty();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = simulate(cm, p, so);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r) return fail(r.error());
  if (!o.trace_path.empty()) {
    // About 165 bytes of JSON per event (GPT-3 175B, 512 ranks: 260 MB for 1.58 million events):
    // say so before a large file is built in memory.
    const int64_t events = trace_event_count(*r, p, *grid, ranks);
    const double mib = static_cast<double>(events) * 165.0 / 1048576.0;
    std::function<void(int64_t, int64_t)> progress;
    if (mib >= 64) {
      fmt::print(stderr, "loom: writing {} events for {} ranks to {} (about {:.0f} MiB; --ranks draws fewer)\n", events,
                 ranks.size(), o.trace_path, mib);
      if (::isatty(STDERR_FILENO))  // rank by rank, on a terminal only
        progress = [](int64_t done, int64_t total) {
          if (done < total) fmt::print(stderr, "\rtrace: rank {} of {}", done, total);
          else fmt::print(stderr, "\r\033[K");
        };
    }
    auto st = write_text_file_atomic(o.trace_path, trace_json(*r, p, *grid, ranks, progress).dump() + "\n");
    if (!st) return fail(st.error());
  }
  if (o.json) fmt::print("{}\n", estimate_to_json(simulated_estimate(analytical, *r)).dump(2));
  else fmt::print("{}", table(*r, wall));
  return 0;
}

}  // namespace

void add_simulate(CLI::App& app, Run& run) {
  auto o = std::make_shared<SimulateOptions>();
  auto* cmd = app.add_subcommand("simulate", "event-level timeline of one training step of a plan");
  cmd->add_option("plan", o->plan_path, "plan.json (from loom predict -o or loom plan -o)")->required();
  cmd->add_option("--trace", o->trace_path, "write a Chrome trace (open in ui.perfetto.dev)");
  cmd->add_option("--ranks", o->ranks, "ranks to draw, e.g. 0-7,64 (default: tp 0 of every stage of dp 0)");
  cmd->add_flag("--json", o->json, "print JSON instead of a table");
  cmd->add_flag("--no-overlap", o->no_overlap, "communication blocks compute (no overlap)");
  cmd->add_flag("--no-contention", o->no_contention, "ignore NIC sharing between stages' dp traffic");
  cmd->add_option("--stage-layers", o->stage_layers, "override the plan's layers per pipeline stage, e.g. 7,8,8,7");
  cmd->add_option("--offload", o->offload,
                  "override the plan's offload: none, optimizer, optimizer+params or activations");
  cmd->callback([o, &run] { run = [o] { return run_simulate(*o); }; });
}

}  // namespace loom::cli
