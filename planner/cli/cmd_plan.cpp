// loom plan: search every consistent parallel configuration, print the best --top K, write
// the winner as a plan.json (issue 4).
#include <cmath>
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/report.hpp"
#include "planner/search.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"

namespace loom::cli {

namespace {

struct PlanOptions {
  JobOptions job;
  std::optional<int64_t> tp, pp, dp, max_tp, micro_batch, vpp, zero;
  std::string recompute, sp, schedule, order;  // empty: searched
  std::optional<double> memory_headroom;
  int64_t top = 10;
  int64_t refine = 3;
  std::string out_path;
  bool exhaustive = false;
  std::optional<int64_t> threads;
  const CLI::App* cmd = nullptr;
};

template <class E>
std::optional<E> enum_pin(const std::string& v, const std::vector<std::string>& names) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == v) return static_cast<E>(i);
  return std::nullopt;
}

SearchPins pins_from(const PlanOptions& o) {
  SearchPins p;
  p.tp = o.tp;
  p.pp = o.pp;
  p.dp = o.dp;
  p.max_tp = o.max_tp;
  p.micro_batch = o.micro_batch;
  p.vpp = o.vpp;
  if (o.zero) p.zero = static_cast<int>(*o.zero);
  p.recompute = enum_pin<Recompute>(o.recompute, recompute_names());
  if (!o.sp.empty()) p.sp = o.sp == "on";
  p.schedule = enum_pin<Schedule>(o.schedule, schedule_names());
  if (o.cmd->count("--grad-dtype") > 0) p.grad_dtype = o.job.grad_dtype == "fp32" ? Dtype::fp32 : Dtype::bf16;
  if (!o.order.empty()) p.order = o.order;
  p.dp_bucket_bytes = o.job.dp_bucket_bytes;
  return p;
}

double gib(int64_t b) { return static_cast<double>(b) / 1073741824.0; }

std::string table(const std::vector<Estimate>& top) {
  std::string s = fmt::format("{:>3} {:>5} {:>3} {:>3} {:>4} {:>4} {:<11} {:>3} {:<9} {:<3} {:<4} {:<8} {:>8} {:>8} "
                              "{:>10} {:>7} {:>5}  {}\n",
                              "#", "dp", "tp", "pp", "zero", "mb", "schedule", "vpp", "recompute", "sp", "grad",
                              "order", "step s", "sim s", "tokens/s", "TFLOP/s", "MFU", "peak / capacity GiB");
  for (size_t i = 0; i < top.size(); ++i) {
    const Estimate& e = top[i];
    const auto& p = e.parallel;
    const std::string sim = e.simulated_step_time_s > 0 ? fmt::format("{:.3f}", e.simulated_step_time_s) : "-";
    s += fmt::format("{:>3} {:>5} {:>3} {:>3} {:>4} {:>4} {:<11} {:>3} {:<9} {:<3} {:<4} {:<8} {:>8.3f} {:>8} {:>10.0f} "
                     "{:>7.1f} {:>4.1f}%  {:.1f} / {:.1f}\n",
                     i + 1, p.dp, p.tp, p.pp, p.zero, p.micro_batch, to_string(p.schedule), p.vpp,
                     to_string(p.recompute), p.sp ? "on" : "off", to_string(e.train.grad_dtype), p.order,
                     e.step_time_s, sim, e.tokens_per_s, e.tflops_per_gpu, 100 * e.mfu, gib(e.memory.peak()),
                     gib(e.capacity_bytes));
  }
  return s;
}

// One line on why the winner beats the runner-up: the time term that differs most. When the
// event simulator re-ranked both (--refine), the step difference is the simulated one.
std::string why_line(const Estimate& a, const Estimate& b) {
  const bool simulated = a.simulated_step_time_s > 0 && b.simulated_step_time_s > 0;
  const double ta = simulated ? a.simulated_step_time_s : a.step_time_s;
  const double tb = simulated ? b.simulated_step_time_s : b.step_time_s;
  if (ta == tb)
    return fmt::format("#1 ties with #2 on step time; it ranks first by {}\n",
                       a.memory.peak() < b.memory.peak() ? "its lower peak memory" : "the fixed tie-break order");
  const std::pair<const char*, double> terms[] = {
      {"compute", b.time.compute_s - a.time.compute_s},
      {"tensor-parallel comm", b.time.tp_comm_s - a.time.tp_comm_s},
      {"data-parallel comm", b.time.dp_comm_s - a.time.dp_comm_s},
      {"pipeline p2p", b.time.pp_comm_s - a.time.pp_comm_s},
      {"pipeline bubble", b.time.bubble_s - a.time.bubble_s},
      {"optimizer step", b.time.optimizer_s - a.time.optimizer_s}};
  size_t most = 0;
  for (size_t i = 1; i < std::size(terms); ++i)
    if (std::abs(terms[i].second) > std::abs(terms[most].second)) most = i;
  const double d = tb - ta;
  return fmt::format("#1 beats #2 ({}) by {:.4f} s per step ({:.2f}%{}); the analytical term that differs most: {} "
                     "({:+.4f} s for #2)\n",
                     describe_config(b), d, 100 * d / tb, simulated ? ", simulated" : "", terms[most].first,
                     terms[most].second);
}

std::string summary(const SearchResult& r) {
  std::string s = fmt::format("searched {} configurations in {:.3f} s: {} evaluated by the cost model, {} fit, "
                              "{} rejected\n",
                              r.considered, r.search_time_s, r.evaluated, r.feasible, r.considered - r.feasible);
  for (const auto& [k, v] : r.rejected) s += fmt::format("  {:<50}{:>12}\n", k, v);
  return s;
}

nlohmann::json result_json(const SearchResult& r) {
  nlohmann::json top = nlohmann::json::array();
  for (const auto& e : r.top) top.push_back(estimate_to_json(e));
  nlohmann::json rejected = nlohmann::json::object();
  for (const auto& [k, v] : r.rejected) rejected[k] = v;
  return {{"best", r.top.empty() ? nlohmann::json(nullptr) : top[0]},
          {"top", top},
          {"considered", r.considered},
          {"rejected", rejected},
          {"feasible", r.feasible},
          {"evaluated", r.evaluated},
          {"search_time_s", r.search_time_s}};
}

// A bar on stderr, only on a terminal and once the search has run for a moment.
std::function<void(int64_t, int64_t)> progress_bar(bool quiet) {
  if (quiet || !::isatty(STDERR_FILENO)) return {};
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now(), last;
    bool shown = false;
  };
  auto st = std::make_shared<State>();
  return [st](int64_t done, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done >= total) {
      if (st->shown) fmt::print(stderr, "\r\033[K");
      st->shown = false;
      return;
    }
    if (now - st->start < std::chrono::milliseconds(300) || now - st->last < std::chrono::milliseconds(100)) return;
    st->last = now;
    st->shown = true;
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(1, total));
    fmt::print(stderr, "\rsearching [{}{}] {:3d}%", std::string(filled, '#'), std::string(width - filled, ' '),
               static_cast<int>(100 * done / std::max<int64_t>(1, total)));
  };
}

int run_plan(const PlanOptions& o) {
  auto job = load_job(o.job);
  if (!job) return fail(job.error());
  if (o.memory_headroom) {
    if (!(*o.memory_headroom >= 0 && *o.memory_headroom < 1))
      return fail(make_error("--memory-headroom", "must be a fraction in [0, 1)"));
    job->cluster.runtime_memory.memory_headroom = *o.memory_headroom;
  }
  if (o.top < 1) return fail(make_error("--top", "must be >= 1"));
  if (o.threads && *o.threads < 1) return fail(make_error("--threads", "must be >= 1"));
  auto space = make_search_space(job->model, job->cluster, job->train, pins_from(o));
  if (!space) return fail(space.error());
  SearchOptions so;
  so.top_k = static_cast<size_t>(o.top);
  so.threads = static_cast<int>(o.threads.value_or(std::max(1u, std::thread::hardware_concurrency())));
  so.prune = !o.exhaustive;
  so.progress = progress_bar(o.job.json);
  SearchResult r = search(job->model, job->cluster, *space, so);
  if (o.refine < 0) return fail(make_error("--refine", "must be >= 0"));
  if (o.refine > 0) {
    // The event simulator re-scores the best few (issue 5): same cost model, but the pipeline
    // schedule, overlap and NIC sharing played out task by task.
    SimOptions sim;
    sim.keep_tasks = false;
    auto refined = refine_top(std::move(r), job->model, job->cluster, static_cast<size_t>(o.refine),
                              [&](const Plan& plan) -> Expected<Estimate> {
                                CostModel cm(plan.model, plan.cluster, plan.train);
                                auto s = simulate(cm, plan.parallel, sim);
                                if (!s) return s.error();
                                Estimate e = cm.evaluate(plan.parallel);
                                e.simulated_step_time_s = s->step_time_s;
                                return e;
                              });
    if (!refined) return fail(refined.error());
    r = std::move(*refined);
  }

  if (!o.out_path.empty()) {
    if (r.top.empty()) {
      fmt::print(stderr, "loom: no configuration fits; {} not written\n", o.out_path);
    } else {
      auto st = write_text_file_atomic(o.out_path, plan_to_json(plan_of(job->model, job->cluster, r.top[0])).dump(2) + "\n");
      if (!st) return fail(st.error());
    }
  }
  if (o.job.json) {
    fmt::print("{}\n", result_json(r).dump(2));
    return 0;
  }
  const auto& c = job->cluster;
  fmt::print("{} ({} params) on {} x {} ({}), global batch {} x {} tokens, {}, {:.0f}% of GPU memory kept free\n\n",
             job->model.name, total_params(job->model), c.gpus, c.name, c.gpu.name, job->train.global_batch,
             job->train.seq, to_string(job->train.dtype), 100 * c.runtime_memory.memory_headroom);
  if (r.top.empty()) {
    fmt::print("no configuration fits\n\n{}", summary(r));
    return 0;
  }
  fmt::print("{}\nbest plan\n{}", table(r.top), full_report(r.top[0], c));
  if (r.top.size() > 1) fmt::print("{}", why_line(r.top[0], r.top[1]));
  fmt::print("\n{}", summary(r));
  return 0;
}

}  // namespace

void add_plan(CLI::App& app, Run& run) {
  auto o = std::make_shared<PlanOptions>();
  auto* cmd = app.add_subcommand("plan", "search every data/tensor/pipeline/ZeRO split and rank them by step time");
  o->cmd = cmd;
  add_job_options(*cmd, o->job);
  cmd->add_option("--top", o->top, "how many of the best configurations to list (default 10)");
  cmd->add_option("--refine", o->refine,
                  "re-score the best K with the event simulator and re-rank them by its step time (default 3; 0: off)");
  cmd->add_option("-o,--out", o->out_path, "write the best configuration as a plan.json (`loom predict --plan`)");
  cmd->add_option("--tp", o->tp, "pin the tensor-parallel size");
  cmd->add_option("--pp", o->pp, "pin the pipeline-parallel size");
  cmd->add_option("--dp", o->dp, "pin the data-parallel size");
  cmd->add_option("--max-tp", o->max_tp, "largest tensor-parallel size to try (e.g. GPUs per node)");
  cmd->add_option("--zero", o->zero, "pin the ZeRO stage 0-3 (3 = FSDP full shard)");
  cmd->add_option("--micro-batch", o->micro_batch, "pin the sequences per micro-batch");
  cmd->add_option("--recompute", o->recompute, "pin activation recompute")->check(CLI::IsMember(recompute_names()));
  cmd->add_option("--sp", o->sp, "pin sequence parallelism")->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--schedule", o->schedule, "pin the pipeline schedule")->check(CLI::IsMember(schedule_names()));
  cmd->add_option("--vpp", o->vpp, "pin the virtual stages per rank (> 1 implies the interleaved schedule)");
  cmd->add_option("--order", o->order, "pin the rank order, innermost first (default: every order that changes the links)");
  cmd->add_option("--memory-headroom", o->memory_headroom,
                  "fraction of GPU memory kept free (default: the cluster file's runtime_memory.memory_headroom, "
                  "0.05 for the zoo clusters: room for what the model does not count, such as lazily created NCCL "
                  "buffers, cuBLAS algorithm workspaces and allocator growth, so a plan that fits on paper does not "
                  "run out of memory at its first step)");
  cmd->add_option("--threads", o->threads, "search threads (default: the CPU cores)");
  cmd->add_flag("--exhaustive", o->exhaustive, "evaluate every candidate, no pruning (same answer, slower; for checking)");
  cmd->callback([o, &run] { run = [o] { return run_plan(*o); }; });
}

}  // namespace loom::cli
