// The options shared by `predict` and `plan` (model, cluster, batch, dtypes) and how they
// become specs. Every error names its flag.
#pragma once
#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "sim/expected.hpp"
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
  std::optional<int64_t> dp_bucket_bytes;
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

// Prints "loom: <message>" on stderr and returns 2.
int fail(const Error& e);

}  // namespace loom::cli
