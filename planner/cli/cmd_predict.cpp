// loom predict: evaluate one given configuration (no search), from flags or a plan file.
#include <fmt/core.h>

#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/flags.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/offload_cli.hpp"
#include "planner/cli/report.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/validate.hpp"

namespace loom::cli {

namespace {

struct PredictOptions {
  JobOptions job;
  ParallelFlags par;
  std::string plan_path;
  std::string out_path;
  std::string dp_comm = "ring";
  std::string zero3_gather = "layer";
  int64_t ps_servers = 0;
  double grad_compression = 1;
  std::string ignored_with_plan;  // a flag given beside --plan that the plan's own value overrides
};

int index_of(const std::vector<std::string>& names, const std::string& s) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == s) return static_cast<int>(i);
  return 0;
}

Expected<ParallelConfig> parallel_from_flags(const PredictOptions& o, const ClusterSpec& c) {
  const ParallelFlags& f = o.par;
  if (!f.tp) return make_error("--tp", "is required (or give --plan)");
  if (!f.pp) return make_error("--pp", "is required (or give --plan)");
  ParallelConfig p;
  p.tp = *f.tp;
  p.pp = *f.pp;
  if (p.tp < 1) return make_error("--tp", "must be >= 1");
  if (p.pp < 1) return make_error("--pp", "must be >= 1");
  const int64_t cp = f.cp.value_or(1);
  if (f.dp) {
    p.dp = *f.dp;
    if (p.dp < 1) return make_error("--dp", "must be >= 1");
  } else if (cp > 1) {  // tp x pp < 2^48 (each <= 2^24); cp divides the quotient, no product formed
    const int64_t tpp = p.tp * p.pp;
    if (c.gpus % tpp != 0 || (c.gpus / tpp) % cp != 0)
      return make_error("--cp", "tp x pp x cp must divide --gpus (" + std::to_string(c.gpus) + " GPUs, tp x pp " +
                                    std::to_string(tpp) + ", cp " + std::to_string(cp) + ")");
    p.dp = c.gpus / tpp / cp;
  } else {
    if (c.gpus % (p.tp * p.pp) != 0)
      return make_error("--tp", "tp x pp must divide --gpus (" + std::to_string(c.gpus) + " % " +
                                    std::to_string(p.tp * p.pp) + " != 0)");
    p.dp = c.gpus / (p.tp * p.pp);
  }
  const int64_t zero = f.zero.value_or(0);
  if (zero < 0 || zero > 3) return make_error("--zero", "must be 0, 1, 2 or 3");
  p.zero = static_cast<int>(zero);
  p.micro_batch = f.micro_batch.value_or(1);
  if (p.micro_batch < 1) return make_error("--micro-batch", "must be >= 1");
  p.recompute = static_cast<Recompute>(index_of(recompute_names(), f.recompute.empty() ? "none" : f.recompute));
  p.recompute_layers = f.recompute_layers.value_or(0);  // validate_config: needs recompute full
  p.recompute_every = f.recompute_every.value_or(0);    // likewise
  p.sp = f.sp == "on";
  p.tp_comm_overlap = f.tp_comm_overlap == "on";  // sim/tp_overlap.hpp
  p.overlap_param_gather = f.overlap_param_gather == "on";  // ZeRO 1/2 (sim/specs.hpp)
  p.overlap_grad_reduce = f.overlap_grad_reduce != "off";  // ZeRO 0-2; default on (sim/specs.hpp)
  if (!f.pp_comm_overlap.empty()) p.pp_comm_overlap = f.pp_comm_overlap == "on";  // unset: the schedule's default
  p.schedule = static_cast<Schedule>(index_of(schedule_names(), f.schedule.empty() ? "1f1b" : f.schedule));
  p.vpp = f.vpp.value_or(p.schedule == Schedule::zb_v ? 2 : 1);  // zb-v: two chunks per rank, a V
  if (p.vpp < 1) return make_error("--vpp", "must be >= 1");
  p.ep = f.ep.value_or(1);  // MoE; a dense model refuses ep or etp > 1 (validate_config)
  p.etp = f.etp.value_or(1);
  p.cp = f.cp.value_or(1);  // context parallelism (sim/context_parallel.hpp)
  p.cp_comm = static_cast<CpComm>(index_of(cp_comm_names(), f.cp_comm_type.empty() ? "p2p" : f.cp_comm_type));
  if (!f.order.empty()) p.order = f.order;
  if (!f.stage_layers.empty()) {
    auto v = parse_stage_layers(f.stage_layers, "--stage-layers");
    if (!v) return v.error();
    p.stage_layers = *v;
  }
  if (!f.offload.empty()) {
    auto off = parse_offload(f.offload);
    if (!off) return off.error();
    p.offload = *off;
  }
  p.dp_comm = static_cast<DpComm>(index_of(dp_comm_names(), o.dp_comm));
  p.zero3_gather = o.zero3_gather == "tensor" ? Zero3Gather::tensor : Zero3Gather::layer;
  if (o.ps_servers < 0) return make_error("--ps-servers", "must be >= 0");
  p.ps_servers = o.ps_servers;
  p.grad_compression = o.grad_compression;
  return p;
}

std::string flag_name(const std::string& field) {
  if (field == "cp_comm") return "--cp-comm-type";  // Megatron-LM's name for it
  std::string f = field;
  for (auto& ch : f)
    if (ch == '_') ch = '-';
  return "--" + f;
}

// The configuration to price: a saved plan, or the job and parallel flags.
Expected<Plan> plan_from_flags(const PredictOptions& o) {
  if (!o.plan_path.empty()) return load_plan(o.plan_path);
  auto job = load_job(o.job);
  if (!job) return job.error();
  auto par = parallel_from_flags(o, job->cluster);
  if (!par) return par.error();
  Plan plan;
  plan.model = job->model;
  plan.cluster = job->cluster;
  plan.train = job->train;
  plan.parallel = *par;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, flag_name);
  if (!st) return st.error();
  return plan;
}

int run_predict(const PredictOptions& o) {
  if (!o.ignored_with_plan.empty())
    return fail(make_error(o.ignored_with_plan, "is the plan's own with --plan (edit the plan, or drop --plan to price "
                                                "flags); only --memory-headroom, --json and -o go with it"));
  auto plan = plan_from_flags(o);
  if (!plan) return fail(plan.error());
  // --memory-headroom judges fit against the same GPU memory in both cases (a plan's own
  // cluster included): it is the one flag --plan does not ignore.
  if (auto st = apply_memory_headroom(plan->cluster, o.par.memory_headroom); !st) return fail(st.error());
  CostModel cm(plan->model, plan->cluster, plan->train);
  plan->prediction = cm.evaluate(plan->parallel);
  if (auto st = check_host_memory_fits(plan->prediction); !st) return fail(st.error());
  if (!o.out_path.empty()) {
    auto st = write_text_file_atomic(o.out_path, plan_to_json(*plan).dump(2) + "\n");
    if (!st) return fail(st.error());
  }
  if (o.job.json) fmt::print("{}\n", estimate_to_json(plan->prediction).dump(2));
  else fmt::print("{}", full_report(plan->prediction, plan->cluster));
  return 0;
}

}  // namespace

void add_predict(CLI::App& app, Run& run) {
  auto o = std::make_shared<PredictOptions>();
  auto* cmd = app.add_subcommand("predict", "evaluate one parallel configuration: memory, FLOPs, communication, time");
  add_job_options(*cmd, o->job);
  cmd->add_option("--plan", o->plan_path,
                  "re-evaluate a saved plan.json (with --memory-headroom, --json and -o only: the plan holds the rest)");
  cmd->add_option("-o,--out", o->out_path, "write the configuration and prediction as a plan.json");
  add_parallel_options(*cmd, o->par, FlagUse::configure);
  cmd->add_option("--dp-comm", o->dp_comm, "gradient sync: ring all-reduce or parameter server")
      ->check(CLI::IsMember(dp_comm_names()));
  cmd->add_option("--zero3-gather", o->zero3_gather,
                  "ZeRO-3 gathers: layer (FSDP, prefetched a layer ahead) or tensor (DeepSpeed 0.3: one blocking "
                  "all-gather and reduce-scatter per parameter tensor)")
      ->check(CLI::IsMember(std::vector<std::string>{"layer", "tensor"}));
  cmd->add_option("--ps-servers", o->ps_servers, "parameter servers (with --dp-comm ps)");
  cmd->add_option("--grad-compression", o->grad_compression, "gradient compression ratio (original / sent)")
      ->transform(Number(1, 1e6));
  cmd->callback([o, cmd, &run] {
    if (!o->plan_path.empty())  // the first flag beside --plan that the plan would override
      for (const CLI::Option* opt : cmd->get_options()) {
        bool allowed = false;
        for (const char* ok : {"--plan", "--out", "--json", "--memory-headroom", "--help"})
          allowed = allowed || opt->check_name(ok);
        if (opt->count() > 0 && !allowed) {
          o->ignored_with_plan = opt->get_name();
          break;
        }
      }
    run = [o] { return run_predict(*o); };
  });
}

}  // namespace loom::cli
