// The trainer's state, shared by the files that hold its jobs (internal to executor/):
//   trainer.cpp             setup (rank grid, shapes, buffers, initial weights) and the step loop
//   trainer_zero.cpp        ZeRO: gathering a unit's parameters, releasing its gradients
//   trainer_pipeline.cpp    pipeline slots: a micro-batch's forward or backward through a chunk
//   trainer_optimizer.cpp   SP and DP gradient sync, the gradient norm, AdamW on owned ranges
//   trainer_checkpoint.cpp  --save, --resume, --weights-out
//   trainer_report.cpp      the measured report and the Chrome trace
// The math runs on a Compute backend (compute.hpp), the communication on a Comm (comm.hpp).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "executor/compute.hpp"
#include "executor/step_trace.hpp"
#include "executor/trainer.hpp"
#include "executor/units.hpp"
#include "sim/rank_grid.hpp"
#include "sim/schedule.hpp"
#include "sim/trace_names.hpp"

namespace loom::exec {

// What one (micro-batch, chunk) keeps between its forward and its backward.
struct ChunkStash {
  std::vector<Buffer> xs;                           // each layer's input (Ns, C)
  std::vector<std::unique_ptr<LayerState>> layers;  // null for a layer recomputed in full
  std::unique_ptr<HeadState> head;                  // last model chunk
};

// What each rank measured on the last step, gathered to the reporting rank as one row of doubles.
enum Field : int {
  kMemory = 0,           // 7 peaks by Mem category
  kFlops = 7,
  kCommBytes = 8,        // tp, dp, pp, world
  kMeanStep = 12,        // mean over the steps run
  kLastStep, kForward, kBackward, kRecompute, kOptimizer, kTp, kTpSync, kDp, kPp, kWorld,
  kParams,               // parameters this rank holds (its tp shard, before ZeRO sharding)
  kInFlight,             // (micro-batch, chunk) activation stashes held at once, at most
  kCommEp,               // MoE: bytes of the ep all-to-alls and the etp collectives (the cost model's comm.ep)
  kCommCp,               // context parallelism: bytes of the KV ring's hops or all-gathers (the cost model's comm.cp)
  kCp,                   // context parallelism: seconds in its communication calls (the cost model's cp_comm_s)
  kFields
};

// The steps' record on this rank: losses and times per step, the last step's row.
struct RunRecord {
  std::vector<double> losses, times_s;
  std::vector<double> row = std::vector<double>(kFields, 0.0);
};

class Trainer {
 public:
  Trainer(const Plan& plan, Comm& comm, Comm* host, const ExecOptions& opt, ComputeFactory make_compute)
      : plan_(plan), comm_(comm, rec_, plan.parallel.sp), host_(host), opt_(opt),
        make_compute_(std::move(make_compute)) {}
  Expected<nlohmann::json> run();
  Ending ending() const { return ending_; }

 private:
  using Tokens = std::vector<int32_t>;
  // trainer.cpp
  Status setup();
  void setup_dims();
  Status allocate();
  Status place_initial_weights(const cpu::Gpt& ref);
  Status train_step(int64_t step, const std::vector<Slot>& slots, RunRecord& rec);
  Status begin_step(int64_t step);
  Expected<double> finish_step(int64_t step);
  void record_row(std::vector<double>& row, double step_s, int64_t in_flight) const;
  // trainer_zero.cpp
  int64_t my_begin(const Unit& u) const { return shard_begin(u, dp_.index); }
  int64_t my_end(const Unit& u) const { return shard_end(u, dp_.index); }
  Expected<float*> acquire(const Unit& u, const std::string& name = trace_names::kDpGatherParams);
  Expected<float*> grads_for(const Unit& u);
  Status release_grads(const Unit& u);
  const float* tied_head() const;
  float* tied_head_grad();
  // trainer_pipeline.cpp
  void tokens_for(int64_t step, int64_t mb, Tokens& in, Tokens& tg) const;
  Status forward_slot(int64_t step, int mb, int chunk);
  Status backward_slot(int64_t step, int mb, int chunk);
  Status weight_slot(int mb, int chunk);
  Expected<ChunkStash*> open_stash(int mb, int chunk);
  Status receive(int mb, int chunk, Phase phase, float* dst);
  Status send_from(const float* src, int mb, int chunk, Phase phase);
  Status finish_blocking_send();
  // This rank's chunk `chunk` as a virtual stage of the model (zb-v: the V), and whether this
  // rank holds the output layer and loss (zb-v: the first stage).
  int64_t vstage(int chunk) const { return virtual_stage(plan_.parallel.schedule, coords_.pp, chunk, pp_size_); }
  // Layers of this rank's chunk `chunk` (uneven stages may leave the model's first or last chunk
  // short: chunk_layers_at).
  int64_t layers_in(int chunk) const {
    return chunk_layers_at(plan_.parallel, plan_.model.layers, coords_.pp, chunk);
  }
  // Whether layer i of a chunk is recomputed in full (all under recompute full, the chunk's
  // first recompute_layers, or every recompute_every-th: ParallelConfig::layer_recomputed).
  bool recomputes(int chunk, int64_t i) const { return plan_.parallel.layer_recomputed(i, layers_in(chunk)); }
  bool holds_head() const { return coords_.pp == head_stage(plan_.parallel.schedule, pp_size_); }
  Status forward_layers(ChunkStash& cs, const std::vector<int>& ids, size_t& ui, int mb, int chunk, bool last);
  Status forward_head(ChunkStash& cs, const Unit& u, const Tokens& targets, int mb, int chunk);
  Status backward_head(ChunkStash& cs, const Unit& u, const Tokens& targets, int mb, int chunk, float* d);
  Status backward_embed(const Unit& u, const Tokens& tokens, int mb, int chunk, const float* d);
  Status backward_layer(ChunkStash& cs, const Unit& u, int64_t i, int mb, int chunk, float* d);
  // trainer_moe.cpp
  Status setup_experts();
  ShardCoords shard_coords() const;
  bool owns_share(const TensorSlice& t) const;  // --weights-out: this rank writes t's shard
  Status moe_dp_sync();
  // trainer_cp.cpp
  Status setup_cp();
  void keep_cp_tokens(Tokens& t) const;  // a micro-batch's whole sequences -> this cp rank's chunks
  // trainer_optimizer.cpp
  Status sp_sync();
  Status dp_sync();
  // ZeRO-0's gradient buckets, (offset, elements) in the gradient buffer.
  std::vector<std::pair<int64_t, int64_t>> zero0_buckets(int64_t align) const;
  template <class F>
  Status for_each_owned(F&& f);
  Status add_grad_sum_squares(double& sum);
  Status optimizer_step(int64_t step, double clip_scale);
  // trainer_checkpoint.cpp
  Expected<std::vector<Section>> sections(std::vector<std::vector<float>>& staging, bool download);
  Status upload_sections(const std::vector<std::vector<float>>& staging);
  Status save(int64_t step);
  Expected<int64_t> load();
  Status write_weights();
  Expected<std::vector<float>> full_model_share();
  // trainer_report.cpp
  Status write_trace(double step_time_s);
  Expected<std::vector<double>> gather_rows(const RunRecord& rec);
  Expected<nlohmann::json> report(const RunRecord& rec);

  // Host-memory traffic (the loss and norm sums, the report, the trace, the full weights, the
  // checkpoint's agreement): the trainer's comm, unless its comm moves device buffers only
  // (NCCL), when `host` (MPI) carries it. host_traced() is recorded in the step's trace.
  Comm& host_raw() { return host_ ? *host_ : comm_.inner(); }
  Comm& host_traced() { return host_ ? *host_ : static_cast<Comm&>(comm_); }

  std::vector<int>& chunk_units(int chunk) { return layout_.chunk_units[static_cast<size_t>(chunk)]; }
  const Unit& unit(int id) const { return layout_.units[static_cast<size_t>(id)]; }

  const Plan& plan_;
  StepRecorder rec_;
  TracedComm comm_;
  Comm* host_ = nullptr;
  ExecOptions opt_;
  ComputeFactory make_compute_;
  int rank_ = 0;
  std::optional<RankGrid> grid_;
  Coords coords_;
  Group tp_, dp_, pp_, world_;
  Group ep_, etp_, edp_;        // MoE: expert-parallel, expert-tensor-parallel, expert-data-parallel
  Group cp_;                    // context parallelism's ring (dp_ is then the dp-cp group: trainer_cp.cpp)
  ExpertCoords expert_coords_;  // MoE: this rank's place in the expert grid
  int zero_ = 0;  // effective stage (dp = 1 shards nothing)
  int64_t m_ = 0, vpp_ = 1, pp_size_ = 1;
  Dims d_;
  Ledger ledger_;
  cpu::FlopCounter flops_;
  // Declared after what it refers to (comm, tp group, ledger, counter) and before the buffers
  // and stashes it allocates, so it is destroyed after them and before its referents.
  std::unique_ptr<Compute> compute_;
  UnitLayout layout_;
  int64_t full_model_ = 0;
  Buffer params_, grads_, adam_m_, adam_v_, gathered_[2], unit_grad_, send_buf_, recv_buf_, dres_, rec_out_;
  int slot_ = 0;
  int send_req_ = -1;
  int64_t grad_bucket_ = 0;  // dp gradient collectives issued this step (trace names)
  std::map<std::pair<int, int>, ChunkStash> stash_;
  double loss_local_ = 0;
  Ending ending_ = Ending::abort;  // how a failure ends the job (trainer.hpp)
};

}  // namespace loom::exec
