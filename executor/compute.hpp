// The per-unit math of one rank behind one interface, so that the trainer's parallel logic
// (sharding, ZeRO gathers and reduce-scatters, pipeline slots, DP and SP sync, checkpoints) drives
// any backend unchanged: the fp32 CPU reference (make_cpu_compute, over stage.cpp) or a GPU one
// (bf16 compute with fp32 master weights). Every buffer belongs to the backend (host memory on
// the CPU, device memory on a GPU) and is booked in the rank's ledger under the cost model's
// category while it lives. The trainer never reads one: it passes the pointers to the backend
// and to Comm (whose device backends take device pointers), and moves bytes with copy, add,
// fill_zero, or to and from the host with upload and download.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "executor/comm.hpp"
#include "executor/cpu/adamw.hpp"
#include "executor/cpu/flop_counter.hpp"
#include "executor/ledger.hpp"
#include "executor/units.hpp"
#include "sim/expected.hpp"

namespace loom::exec {

struct Dims {  // per micro-batch, per rank
  int64_t B = 0, T = 0, N = 0, Ns = 0;  // sequences, tokens per sequence (this rank's), rows, residual rows
  // Context parallelism (cpu/ring_attention.hpp): each sequence split over cp ranks, T = seq / cp
  // tokens of it on this rank (chunks cp_rank and 2 cp - 1 - cp_rank), attention as a ring.
  int64_t cp = 1, cp_rank = 0;
  bool cp_all_gather = false;  // K and V gathered whole instead of passed round (CpComm::all_gather)
  int64_t C = 0, hd = 0, Hl = 0, Hkvl = 0, Ql = 0, KVl = 0, Fl = 0, V = 0, Vr = 0;
  bool gpt = true, sp = false;
  double eps = 1e-5, rope_theta = 10000;
  // MoE layers (stage_moe.hpp): experts, top-k, expert FFN width per etp rank, shared experts'
  // width per tp rank, expert parallelism, capacity factor (TrainSpec::moe_capacity_factor).
  int64_t E = 0, topk = 0, Fe = 0, Fs = 0, ep = 1, etp = 1;
  double capacity_factor = 1;
};

// What a layer keeps for backward: everything (full), or all but the attention core's T x T
// probabilities, rebuilt in backward (selective recompute).
enum class StashKind { full, no_attention_core };

// `n` floats of backend memory, booked in `ledger` under `cat` until destroyed; `free` returns them.
class Buffer {
 public:
  using Free = void (*)(float*);
  Buffer() = default;
  Buffer(Ledger& ledger, Mem cat, float* data, int64_t n, Free free);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  ~Buffer() { release(); }
  float* data() const { return data_; }
  int64_t size() const { return n_; }
  int64_t bytes() const { return n_ * static_cast<int64_t>(sizeof(float)); }
  bool empty() const { return n_ == 0; }

 private:
  void release();
  Ledger* ledger_ = nullptr;
  Mem cat_ = Mem::workspace;
  float* data_ = nullptr;
  int64_t n_ = 0;
  Free free_ = nullptr;
};

// What one layer, or the head, keeps for backward, in the backend's own layout.
struct LayerState {
  virtual ~LayerState() = default;
};
struct HeadState {
  virtual ~HeadState() = default;
};

class Compute {
 public:
  virtual ~Compute() = default;
  virtual const char* device() const = 0;  // "cpu", or the GPU's name
  // True when buffers are host memory the trainer may hand to files as they are (checkpoints).
  virtual bool host_memory() const = 0;

  // Memory: zeroed buffers, copies inside backend memory and to and from the host.
  virtual Expected<Buffer> alloc(Mem cat, int64_t n) = 0;
  virtual Status copy(float* dst, const float* src, int64_t n) = 0;
  virtual Status add(float* dst, const float* src, int64_t n) = 0;  // dst += src
  virtual Status fill_zero(float* dst, int64_t n) = 0;
  virtual Status upload(float* dst, const float* host, int64_t n) = 0;
  virtual Status download(float* host, const float* src, int64_t n) = 0;

  // Stashes, and where the head keeps its input (the last layer writes it there).
  virtual Expected<std::unique_ptr<LayerState>> layer_state(StashKind kind) = 0;
  virtual Expected<std::unique_ptr<HeadState>> head_state() = 0;
  virtual float* head_input(HeadState& st) = 0;

  // The units' math on one micro-batch (stage.hpp states each contract). P, G: the unit's
  // parameters and gradient accumulators (gradients are added); tokens and targets are host
  // arrays of N; x, out, d are (Ns, C) rows of backend memory.
  virtual Status embed_forward(const float* P, const UnitOffsets& o, const int32_t* tokens, float* x) = 0;
  virtual Status embed_backward(float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx) = 0;
  virtual Status layer_forward(const float* P, const UnitOffsets& o, const float* x, LayerState& st, float* out) = 0;
  virtual Status layer_backward(const float* P, float* G, const UnitOffsets& o, const float* x, LayerState& st,
                                float* d, bool recompute_core) = 0;
  // ZB-H1's split backward (stage.hpp: layer_backward_input, layer_backward_weight): the input
  // gradient, keeping what the weight gradients read in `st` and `x`, then those weight gradients.
  // A backend without it refuses the schedule.
  virtual Status layer_backward_input(const float*, float*, const UnitOffsets&, float*, LayerState&, float*, bool) {
    return make_error("parallel.schedule", std::string("the ") + device() + " backend does not split the backward");
  }
  virtual Status layer_backward_weight(float*, const UnitOffsets&, const float*, LayerState&) {
    return make_error("parallel.schedule", std::string("the ") + device() + " backend does not split the backward");
  }
  virtual Expected<double> head_forward(const float* P, const UnitOffsets& o, const float* head_P, const float* x,
                                        const int32_t* targets, HeadState& st) = 0;
  virtual Status head_backward(const float* P, float* G, const UnitOffsets& o, const float* head_P, float* head_G,
                               const int32_t* targets, HeadState& st, double scale, float* d) = 0;

  // Optimizer: sum += the squares of g[0, n) in order (the global gradient norm, accumulated
  // over ranges), g *= s, and one AdamW step on a range (`step` counts from 1).
  virtual Status add_sum_squares(const float* g, int64_t n, double& sum) = 0;
  virtual Status scale(float* g, int64_t n, double s) = 0;
  virtual Status adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step,
                       const cpu::AdamWConfig& config) = 0;
};

// What a backend is built from for one rank: the communicator its tensor-parallel collectives go
// through, the tp group, the shapes, the ledger its buffers are booked in, the FLOP counter its
// GEMMs add to, and whether this stage holds the head (logits buffers).
struct ComputeSetup {
  Comm& comm;
  const Group& tp;
  Dims d;
  Ledger& ledger;
  cpu::FlopCounter& flops;
  bool last_stage = false;
  const Group* ep = nullptr;   // MoE: the expert-parallel group (token dispatch)
  const Group* etp = nullptr;  // MoE: the expert-tensor-parallel group
  const Group* cp = nullptr;   // context parallelism: the ring K and V blocks travel (d.cp > 1)
};
using ComputeFactory = std::function<Expected<std::unique_ptr<Compute>>(const ComputeSetup&)>;

// The fp32 CPU reference (compute_cpu.cpp).
Expected<std::unique_ptr<Compute>> make_cpu_compute(const ComputeSetup& setup);

}  // namespace loom::exec
