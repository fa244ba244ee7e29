// loom plan: search every consistent parallel configuration, print the best --top K, write
// the winner as a plan.json (issue 4).
#include <cmath>
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/offload_cli.hpp"
#include "planner/cli/report.hpp"
#include "planner/cli/flags.hpp"
#include "planner/search.hpp"
#include "sim/context_parallel.hpp"
#include "sim/fp8.hpp"
#include "sim/json_reader.hpp"
#include "sim/offload.hpp"
#include "sim/plan.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"

namespace loom::cli {

namespace {

struct PlanOptions {
  JobOptions job;
  ParallelFlags par;  // pins; unset: searched
  std::optional<int64_t> max_tp;
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
  const ParallelFlags& f = o.par;
  SearchPins p;
  p.tp = f.tp;
  p.pp = f.pp;
  p.dp = f.dp;
  p.max_tp = o.max_tp;
  p.micro_batch = f.micro_batch;
  p.vpp = f.vpp;
  p.ep = f.ep;
  p.etp = f.etp;
  p.cp = f.cp;
  p.cp_comm = enum_pin<CpComm>(f.cp_comm_type, cp_comm_names());
  if (f.zero) p.zero = static_cast<int>(*f.zero);
  p.recompute = enum_pin<Recompute>(f.recompute, recompute_names());
  p.recompute_layers = f.recompute_layers;
  p.recompute_every = f.recompute_every;
  if (!f.sp.empty()) p.sp = f.sp == "on";
  if (!f.tp_comm_overlap.empty()) p.tp_comm_overlap = f.tp_comm_overlap == "on";
  if (!f.overlap_param_gather.empty()) p.overlap_param_gather = f.overlap_param_gather == "on";
  if (!f.overlap_grad_reduce.empty()) p.overlap_grad_reduce = f.overlap_grad_reduce == "on";
  if (!f.pp_comm_overlap.empty()) p.pp_comm_overlap = f.pp_comm_overlap == "on";
  p.schedule = enum_pin<Schedule>(f.schedule, schedule_names());
  if (o.cmd->count("--grad-dtype") > 0) p.grad_dtype = o.job.grad_dtype == "fp32" ? Dtype::fp32 : Dtype::bf16;
  if (!f.order.empty()) p.order = f.order;
  p.dp_bucket_bytes = o.job.dp_bucket_bytes;
  return p;
}

// --stage-layers, parsed: a pin on the search (it fixes pp to its length).
Status pin_stage_layers(const PlanOptions& o, SearchPins& pins) {
  if (o.par.stage_layers.empty()) return ok_status();
  auto v = parse_stage_layers(o.par.stage_layers, "--stage-layers");
  if (!v) return v.error();
  pins.stage_layers = *v;
  return ok_status();
}

double plan_gib(int64_t b) { return static_cast<double>(b) / 1073741824.0; }

// The step time a row was ranked by: the simulated one where --refine ran the event simulator
// on it (refine_until_settled re-ranks by it), the analytical one otherwise.
double ranked_step_s(const Estimate& e) {
  return e.simulated_step_time_s > 0 ? e.simulated_step_time_s : e.step_time_s;
}

std::string table_header() {
  return fmt::format("{:>3} {:>5} {:>3} {:>3} {:>4} {:>4} {:<11} {:>3} {:<9} {:<3} {:<4} {:<8} {:>8} {:>8} "
                     "{:>10} {:>7} {:>5}  {}\n",
                     "#", "dp", "tp", "pp", "zero", "mb", "schedule", "vpp", "recompute", "sp", "grad", "order",
                     "step s", "sim s", "tokens/s", "TFLOP/s", "MFU", "peak / capacity GiB");
}

// A stage split with runs of equal counts folded: 1,2x62,1 for 1,2,2,...,2,1.
std::string folded_split(const std::vector<int64_t>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j < layers.size() && layers[j] == layers[i]) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(layers[i]) + (j - i > 1 ? "x" + std::to_string(j - i) : "");
    i = j;
  }
  return out;
}

// What a row sets beyond the dense columns, after them and only where set (expert parallelism,
// an uneven pipeline split, offload), so rows that differ only there read apart.
std::string row_extras(const ParallelConfig& p) {
  std::string out;
  if (p.recompute_layers > 0) out += fmt::format("  block {}", p.recompute_layers);  // each chunk's first N
  if (p.recompute_every > 0) out += fmt::format("  every {}", p.recompute_every);    // each chunk's K-th layers
  if (p.ep > 1 || p.etp > 1) out += fmt::format("  ep {} etp {}", p.ep, p.etp);
  if (p.cp > 1) out += fmt::format("  cp {}", p.cp);
  if (p.cp > 1 && p.cp_comm == CpComm::all_gather) out += " ag";  // K and V all-gathered, not passed round a ring
  if (!p.stage_layers.empty()) out += "  stages " + folded_split(p.stage_layers);
  if (p.offload != Offload::none) out += "  offload " + to_string(p.offload);
  if (p.tp_comm_overlap) out += "  tpo";  // tp communication overlapped with the GEMMs
  if (p.overlap_param_gather) out += "  opg";  // ZeRO 1/2's weight gather under the next forward
  if (!p.overlap_grad_reduce && dp_cp(p) > 1) out += "  ogr off";  // the gradient reduction after the backward
  if (p.pp > 1 && p.pp_comm_overlap) out += *p.pp_comm_overlap ? "  ppo" : "  ppo off";  // pinned pipeline sends
  return out;
}

// Tokens/s, TFLOP/s and MFU are each inversely proportional to the step time (the same tokens
// and model FLOPs per step), so the row shows them at the time it was ranked by.
std::string table_row(size_t rank, const Estimate& e) {
  const auto& p = e.parallel;
  const double scale = e.step_time_s > 0 ? e.step_time_s / ranked_step_s(e) : 1.0;
  const std::string sim = e.simulated_step_time_s > 0 ? fmt::format("{:.3f}", e.simulated_step_time_s) : "-";
  return fmt::format("{:>3} {:>5} {:>3} {:>3} {:>4} {:>4} {:<11} {:>3} {:<9} {:<3} {:<4} {:<8} {:>8.3f} {:>8} {:>10.0f} "
                     "{:>7.1f} {:>4.1f}%  {:.1f} / {:.1f}{}\n",
                     rank, p.dp, p.tp, p.pp, p.zero, p.micro_batch, to_string(p.schedule), p.vpp,
                     to_string(p.recompute), p.sp ? "on" : "off", to_string(e.train.grad_dtype), p.order,
                     e.step_time_s, sim, scale * e.tokens_per_s, scale * e.tflops_per_gpu, 100 * scale * e.mfu,
                     plan_gib(e.memory.peak()), plan_gib(e.capacity_bytes), row_extras(p));
}

std::string table(const std::vector<Estimate>& top) {
  std::string s = table_header();
  for (size_t i = 0; i < top.size(); ++i) s += table_row(i + 1, top[i]);
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.recompute_layers > 0; }))
    s += "(block N: recompute full of each chunk's first N layers only, the fewest that fit, --recompute-layers N)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.recompute_every > 0; }))
    s += "(every K: recompute full of each chunk's layers K, 2K, ... only, --recompute-every K)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.recompute == Recompute::op; }))
    s += "(recompute op: torchtitan's per-op selective checkpointing, --recompute op)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.tp_comm_overlap; }))
    s += "(tpo: tensor-parallel communication overlapped with the GEMMs, --tp-comm-overlap on)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.overlap_param_gather; }))
    s += "(opg: ZeRO 1/2's weight all-gather under the next step's first forward, --overlap-param-gather on)\n";
  if (std::any_of(top.begin(), top.end(),
                  [](const Estimate& e) { return e.parallel.cp > 1 && e.parallel.cp_comm == CpComm::all_gather; }))
    s += "(cp N ag: context parallelism with K and V all-gathered, not passed round a ring, --cp-comm-type all_gather)\n";
  if (std::any_of(top.begin(), top.end(),
                  [](const Estimate& e) { return !e.parallel.overlap_grad_reduce && dp_cp(e.parallel) > 1; }))
    s += "(ogr off: the gradient reduction after the backward, in full, --overlap-grad-reduce off)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.parallel.pp > 1 && e.parallel.pp_comm_overlap; }))
    s += "(ppo: pipeline sends overlapped with compute, --pp-comm-overlap on; ppo off: each send blocks its sender; "
         "unpinned, 1F1B's block and the other schedules' overlap, as Megatron-core and torch.distributed.pipelining "
         "run them)\n";
  if (std::any_of(top.begin(), top.end(), [](const Estimate& e) { return e.simulated_step_time_s > 0; }))
    s += "(rows with a sim s are ranked by it, and their tokens/s, TFLOP/s and MFU are at that time)\n";
  s += "(TFLOP/s and MFU count causal attention, what the kernels do; the best plan's throughput line gives both counts)\n";
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
  if (r.refined > 0)
    s += fmt::format("the event simulator re-scored the {} best by the cost model; {}\n", r.refined,
                     r.shortlist_settled ? "no candidate beyond them could win by its step time"
                                         : "the shortlist ran out before the winner was settled");
  return s;
}

nlohmann::json result_json(const SearchResult& r) {
  nlohmann::json top = nlohmann::json::array();
  for (const auto& e : r.top) top.push_back(estimate_to_json(e));
  // Each reason: a stable identifier to match on, the sentence beside it, the candidates it rejected.
  nlohmann::json rejected = nlohmann::json::array();
  for (const auto& [k, v] : r.rejected) rejected.push_back({{"id", reason_id(k)}, {"reason", k}, {"candidates", v}});
  return {{"schema_version", kJsonSchemaVersion},
          {"best", r.top.empty() ? nlohmann::json(nullptr) : top[0]},
          {"top", top},
          {"considered", r.considered},
          {"rejected", rejected},
          {"feasible", r.feasible},
          {"evaluated", r.evaluated},
          {"refined", r.refined},
          {"shortlist_settled", r.shortlist_settled},
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

// The event simulator re-scores a shortlist: the same cost model, with the pipeline schedule,
// overlap and NIC sharing played out task by task. At least k candidates, and as many more as
// could still win (refine_until_settled); the shortlist is ranked by the simulated step.
Expected<SearchResult> refine(SearchResult r, const Job& job, int64_t k, size_t keep) {
  if (k == 0) {
    if (r.top.size() > keep) r.top.resize(keep);
    return r;
  }
  SimOptions sim;
  sim.keep_tasks = false;
  return refine_until_settled(std::move(r), job.model, job.cluster, static_cast<size_t>(k), keep,
                    [&](const Plan& plan) -> Expected<Estimate> {
                      CostModel cm(plan.model, plan.cluster, plan.train);
                      auto s = simulate(cm, plan.parallel, sim);
                      if (!s) return s.error();
                      Estimate e = cm.evaluate(plan.parallel);
                      e.simulated_step_time_s = s->step_time_s;
                      return e;
                    });
}

// The job with --memory-headroom applied, after the flags that need no model are checked.
Expected<Job> plan_job(const PlanOptions& o) {
  if (o.top < 1) return make_error("--top", "must be >= 1");
  if (o.refine < 0) return make_error("--refine", "must be >= 0");
  if (o.threads && *o.threads < 1) return make_error("--threads", "must be >= 1");
  // Checked before pins_from narrows it to int (4294967296 must not become stage 0).
  if (o.par.zero && (*o.par.zero < 0 || *o.par.zero > 3))
    return make_error("--zero", "must be 0, 1, 2 or 3 (got " + std::to_string(*o.par.zero) + ")");
  auto job = load_job(o.job);
  if (!job) return job.error();
  if (auto st = apply_memory_headroom(job->cluster, o.par.memory_headroom); !st) return st.error();
  return job;
}

constexpr size_t kShortlist = 256;

Expected<SearchResult> run_search(const PlanOptions& o, const Job& job) {
  SearchPins pins = pins_from(o);
  if (auto st = pin_stage_layers(o, pins); !st) return st.error();
  if (!o.par.offload.empty()) {
    auto off = parse_offload_choices(o.par.offload);
    if (!off) return off.error();
    pins.offload = *off;
  }
  auto space = make_search_space(job.model, job.cluster, job.train, pins);
  if (!space) return space.error();
  SearchOptions so;
  // The shortlist the simulator may grow into: the ranked candidates kept beyond --top.
  so.top_k = std::max<size_t>(static_cast<size_t>(o.top), kShortlist);
  so.threads = static_cast<int>(o.threads.value_or(std::max(1u, std::thread::hardware_concurrency())));
  so.prune = !o.exhaustive;
  so.progress = progress_bar(o.job.json);
  return refine(search(job.model, job.cluster, *space, so), job, o.refine, static_cast<size_t>(o.top));
}

void print_result(const Job& job, const SearchResult& r) {
  const auto& c = job.cluster;
  fmt::print("{} ({} params) on {} x {} ({}), global batch {} x {} tokens, {}, {:.0f}% of GPU memory kept free\n\n",
             job.model.name, total_params(job.model), c.gpus, c.name, c.gpu.name, job.train.global_batch,
             job.train.seq, train_dtype_name(job.train), 100 * c.runtime_memory.memory_headroom);
  if (r.top.empty()) {
    fmt::print("no configuration fits\n\n{}", summary(r));
    return;
  }
  fmt::print("{}\nbest plan\n{}", table(r.top), full_report(r.top[0], c));
  const Estimate& best = r.top[0];
  if (best.simulated_step_time_s > 0) {  // the breakdown is the cost model's; the rank is the simulator's
    const double scale = best.step_time_s / best.simulated_step_time_s;
    fmt::print("simulated step {:.4f} s (ranked by it): {:.0f} tokens/s  {:.1f} TFLOP/s per GPU  MFU {:.1f}% "
               "(causal; {:.1f}% as Narayanan et al.)\n",
               best.simulated_step_time_s, scale * best.tokens_per_s, scale * best.tflops_per_gpu, 100 * scale * best.mfu,
               100 * scale * best.mfu_paper);
  }
  if (r.top.size() > 1) fmt::print("{}", why_line(r.top[0], r.top[1]));
  fmt::print("\n{}", summary(r));
}

// Where no configuration fits because none is valid (the pins, or the job, break a rule every
// candidate shares, such as a pinned tp that does not divide the heads), not for want of memory:
// one line with the rules and how many candidates each rejected, for exit code 2.
Status pins_break_rules(const SearchResult& r) {
  if (!r.top.empty() || r.rejected.empty() || r.rejected.count(kDoesNotFitMemory)) return ok_status();
  std::vector<std::pair<int64_t, std::string>> why;
  for (const auto& [key, n] : r.rejected) why.emplace_back(n, key);
  std::sort(why.begin(), why.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string rules;
  for (const auto& [n, key] : why) rules += (rules.empty() ? "" : "; ") + key + " (" + std::to_string(n) + ")";
  return make_error("plan", "no configuration is valid under these pins and this job: every candidate breaks a rule: " +
                                rules);
}

int run_plan(const PlanOptions& o) {
  auto job = plan_job(o);
  if (!job) return fail(job.error());
  auto r = run_search(o, *job);
  if (!r) return fail(r.error());
  if (auto st = pins_break_rules(*r); !st) return fail(st.error());
  if (!o.out_path.empty() && !r->top.empty()) {
    const Plan best = plan_of(job->model, job->cluster, r->top[0]);
    if (auto st = write_text_file_atomic(o.out_path, plan_to_json(best).dump(2) + "\n"); !st) return fail(st.error());
  }
  if (o.job.json) fmt::print("{}\n", result_json(*r).dump(2));
  else print_result(*job, *r);
  // Asked for a plan file and there is none to write: the report above says why, and the exit
  // code says that no file was written.
  if (!o.out_path.empty() && r->top.empty())
    return fail(make_error("--out", "no configuration fits, so " + o.out_path + " was not written"));
  return 0;
}

}  // namespace

void add_plan(CLI::App& app, Run& run) {
  auto o = std::make_shared<PlanOptions>();
  auto* cmd = app.add_subcommand("plan", "search every data/tensor/pipeline/ZeRO split and rank them by step time");
  o->cmd = cmd;
  add_job_options(*cmd, o->job);
  cmd->add_option("--top", o->top, "how many of the best configurations to list (default 10)")
      ->transform(Integer(1, 100000));
  cmd->add_option("--refine", o->refine,
                  "re-score at least the best K with the event simulator, and as many more as could still beat the best "
                  "simulated step; rank them by it (default 3; 0: off)");
  cmd->add_option("-o,--out", o->out_path, "write the best configuration as a plan.json (`loom predict --plan`); when none fits, nothing is "
                  "written and loom exits 2");
  add_parallel_options(*cmd, o->par, FlagUse::pin);
  cmd->add_option("--max-tp", o->max_tp, "largest tensor-parallel size to try (e.g. GPUs per node)")
      ->transform(Integer(1, limits::kGpus));
  cmd->add_option("--threads", o->threads, "search threads (default: the CPU cores)")->transform(Integer(1, 4096));
  cmd->add_flag("--exhaustive", o->exhaustive, "evaluate every candidate, no pruning (same answer, slower; for checking)");
  cmd->callback([o, &run] { run = [o] { return run_plan(*o); }; });
}

}  // namespace loom::cli
