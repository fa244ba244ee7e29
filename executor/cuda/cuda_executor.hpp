// The single-GPU fast path (cuda::Gpt: one arena, bf16 working weights updated in place by AdamW,
// the fused classifier): train a dp = tp = pp = 1 Plan on this process's GPU and measure it, in the
// Estimate vocabulary `loom predict --json` uses. `loom execute --device cuda` no longer comes
// here: it runs every plan through the one parallel trainer (cuda_execute.hpp). This path stays
// for loom_cuda_train and the throughput comparison against torch.compile in gpu_test.sh until
// the parallel trainer's CUDA backend is measured at the same speed (it casts each unit's fp32
// weights to bf16 per call and keeps fp32 logits, which this path does not).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "executor/cuda/step_marks.cuh"
#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::cuda {

struct CudaOptions {
  int64_t steps = 20;         // optimizer steps
  int64_t warmup_steps = 3;   // first steps left out of the timing (cuBLASLt heuristics, clocks)
  int device = 0;
  uint64_t seed = 1337;       // init, as the CPU reference model
  uint64_t data_seed = 7;
  int64_t data_period = -1;   // synthetic stream period in tokens; -1: seq / 2 (learnable), 0: none
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, max_grad_norm = 1.0;
  int64_t reserve_bytes = int64_t{256} << 20;  // kept free for cuBLAS and the driver
  bool progress = true;       // one line per step on stderr
  // One more step after the timed ones with a CUDA event before every kernel: the report's
  // time_s, stages[0].micro_batch_time_s and op_time_s, and the trace (--trace).
  bool profile_step = true;
};

struct MeasuredReport {
  Estimate measured;                 // step_time_s (median after warm-up), tokens_per_s, mfu, memory...
  Estimate predicted;                // the cost model's numbers for the same plan
  std::vector<double> step_times_s;  // every step, warm-up included
  std::vector<double> losses;        // mean loss per step
  std::vector<double> grad_norms;    // before clipping
  std::string device_name;
  int64_t allocated_bytes = 0;       // everything the executor allocated (high-water)
  int64_t device_used_bytes = 0;     // cudaMemGetInfo total - free after the first step
  int64_t free_before_bytes = 0;     // cudaMemGetInfo free before allocating
  std::vector<MarkSpan> profile;     // the profiled step's phases and kernels
  double profiled_step_s = 0;
  std::map<std::string, double> op_time_s;  // per step, by kernel category
};

// Refuses, before allocating, a plan that needs more memory than the GPU has free (predicted
// against available bytes), and plans this backend does not run yet (one line, the rule).
Expected<MeasuredReport> run_cuda(const Plan& plan, const CudaOptions& options);

nlohmann::json measured_report_to_json(const MeasuredReport& report);
// The profiled step as a Chrome trace with the simulator's process, thread and event names
// ("F mb3 c0", "B mb3 c0", "R mb3 c0", "optimizer" on the compute thread) and the kernels by
// category on a thread of their own.
nlohmann::json measured_trace_json(const MeasuredReport& report);

// `loom execute plan.json --device cuda` and loom_cuda_train: reads the plan, runs it, prints one
// summary line, writes the report when report_path is not empty. Returns the exit code: 0 done,
// 2 bad input, a plan this backend does not run or does not fit (one line on stderr).
int execute_cuda_command(const std::string& plan_path, const CudaOptions& options,
                         const std::string& report_path, const std::string& trace_path = "");

}  // namespace loom::cuda
