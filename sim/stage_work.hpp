// One pipeline stage's work in one training step, described once: the buffers it holds
// (category, bytes, how long they live), the ops one micro-batch runs (kind, shape, FLOPs,
// bytes moved) and the messages it exchanges (group, collective, bytes, when).
//
// Every consumer reads this description and nothing else:
//   the cost model (cost_model.cpp) sums it into an Estimate;
//   the event simulator (simulator.cpp) schedules its ops and messages as tasks;
//   the planner's memory bound (planner/search.cpp) is the first stage's buffer total;
//   the CPU executor's ledger and the CUDA arena are checked against its buffer categories.
// The formulas (and their published sources) are beside each term in stage_work.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/collectives.hpp"
#include "sim/estimate.hpp"
#include "sim/mem_kind.hpp"
#include "sim/model_math.hpp"
#include "sim/specs.hpp"

namespace loom {

// How long a buffer lives.
enum class Lifetime : uint8_t {
  step,         // the whole step: model state
  in_flight,    // one copy per micro-batch chunk the schedule holds at its peak
  transient,    // reused op after op or layer after layer; one copy at the peak
};

enum class MemCategory : uint8_t { weights, grads, optimizer, activations, logits, comm_buffers, workspace, runtime };

// Where a buffer lives: GPU memory, or host memory of the GPU's node (offload).
enum class Placement : uint8_t { device, host };

struct Buffer {
  const char* name = "";
  MemCategory category = MemCategory::activations;
  Lifetime lifetime = Lifetime::transient;
  int64_t bytes = 0;   // all copies together
  Placement placement = Placement::device;
};

// When an op or a message happens within a micro-batch's passes.
enum class Pass : uint8_t { forward, backward, recompute, step };

enum class OpKind : uint8_t {
  gemm,           // (m, n, k): out (m, n) = in (m, k) W (k, n)
  gemm_bwd,       // the input and weight gradients of the gemm (m, n, k)
  batched_gemm,   // `batch` independent (m, n, k) products in one launch (unfused attention)
  attention_fwd,  // fused causal attention: m = batch x heads, n = seq, k = head dim
  attention_bwd,
  memory,         // memory-bound kernel moving `bytes`
};

// The tensor-parallel collective a layer GEMM sits beside when tp-comm overlap pairs them
// (sim/tp_overlap.cpp, as Transformer Engine's userbuffers do): before QKV (or the attention's
// first projections) and fc1 an all-gather, after the attention projection and fc2 a
// reduce-scatter. none: no collective beside it.
enum class TpOverlapSlot : uint8_t { none, qkv, proj, fc1, fc2 };

struct Op {
  const char* name = "";
  OpKind kind = OpKind::memory;
  Pass pass = Pass::forward;
  double m = 0, n = 0, k = 0, batch = 1;  // shape (see OpKind)
  double bytes = 0;                       // memory: bytes read and written
  FlopCount flops = 0;                    // matrix FLOPs of one call (Narayanan et al.'s count)
  int64_t count = 1;                      // calls per micro-batch on this stage (e.g. its layers)
  double scale = 1;                       // time multiplier of one call (see stage_work.cpp)
  bool fp8 = false;                       // gemm/gemm_bwd with FP8 inputs (sim/fp8.hpp)
  MemKind mem = MemKind::elementwise;     // memory: what the kernel does (sim/mem_kind.hpp)
  TpOverlapSlot tp_slot = TpOverlapSlot::none;  // the collective tp-comm overlap pairs it with
};

// The op and message constructors every part of a stage's description uses (dense layers,
// MoE layers, offload). gemm: the (M, N, K) product of `pass`, 2MNK FLOPs forward and 4MNK
// backward (the input- and the weight-gradient products); `count` calls per micro-batch.
Op gemm(const char* name, Pass pass, int64_t M, int64_t N, int64_t K, int64_t count);
// A memory-bound kernel of kind `kind` moving `bytes` per call; `scale` multiplies its time. In
// backward a scale is the call's own traffic against the forward's (kElementwiseBackwardScale:
// its kernels read two tensors where the forward read one), elsewhere the share of calls a
// micro-batch makes (once per step: 1 / micro-batches); OpTimer reads it so.
Op memory_op(const char* name, MemKind kind, Pass pass, double bytes, int64_t count, double scale = 1);

// Activation bytes one layer keeps for backward, for one micro-batch on one tp rank.
struct LayerActivationBytes {
  int64_t tensors = 0;     // the tensors of Korthikanti et al. Table 2 (for GPT, equal to it)
  int64_t statistics = 0;  // norm mean/rstd and attention log-sum-exp (fp32), which the
                           // paper leaves out
  int64_t total() const { return tensors + statistics; }
};
LayerActivationBytes layer_activation_bytes(const ModelSpec& m, int64_t micro_batch, int64_t seq,
                                            int64_t tp, bool sp, Recompute r, Attention a, Dtype d);

// Model state of `params` parameters on one GPU (ZeRO paper, Sec. 5): bf16 weights (2) and
// gradients (grad dtype) and Adam state of 12 bytes (fp32 master, momentum, variance; 8 in an
// fp32 plan, which needs no master copy). Stage 1 shards the optimizer state over dp, 2 also
// the gradients, 3 also the weights; a shard is ceil(params / dp).
struct ModelStateBytes {
  int64_t weights = 0, grads = 0, optimizer = 0;
  int64_t total() const { return weights + grads + optimizer; }
};
ModelStateBytes model_state_bytes(int64_t params, int64_t dp, int zero, Dtype dtype, Dtype grad_dtype);

// Micro-batch chunks whose activations stage `stage` holds at its peak (the schedule's
// warm-up depth): GPipe m; 1F1B and ZB-H1 min(p - i, m); interleaved
// min((p - i - 1) * 2 + (v - 1) * p + 1, m * v) (Megatron-core's warm-up count plus one).
int64_t in_flight_chunks(Schedule s, int64_t pp, int64_t vpp, int64_t stage, int64_t micro_batches);

enum class Group : uint8_t { tp, dp, pp, host,  // host: the GPU's own link to host memory
                             ep, etp, edp,       // MoE: expert-parallel, expert-tp, expert-data-parallel
                             cp };               // context parallelism's KV ring (sim/context_parallel.hpp)
enum class MessageKind : uint8_t { all_reduce, all_gather, reduce_scatter, send, to_host, to_device, all_to_all };
enum class Cadence : uint8_t { micro_batch, step };

// DeepSpeed 0.3's ZeRO-3 with full recompute: the backward's second gather of the parameter
// tensors its recompute released (zero3_backward_regather in stage_work.cpp).
inline constexpr const char* kZero3RegatherMessage = "dp regather";
// TrainSpec::pp_scatter_gather: the receiver's all-gather of a pipeline transfer's pieces.
inline constexpr const char* kPpGatherMessage = "tp pipeline gather";

struct Message {
  const char* name = "";
  Group group = Group::tp;
  MessageKind kind = MessageKind::all_reduce;
  Pass pass = Pass::forward;       // the pass whose ops it follows
  Cadence cadence = Cadence::micro_batch;
  int64_t bytes = 0;               // the full (unsharded) buffer of one call
  int64_t count = 1;               // calls per micro-batch (or per step)
  int64_t pieces = 1;              // each call runs as this many equal collectives (buckets,
                                   // ZeRO-3's layer-by-layer gathers): each pays its latency
  int64_t ranks = 0;               // ranks it spans; 0: its group's size
};
// A message of `count` calls (per micro-batch or per step) of `bytes`, each run as `pieces`
// equal collectives (at least one).
Message message(const char* name, Group g, MessageKind k, Pass pass, Cadence c, int64_t bytes, int64_t count,
                int64_t pieces = 1);

// Gradient buckets of model chunk `chunk` on pipeline stage `stage` whose reduction moves
// `chunk_grad_bytes` in buckets of `bucket_bytes`, as Megatron-core builds them for its
// schedules (1F1B, interleaved) under ZeRO 0/1 (DDP, the distributed optimizer): only the first
// stage's first chunk is cut into buckets of that size, and only with the reduction beside the
// backward; every other chunk is one bucket (megatron/core/distributed/
// distributed_data_parallel.py: bucket_size None "if we are on a pipeline stage that is not the
// first (since data-parallel communication on these stages is not on the critical path)" and
// without overlap_grad_reduce; megatron/training/training.py get_model: disable_bucketing for
// model chunks after the first). Any other schedule or ZeRO stage: every chunk by size.
// A bucket holds whole parameter tensors (Megatron-core's _ParamAndGradBuffer closes a bucket
// once it has reached bucket_size and never splits a parameter; PyTorch DDP's bucket_cap_mb and
// DeepSpeed's reduce_bucket_size likewise), so a chunk is never cut into more buckets than it
// has tensors (chunk_param_tensors), however small the bucket size: at most, since a large
// tensor can carry a bucket past its size.
int64_t chunk_grad_buckets(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk,
                           int64_t chunk_grad_bytes, int64_t bucket_bytes);
// The parameter tensors of chunk `chunk` of stage `stage`: its layers' (param_tensors_per_layer,
// a MoE layer counted as a dense one), the embeddings where it holds the model's first layer,
// the final norm and an untied output layer where it holds the last.
int64_t chunk_param_tensors(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk);
// The buckets of chunk `chunk` when a stage's reduction runs as `total` of them over its vpp
// chunks (the "dp gradients" message's pieces, built from chunk_grad_buckets): under
// Megatron-core's rule the first chunk holds all but one per other chunk; otherwise the chunks
// hold equal shares.
int64_t chunk_buckets_of(const ParallelConfig& p, int64_t total, int64_t chunk);

struct StageWork {
  int64_t stage = 0;
  int64_t layers = 0;              // transformer layers on this stage (all chunks)
  int64_t params = 0;              // parameters this GPU holds before ZeRO sharding
  int64_t optimizer_params = 0;    // parameters its optimizer updates (its ZeRO shard)
  int64_t in_flight = 0;           // micro-batch chunks whose activations are held at the peak
  std::vector<Buffer> buffers;
  std::vector<Op> ops;             // one micro-batch
  std::vector<Message> messages;
  double optimizer_bytes = 0;      // bytes AdamW moves per step
  bool optimizer_on_host = false;  // offload: the CPU runs AdamW over host memory
  int64_t expert_params = 0;       // of params, MoE expert weights (sharded over ep x etp; ZeRO over edp)

  MemoryBytes memory() const;      // device buffers
  int64_t host_bytes() const;      // host buffers (offload)
  FlopCount flops_per_micro_batch() const;   // hardware FLOPs (with recompute)
  const Message* find(Group g, const char* name) const;
};

// The work of stage `stage` (0 .. pp-1) of a configuration that passed validate_config.
// With `memory_only` only `buffers` (and the counts they need) are built: what the search's
// memory bound asks for, without the op and message lists.
StageWork build_stage_work(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p,
                           int64_t stage, bool memory_only = false);
// The same into `out`, reusing its lists' storage (the planner builds millions of them).
void build_stage_work(StageWork& out, const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                      const ParallelConfig& p, int64_t stage, bool memory_only = false);
// Whether stage `stage` holds the model's ends (embedding, output layer): interior stages of a
// configuration holding as many layers (stage_layer_count) have the same ops and messages and
// differ only in the buffers they hold.
inline bool is_interior_stage(int64_t stage, int64_t pp) { return stage > 0 && stage < pp - 1; }

// Bytes one rank sends for one call of a message over its group of n ranks (msg.ranks when set).
int64_t message_send_bytes(const Message& msg, int64_t n);
// Time of one call on the group's links: `pieces` collectives of bytes / pieces each.
double message_time_s(const Message& msg, const GroupLinks& links);
// Calls per step: count, times the micro-batches for a per-micro-batch message.
int64_t calls_per_step(const Message& msg, int64_t micro_batches);

}  // namespace loom
