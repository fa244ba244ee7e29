// What the cost model says about one configuration (the field names of `loom predict --json`,
// written and read by sim/step_result.hpp); the executor
// reports what it measured in the same vocabulary, so `loom compare` is a field-by-field diff.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sim/model_math.hpp"
#include "sim/specs.hpp"

namespace loom {

struct MemoryBytes {
  int64_t weights = 0;
  int64_t grads = 0;
  int64_t optimizer = 0;
  int64_t activations = 0;   // micro-batches in flight, after recompute and SP
  int64_t logits = 0;        // logits and cross-entropy buffers (last stage)
  int64_t comm_buffers = 0;  // SP gather, PP send/recv, ZeRO-3 gathered layers
  int64_t workspace = 0;     // cuBLAS/cuBLASLt workspace
  int64_t runtime = 0;       // CUDA context, NCCL communicators, allocator rounding
  int64_t other() const { return logits + comm_buffers + workspace + runtime; }
  int64_t peak() const { return weights + grads + optimizer + activations + other(); }
};

struct CommBytes {           // bytes each GPU sends per step
  int64_t tp = 0;
  int64_t dp = 0;
  int64_t pp = 0;
  int64_t host = 0;          // over the GPU's host link, both directions (offload)
  int64_t ep = 0;            // expert parallel: token dispatch and combine all-to-alls (MoE)
  int64_t cp = 0;            // context parallel: the K/V ring (and dK/dV in backward)
};

struct TimeBreakdown {       // exposed time only; they add up to the step time
  double compute_s = 0;
  double tp_comm_s = 0;
  double dp_comm_s = 0;
  double pp_comm_s = 0;
  double bubble_s = 0;
  double optimizer_s = 0;
  double host_comm_s = 0;    // host-link copies of offload not hidden behind compute
  double ep_comm_s = 0;      // MoE: all-to-alls over the ep group and expert-tp collectives, in-line
  double cp_comm_s = 0;      // context parallel: ring transfers not hidden behind attention blocks (all-gathers: all)
  double total_s() const {
    return compute_s + tp_comm_s + dp_comm_s + pp_comm_s + bubble_s + optimizer_s + host_comm_s + ep_comm_s +
           cp_comm_s;
  }
};

// One pipeline stage (one GPU of it).
struct StageEstimate {
  int64_t index = 0;
  int64_t layers = 0;              // transformer layers on this stage (all its chunks)
  int64_t params = 0;              // parameters this GPU holds before ZeRO sharding
  int64_t in_flight = 0;           // micro-batch chunks whose activations are held at peak
  MemoryBytes memory;
  FlopCount flops = 0;             // hardware FLOPs this GPU runs per step
  CommBytes comm;
  // Per micro-batch on this stage (all of its chunks):
  double forward_s = 0, backward_s = 0, recompute_s = 0, tp_comm_s = 0;
  double weight_grad_s = 0;        // the weight-gradient GEMMs within backward_s (zb-h1's W)
  double tp_forward_s = 0;         // the forward's part of tp_comm_s
  double tp_grad_sync_s = 0;       // per step: SP's all-reduce of replicated parameters' gradients
  double dp_comm_exposed_s = 0;    // per step
  double optimizer_s = 0;          // per step
  double host_s = 0;               // per micro-batch: exposed host-link copies (offload)
  double host_step_s = 0;          // per step: host-link copies around the CPU optimizer
  // MoE (sim/moe.hpp): per micro-batch, the expert all-to-alls and expert-tp collectives
  // (in-line, like tp's), and its forward part; per step the expert gradients' reduction over
  // the expert-data-parallel group.
  double ep_comm_s = 0, ep_forward_s = 0, edp_step_s = 0;
  // Context parallelism (sim/context_parallel.hpp): per micro-batch, the KV ring's time not
  // hidden behind attention blocks, and its forward part.
  double cp_comm_s = 0, cp_forward_s = 0;
  // Per micro-batch: pipeline sends that block this stage (ParallelConfig::pp_overlapped false:
  // each chunk's output or input gradient on the wire before its next chunk starts), and the
  // forward's part. Zero where the sends overlap compute (cost_model.cpp's pp_exposed_s).
  double pp_block_s = 0, pp_block_forward_s = 0;
  // Per step: what NCCL's kernels, taking SMs from the compute beside them, add to this
  // stage's compute (within forward_s, backward_s and recompute_s; cost_model.cpp: the hidden
  // data-parallel collectives' in slow_compute_beside_dp, the tensor-parallel backward's in
  // price_stage).
  double sm_contention_s = 0;
  double micro_batch_s() const {
    return forward_s + backward_s + recompute_s + tp_comm_s + host_s + ep_comm_s + cp_comm_s + pp_block_s;
  }
  bool reported = true;            // false: a measured step where no rank of this stage reported
                                   // (an emulated rank); written as null
};

// Which program produced a step result (sim/step_result.hpp reads and writes all three).
enum class StepSource { predicted, simulated, measured };

// One rank of a measured step (the CPU executor reports every rank).
struct RankMeasurement {
  int64_t rank = 0, dp = 0, tp = 0, pp = 0;
  MemoryBytes memory;              // peaks by category
  FlopCount flops = 0;             // the last step
  CommBytes comm;                  // bytes sent in the last step by group
  int64_t comm_world_bytes = 0;    // the loss and gradient-norm all-reduce
  double step_time_s = 0;          // mean over the steps run
  TimeBreakdown time;              // the last step; pp_comm holds the wait for the neighbour stage
  double other_s = 0;              // the last step's time no category holds
};

// What only an executor's measurement holds (source measured). Zero or empty: not measured.
struct Measurement {
  std::string device;              // "cpu" or the GPU's name
  int64_t emulated_rank = -1;      // >= 0: one rank of the plan run alone (--emulate-rank)
  int64_t steps = 0;
  std::vector<double> step_times_s, losses, grad_norms;  // per step
  double other_s = 0;              // time no category holds (the slowest rank)
  std::vector<RankMeasurement> ranks;
  std::vector<std::pair<std::string, double>> op_time_s;  // profiled step, by kernel category
  double profiled_step_s = 0;
  int64_t allocated_bytes = 0, device_used_bytes = 0, free_before_bytes = 0;
  // The cost model's headline numbers the CUDA executor printed beside its measurement.
  double predicted_step_time_s = 0, predicted_tokens_per_s = 0, predicted_mfu = 0;
  int64_t predicted_peak_bytes = 0;
};

// What only the event simulator's step holds (source simulated).
struct SimulationDetail {
  double analytical_step_time_s = 0;  // the cost model's step, for comparison
  int64_t tasks = 0, edges = 0;
  double contention_s = 0;            // dp time added by NIC sharing
  std::vector<TimeBreakdown> stage_time;  // per stage, adds up to the step
  std::vector<double> stage_end_s;        // when each stage's last task ends
  std::vector<int64_t> stage_peak_in_flight;  // (micro-batch, chunk) activations held at once
};

// The data-parallel alternatives the seeds describe, priced for the same gradients.
struct DpAlternatives {
  double ring_all_reduce_s = 0;
  double parameter_server_s = 0;  // 0 when no servers are configured
  double compressed_ring_s = 0;   // ring with the configured compression ratio
};

struct Estimate {
  std::string model, cluster;
  int64_t params = 0;
  int64_t gpus = 0;
  ParallelConfig parallel;
  TrainSpec train;
  int64_t micro_batches = 0;       // per DP replica per step
  // Throughput. tflops_per_gpu and mfu count the model FLOPs with causal attention (what the
  // kernels do, AttentionFlops::causal); the _paper fields count them as Narayanan et al. (2021)
  // do (full s x s attention), the convention of Megatron-LM's and most papers' figures.
  double step_time_s = 0, tokens_per_s = 0, tflops_per_gpu = 0, mfu = 0;
  double tflops_per_gpu_paper = 0, mfu_paper = 0;
  double simulated_step_time_s = 0;  // the event simulator's step (loom plan --refine); 0: not run
  FlopCount flops_model = 0;       // causal attention (what the kernels do)
  FlopCount flops_hardware = 0;    // full attention and the recomputed forward, as the op lists count
  FlopCount flops_model_paper = 0;                // full attention (Narayanan et al.)
  // What priced the compute: a measured profile (`loom calibrate`) or the cluster file's
  // documented efficiency defaults, and whether it was measured.
  std::string priced_by;
  MemoryBytes memory;              // the stage with the largest peak
  int64_t peak_stage = 0;
  int64_t capacity_bytes = 0;      // GPU memory
  int64_t usable_bytes = 0;        // less the planning headroom
  int64_t host_memory_bytes = 0;   // offload: host memory a node's GPUs use (0: none)
  int64_t host_capacity_bytes = 0; // the node's host memory
  CommBytes comm;                  // the largest per field over stages
  TimeBreakdown time;
  DpAlternatives dp_alternatives;
  std::vector<StageEstimate> stages;
  bool fits = false;
  std::string reason;
  StepSource source = StepSource::predicted;
  Measurement measurement;         // source measured
  SimulationDetail simulation;     // source simulated
};

// tflops_per_gpu, mfu and their _paper twins from the step time, the GPU count and the FLOP
// counts (MFU: model FLOPs per second over the GPU's peak, Chowdhery et al. 2022, "PaLM", app. B).
inline void set_flop_rates(Estimate& e, double peak_flops_per_gpu) {
  const double gpu_s = static_cast<double>(e.gpus) * e.step_time_s;
  if (gpu_s <= 0) return;
  e.tflops_per_gpu = static_cast<double>(e.flops_model) / gpu_s / 1e12;
  e.tflops_per_gpu_paper = static_cast<double>(e.flops_model_paper) / gpu_s / 1e12;
  e.mfu = peak_flops_per_gpu > 0 ? e.tflops_per_gpu * 1e12 / peak_flops_per_gpu : 0;
  e.mfu_paper = peak_flops_per_gpu > 0 ? e.tflops_per_gpu_paper * 1e12 / peak_flops_per_gpu : 0;
}

}  // namespace loom
