// loom predict: evaluate one given configuration (no search), from flags or a plan file.
#include <fmt/core.h>

#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/report.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/plan.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"

namespace loom::cli {

namespace {

struct PredictOptions {
  JobOptions job;
  std::string plan_path;
  std::string out_path;
  std::optional<int64_t> tp, pp, dp;
  int64_t zero = 0;
  int64_t micro_batch = 1;
  std::string recompute = "none";
  bool sp = false;
  std::string schedule = "1f1b";
  int64_t vpp = 1;
  std::string order = "tp-dp-pp";
  std::string dp_comm = "ring";
  int64_t ps_servers = 0;
  double grad_compression = 1;
};

int index_of(const std::vector<std::string>& names, const std::string& s) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == s) return static_cast<int>(i);
  return 0;
}

Expected<ParallelConfig> parallel_from_flags(const PredictOptions& o, const ClusterSpec& c) {
  if (!o.tp) return make_error("--tp", "is required (or give --plan)");
  if (!o.pp) return make_error("--pp", "is required (or give --plan)");
  ParallelConfig p;
  p.tp = *o.tp;
  p.pp = *o.pp;
  if (p.tp < 1) return make_error("--tp", "must be >= 1");
  if (p.pp < 1) return make_error("--pp", "must be >= 1");
  if (o.dp) {
    p.dp = *o.dp;
    if (p.dp < 1) return make_error("--dp", "must be >= 1");
  } else {
    if (c.gpus % (p.tp * p.pp) != 0)
      return make_error("--tp", "tp x pp must divide --gpus (" + std::to_string(c.gpus) + " % " +
                                    std::to_string(p.tp * p.pp) + " != 0)");
    p.dp = c.gpus / (p.tp * p.pp);
  }
  if (o.zero < 0 || o.zero > 3) return make_error("--zero", "must be 0, 1, 2 or 3");
  p.zero = static_cast<int>(o.zero);
  if (o.micro_batch < 1) return make_error("--micro-batch", "must be >= 1");
  p.micro_batch = o.micro_batch;
  p.recompute = static_cast<Recompute>(index_of(recompute_names(), o.recompute));
  p.sp = o.sp;
  p.schedule = static_cast<Schedule>(index_of(schedule_names(), o.schedule));
  if (o.vpp < 1) return make_error("--vpp", "must be >= 1");
  p.vpp = o.vpp;
  p.order = o.order;
  p.dp_comm = static_cast<DpComm>(index_of(dp_comm_names(), o.dp_comm));
  if (o.ps_servers < 0) return make_error("--ps-servers", "must be >= 0");
  p.ps_servers = o.ps_servers;
  p.grad_compression = o.grad_compression;
  return p;
}

std::string flag_name(const std::string& field) {
  std::string f = field;
  for (auto& ch : f)
    if (ch == '_') ch = '-';
  return "--" + f;
}

int run_predict(const PredictOptions& o) {
  Plan plan;
  if (!o.plan_path.empty()) {
    auto j = read_json_file(o.plan_path);
    if (!j) return fail(j.error());
    auto p = plan_from_json(*j, o.plan_path);
    if (!p) return fail(p.error());
    plan = *p;
  } else {
    auto job = load_job(o.job);
    if (!job) return fail(job.error());
    auto par = parallel_from_flags(o, job->cluster);
    if (!par) return fail(par.error());
    plan.model = job->model;
    plan.cluster = job->cluster;
    plan.train = job->train;
    plan.parallel = *par;
    auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, flag_name);
    if (!st) return fail(st.error());
  }
  CostModel cm(plan.model, plan.cluster, plan.train);
  plan.prediction = cm.evaluate(plan.parallel);
  if (!o.out_path.empty()) {
    auto st = write_text_file_atomic(o.out_path, plan_to_json(plan).dump(2) + "\n");
    if (!st) return fail(st.error());
  }
  if (o.job.json) fmt::print("{}\n", estimate_to_json(plan.prediction).dump(2));
  else fmt::print("{}", full_report(plan.prediction, plan.cluster));
  return 0;
}

}  // namespace

void add_predict(CLI::App& app, Run& run) {
  auto o = std::make_shared<PredictOptions>();
  auto* cmd = app.add_subcommand("predict", "evaluate one parallel configuration: memory, FLOPs, communication, time");
  add_job_options(*cmd, o->job);
  cmd->add_option("--plan", o->plan_path, "re-evaluate a saved plan.json (other options are ignored)");
  cmd->add_option("-o,--out", o->out_path, "write the configuration and prediction as a plan.json");
  cmd->add_option("--tp", o->tp, "tensor-parallel size");
  cmd->add_option("--pp", o->pp, "pipeline-parallel size");
  cmd->add_option("--dp", o->dp, "data-parallel size (default gpus / (tp x pp))");
  cmd->add_option("--zero", o->zero, "ZeRO stage 0-3 (3 = FSDP full shard)");
  cmd->add_option("--micro-batch", o->micro_batch, "sequences per micro-batch");
  cmd->add_option("--recompute", o->recompute, "activation recompute")->check(CLI::IsMember(recompute_names()));
  cmd->add_flag("--sp", o->sp, "sequence parallelism (needs tp > 1)");
  cmd->add_option("--schedule", o->schedule, "pipeline schedule")->check(CLI::IsMember(schedule_names()));
  cmd->add_option("--vpp", o->vpp, "virtual stages per rank (interleaved)");
  cmd->add_option("--order", o->order, "rank order, innermost first (Megatron-core style)");
  cmd->add_option("--dp-comm", o->dp_comm, "gradient sync: ring all-reduce or parameter server")
      ->check(CLI::IsMember(dp_comm_names()));
  cmd->add_option("--ps-servers", o->ps_servers, "parameter servers (with --dp-comm ps)");
  cmd->add_option("--grad-compression", o->grad_compression, "gradient compression ratio (original / sent)");
  cmd->callback([o, &run] { run = [o] { return run_predict(*o); }; });
}

}  // namespace loom::cli
