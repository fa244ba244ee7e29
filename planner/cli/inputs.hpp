// The options shared by the commands (model, cluster, batch, dtypes; the parallel flags) and
// how they become specs, and the one reader of plan files. Every error names its flag.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "sim/expected.hpp"
#include "sim/plan.hpp"
#include "sim/specs.hpp"

namespace loom::cli {

struct JobOptions {
  std::string model;
  std::string cluster;
  std::optional<int64_t> gpus;
  std::optional<int64_t> global_batch;
  std::optional<int64_t> seq;
  std::string dtype = "bf16";
  std::string grad_dtype = "bf16";
  std::string attention = "fused";
  std::string cross_entropy = "unfused";
  std::string grad_accumulation = "fused";
  std::string tp_backward_overlap = "on";
  std::string pp_scatter_gather = "off";
  std::optional<std::string> fp8_recipe;  // with --dtype fp8 only
  std::optional<std::string> fp8_param_gather;  // with --dtype fp8 only: "on" or "off" 
  std::optional<int64_t> dp_bucket_bytes;
  std::optional<double> moe_capacity_factor;  // MoE: expert capacity over the mean load
  bool json = false;
};

// Registers the options on `cmd`; `require_job` makes model/cluster/gpus/global-batch required.
void add_job_options(CLI::App& cmd, JobOptions& o);

struct Job {
  ModelSpec model;
  ClusterSpec cluster;  // sized to --gpus
  TrainSpec train;
};
// Loads the model and cluster (zoo names or paths) and builds the train spec.
Expected<Job> load_job(const JobOptions& o);

// The parallel flags: one spelling and one value syntax in every command that takes them.
// `predict` reads them as the configuration to price (an unset one takes its default), `plan`
// as pins on the search (an unset one is searched). --sp takes on|off; a bare --sp means on.
struct ParallelFlags {
  std::optional<int64_t> tp, pp, dp, zero, micro_batch, vpp;
  std::optional<int64_t> recompute_layers;     // --recompute-layers N (a block recompute)
  std::optional<int64_t> recompute_every;      // --recompute-every K (every K-th layer of each chunk)
  std::optional<int64_t> ep, etp;              // MoE: expert-parallel and expert-tp sizes
  std::optional<int64_t> cp;                   // context-parallel size (sim/context_parallel.hpp)
  std::string recompute, sp, schedule, order;  // "" = not given
  std::string tp_comm_overlap;                 // --tp-comm-overlap on|off; "" = not given
  std::string overlap_param_gather;            // --overlap-param-gather on|off; "" = not given
  std::string overlap_grad_reduce;             // --overlap-grad-reduce on|off; "" = not given
  std::string pp_comm_overlap;                 // --pp-comm-overlap on|off; "" = not given
  std::string stage_layers;                    // --stage-layers "8,8,7"; "" = not given
  std::string cp_comm_type;                    // --cp-comm-type p2p|all_gather; "" = not given
  std::string offload;                         // --offload (planner/cli/offload_cli.hpp); "" = not given
  std::optional<double> memory_headroom;       // over the cluster's runtime_memory.memory_headroom
};
enum class FlagUse { configure, pin };
void add_parallel_options(CLI::App& cmd, ParallelFlags& o, FlagUse use);
// --stage-layers on a command that reads a plan (simulate, execute): the plan's layer split
// replaced, checked against the plan's rules and priced again. "" leaves the plan as it is.
Status apply_stage_layers(Plan& plan, const std::string& text);
// Applies --memory-headroom (when given) to the cluster whose memory the fit is judged against.
Status apply_memory_headroom(ClusterSpec& cluster, const std::optional<double>& headroom);

// Reads a plan.json (`loom plan -o`, `loom predict -o`) strictly and prices it again with the
// cost model: a file's own prediction is never trusted. Every command that reads a plan calls
// this; plan_from_document is the same for a document already parsed.
Expected<Plan> load_plan(const std::string& path);
Expected<Plan> plan_from_document(const nlohmann::json& doc, const std::string& path);

// Prints "loom: <message>" on stderr and returns 2.
int fail(const Error& e);

}  // namespace loom::cli
