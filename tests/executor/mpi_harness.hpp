// What the executor's MPI tests (test_parallel.cpp, test_moe_mpi.cpp, test_cp_mpi.cpp) share:
// `loom` run under mpirun (or alone) with its output captured, a plan of a tiny model on the
// cpu-mpi cluster priced by the cost model, a plan trained for a few steps with its report and
// weights read back, and a run compared with a one-rank reference run.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sim/plan.hpp"

namespace loom::test {

struct Run {
  int code = -1;     // exit code; 128 + signal when killed
  std::string out;   // stdout and stderr together
  double seconds = 0;
};

struct Trained {
  nlohmann::json report;        // --report
  std::vector<float> weights;   // --weights-out: every rank's fp32 weights, in order
};

// One test file's runs: plans, reports, weights and logs in a folder of its own under the
// system's temporary folder, <prefix><pid>, made on construction.
class MpiHarness {
 public:
  explicit MpiHarness(const std::string& prefix);
  const std::filesystem::path& dir() const { return dir_; }

  // `command` in a shell, its stdout and stderr in a numbered log of dir() read back.
  Run shell(const std::string& command);
  // `loom execute <args>` as CI runs mpirun: as root, more ranks than cores, one thread per rank.
  Run mpirun(int ranks, const std::string& args);
  // One process, no mpirun: `loom <args>`.
  Run loom(const std::string& args);

  // The plan as dir()/<name>.json; its path.
  std::string write_plan(const std::string& name, const Plan& plan);
  // The plan trained on the CPU backend under mpirun, one rank per GPU of the plan, for `steps`
  // steps (`extra`: more flags); the run must succeed. Report and weights from dir()/<name>.*.
  Trained train(const std::string& name, const Plan& plan, int steps = 3, const std::string& extra = "");

 private:
  std::filesystem::path dir_;
  int logs_ = 0;
};

std::string slurp(const std::filesystem::path& p);
std::vector<float> read_floats(const std::filesystem::path& p);

// The training every MPI test runs: 8 sequences of 16 tokens, fp32 compute and gradients,
// data-parallel buckets of 16 KiB (several per stage), attention as given.
TrainSpec tiny_train(Attention attention);
// `model` trained as `train` says under `p` on the cpu-mpi cluster sized to p's ranks; with
// `priced`, the configuration must pass validate_config and the plan holds the cost model's
// prediction (without: a plan the executor is expected to refuse, unpriced).
Plan cpu_plan(const ModelSpec& model, const TrainSpec& train, const ParallelConfig& p, bool priced = true);

// Tolerances. Every plan computes the same sums in a different order (ring all-reduce order,
// tp partial sums, gradient accumulation over other micro-batch splits), so fp32 results differ
// in the last bits: measured up to 3e-8 on the losses (about 4.1, i.e. a few float ulps) and
// 4e-6 on the weights after 3 AdamW steps at lr 1e-3 (Adam divides by sqrt(v), which magnifies
// rounding of gradients near zero). The bounds are 1e-6 and 5e-5: well above that rounding and
// far below what a real bug does (a lost or doubled reduction, a wrong shard or a skipped
// micro-batch moves the loss by > 1e-4 and weights by about one step, lr = 1e-3).
inline constexpr double kLossTol = 1e-6;
inline constexpr double kWeightTol = 5e-5;

// `run` trained as `reference` did: each step's loss within kLossTol, the reference's loss
// falling (it trains), every weight within kWeightTol.
void check_like_reference(const Trained& run, const Trained& reference);

}  // namespace loom::test
