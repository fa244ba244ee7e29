// The four inputs of every loom computation (with the Plan, sim/plan.hpp): what is trained
// (ModelSpec), on what (ClusterSpec), how much (TrainSpec) and how it is split
// (ParallelConfig). Plain data; loading, saving and validation live in spec_json.hpp and
// validate.hpp.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sim/attention_curve.hpp"

namespace loom {

struct HardwareProfile;  // sim/profile.hpp: what `loom calibrate` measured
struct GemmModel;        // sim/gemm_model.hpp: the tile and wave GEMM time model

enum class Family { gpt, llama };  // gpt: learned positions, LayerNorm, GELU, biases;
                                   // llama: RoPE, RMSNorm, SwiGLU, no biases.

struct ModelSpec {
  std::string name;
  Family family = Family::gpt;
  int64_t layers = 0;
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;      // == heads for multi-head attention; fewer for GQA
  int64_t ffn_hidden = 0;    // MLP inner size (SwiGLU: size of gate and of up)
  int64_t vocab = 0;
  int64_t seq_len = 0;       // context length; also the learned position table size (gpt)
  bool tied_embeddings = true;
  bool dropout = false;      // dropout after attention softmax, attention and MLP (GPT-2/3)
  double norm_eps = 1e-5;
  double rope_theta = 10000;  // RoPE base (llama family); Llama 3 uses 500000
  bool qkv_bias = false;      // biases on q, k and v (llama family; Qwen2 has them, Llama does not)
  // Context limits read from a Hugging Face config rather than a training setup: seq_len is then
  // only max_position_embeddings, so a plan must be given its sequence length (--seq), and
  // sliding-window attention (window > 0) is exact only for sequences no longer than the window.
  bool seq_len_is_limit = false;
  int64_t sliding_window = 0;
  // Attention head size where it is not hidden / heads (Gemma 2: 256 with hidden 2304 and 8
  // heads); 0 means hidden / heads. q and the attention output are then heads * head_dim wide.
  int64_t head_size = 0;
  bool qk_norm = false;       // RMSNorm over each head of q and k before RoPE (Qwen3)
  bool post_norms = false;    // Gemma 2: an RMSNorm after attention and after the MLP too (4 a layer)
  bool gated_gelu = false;    // Gemma: GeGLU (tanh GELU gate) in place of SwiGLU; same shapes and FLOPs
  // Mixture of experts (experts == 0: every layer has the dense MLP of ffn_hidden). A MoE layer
  // routes each token to experts_per_token of `experts` FFNs of expert_ffn_hidden (SwiGLU for the
  // llama family), plus shared_experts FFNs every token passes through, each also of
  // expert_ffn_hidden; a router (hidden x experts) picks them. The first dense_layers layers, and
  // every layer whose index (from 0) is not a multiple of moe_layer_interval after them, keep the
  // dense MLP (DeepSeek's first_k_dense_replace; Qwen2-MoE's decoder_sparse_step).
  int64_t experts = 0;
  int64_t experts_per_token = 0;   // top-k
  int64_t shared_experts = 0;
  bool shared_expert_gate = false;  // Qwen2-MoE: a hidden x 1 sigmoid gate scales the shared experts' output
  int64_t expert_ffn_hidden = 0;
  int64_t dense_layers = 0;
  int64_t moe_layer_interval = 1;
  // Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1; kv_lora_rank == 0:
  // none). Queries come through a q_lora_rank down-projection (0: a direct hidden x heads *
  // (qk_nope_head_dim + qk_rope_head_dim) projection), keys and values through one
  // kv_lora_rank latent plus a qk_rope_head_dim RoPE key shared by all heads; values are
  // v_head_dim wide per head.
  int64_t q_lora_rank = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // Activated parameters published beside the total (MoE models), with its precision.
  double published_active_params = 0;
  double published_active_params_precision = 0;
  // Published parameter count and the precision it was published at (e.g. 174.6e9 given to
  // 0.1e9): the zoo test checks loom's own count against it.
  double published_params = 0;
  double published_params_precision = 0;
  std::string source;

  int64_t head_dim() const { return head_size > 0 ? head_size : hidden / heads; }
  int64_t q_dim() const { return heads * head_dim(); }
  bool is_moe() const { return experts > 0; }
  bool is_mla() const { return kv_lora_rank > 0; }
  int64_t kv_dim() const { return kv_heads * head_dim(); }
};

enum class Dtype { bf16, fp32 };
inline int64_t dtype_bytes(Dtype d) { return d == Dtype::bf16 ? 2 : 4; }

struct GpuSpec {
  std::string name;
  int64_t memory_bytes = 0;
  double peak_flops_bf16 = 0;  // dense tensor-core peak, FLOP/s
  double peak_flops_fp32 = 0;  // FP32 peak used for fp32 plans, FLOP/s
  double peak_flops_fp8 = 0;   // dense FP8 tensor-core peak, FLOP/s; 0: no FP8 (A100)
  int64_t sm_count = 0;        // streaming multiprocessors; 0: not stated (tp-comm overlap refused)
  double hbm_bytes_per_s = 0;
  std::string source;
};

struct FabricSpec {            // one level of the interconnect
  std::string kind;            // "nvswitch", "pcie", "infiniband", "ethernet", "none"
  double link_bytes_per_s = 0; // line rate per GPU (intra) or per NIC (inter), one direction
  double busbw_bytes_per_s = 0;// achievable NCCL ring bus bandwidth over that link
  double latency_s = 0;        // per ring step
  int64_t nics_per_node = 0;   // inter-node only
  // Channels NCCL runs a collective over on this level (one CTA, so one SM, each while the
  // collective is in flight; the cost model's nccl_sm_share). 0: not stated, and compute
  // overlapped with collectives is priced as if it kept every SM.
  int64_t nccl_channels = 0;
  // NVLink SHARP (NVLS: the NVSwitch reduces and multicasts, Hopper on): an all-reduce's
  // achievable algorithm bandwidth (buffer bytes per second: each GPU sends its buffer to the
  // switch once and reads the result once, whatever the group's size) and its latency, where
  // every rank of the group sits on this level's switch (intra-node only; 0: no NVLS).
  // collectives.hpp prices an all-reduce on it when it is faster than the ring.
  double nvls_algbw_bytes_per_s = 0;
  double nvls_latency_s = 0;
  std::string source;
};

// Optional in EfficiencySpec: GEMMs priced by the tile and wave model (sim/gemm_model.hpp) that
// `loom calibrate` fitted in a profile, carried to this GPU by stated ratios ("gemm_model":
// {"from": profile path, "mainloop_efficiency_scale": .., "clock_ratio": .., "source": ..};
// both ratios 1 on the GPU that was measured). Instead of `gemm` and `gemm_half_size_flops`.
struct GemmModelRef {
  std::string from, source;
  double mainloop_efficiency_scale = 1, clock_ratio = 1;
};

// efficiency.memory_curves: the memory-bound kernels' bandwidth curves of a profile (its plain
// elementwise sum and, where measured, each kind's: sim/profile.hpp) carried to this GPU, every
// bandwidth times `bandwidth_ratio` (1 on the GPU that was measured: {"from": profile path,
// "bandwidth_ratio": .., "source": ..}). Instead of `memory_bound` for bf16 plans.
struct MemoryCurvesRef {
  std::string from, source;
  double bandwidth_ratio = 1;
};

// Efficiencies the time model multiplies peaks with until `loom calibrate` measures them.
struct EfficiencySpec {
  double gemm = 0;             // fraction of peak FLOP/s a large GEMM reaches
  double gemm_half_size_flops = 0;  // GEMM size (FLOPs) at which it reaches half of `gemm`
  double attention = 0;        // fused attention kernel, fraction of peak
  double memory_bound = 0;     // fraction of HBM bandwidth elementwise kernels reach
  double kernel_launch_s = 0;  // per kernel
  // FP8 GEMMs where none was measured on this GPU: the fraction of the FP8 peak they reach over
  // the fraction of the bf16 peak a bf16 GEMM of the same shape reaches (a published FP8 and bf16
  // measurement of the same GPU and library, cited in `source`). 0: not stated, FP8 GEMMs priced
  // at the bf16 efficiency of each shape.
  double fp8_gemm_efficiency_ratio = 0;
  std::optional<GemmModelRef> gemm_model;  // see GemmModelRef
  std::optional<MemoryCurvesRef> memory_curves;  // see MemoryCurvesRef
  // Fused attention of bf16 plans by a published benchmark of the kernel against sequence length
  // and head size (sim/attention_curve.hpp), instead of `attention`, where the cluster has one.
  // Shared and immutable, so a time model pointing at it stays valid while any copy of the
  // cluster lives.
  std::shared_ptr<const AttentionCurve> attention_curve;
  std::string source;
};

// Memory that is not model state or activations: what estimators leave out and users OOM on.
struct RuntimeMemorySpec {
  int64_t cuda_context_bytes = 0;
  int64_t workspace_bytes = 0;             // cuBLAS/cuBLASLt workspace per stream
  int64_t nccl_bytes_per_communicator = 0; // NCCL's internal buffers per communicator
  double allocator_fragmentation = 0;      // fraction of allocated bytes lost to rounding
  double memory_headroom = 0;              // fraction of GPU memory kept free when planning
  std::string source;
};

// The host side of a node, for offload (ZeRO-Offload, Ren et al., USENIX ATC 2021; ZeRO-Infinity,
// Rajbhandari et al., SC21): the link each GPU copies to and from host memory over (PCIe), the
// node's DRAM and its bandwidth (CPU Adam is bound by it). Zero: not described, offload refused.
struct HostSpec {
  double link_bytes_per_s = 0;    // host <-> GPU, per GPU, one direction
  int64_t memory_bytes = 0;       // DRAM per node
  double memory_bytes_per_s = 0;  // DRAM bandwidth per node
  std::string source;
};

struct ClusterSpec {
  std::string name;
  GpuSpec gpu;
  int64_t gpus_per_node = 0;
  int64_t max_nodes = 0;
  int64_t nodes = 0;           // nodes in use: ceil(gpus / gpus_per_node)
  int64_t gpus = 0;            // GPUs in use: set by --gpus (default: every GPU of max_nodes)
  FabricSpec intra_node;
  FabricSpec inter_node;
  EfficiencySpec efficiency;
  RuntimeMemorySpec runtime_memory;
  HostSpec host;
  // Optional: the hardware profile `loom calibrate` wrote (a path; relative paths are tried
  // from the working directory, beside the cluster file, then from the repository root). When
  // set, the time model takes GEMM, attention, memory-bound, launch and optimizer times and
  // the runtime memory terms from it instead of `efficiency` and `runtime_memory`.
  std::string profile;
  std::shared_ptr<const HardwareProfile> calibration;  // loaded from `profile`; null without one
  // The GEMM model efficiency.gemm_model resolves to (null without one), and whether it
  // describes this GPU as measured (both ratios 1, the profile's own GPU) or was carried here.
  std::shared_ptr<const GemmModel> gemm_model;
  bool gemm_model_measured = false;
  // The same profile's FP8 GEMM model (gemm_model_fp8) carried by the same ratios to this GPU's
  // FP8 peak; where the profile measured no FP8 GEMMs, its bf16 model at the FP8 peak with the
  // mainloop efficiency times efficiency.fp8_gemm_efficiency_ratio (gemm_model_fp8_from_bf16),
  // when the cluster states one; null otherwise or where the GPU has no FP8 peak.
  std::shared_ptr<const GemmModel> gemm_model_fp8;
  bool gemm_model_fp8_measured = false;
  bool gemm_model_fp8_from_bf16 = false;
  // The curves efficiency.memory_curves resolves to (a profile holding only memory_bound and
  // memory_by_kind, scaled; null without one), and whether measured here (ratio 1).
  std::shared_ptr<const HardwareProfile> memory_curves;
  bool memory_curves_measured = false;
  std::string source;
};

enum class Attention { fused, unfused };  // fused: flash-style, no s^2 tensor stored
// fused: one pass computes the loss and writes the logits' gradient over the logits (llm.c's
// fused classifier, the CUDA executor); unfused: the softmax is kept in fp32 for backward
// (Megatron's vocab-parallel cross-entropy, the CPU reference executor).
enum class CrossEntropy { unfused, fused };
// How a step's micro-batches add up their weight gradients. fused: the weight-gradient GEMM
// accumulates into the gradient buffer itself (beta = 1; Megatron-LM's gradient accumulation
// fusion, on by default: its --no-gradient-accumulation-fusion turns it off; llm.c's matmul
// backward): nothing beyond the GEMM. separate: each micro-batch's gradients are written, then
// added into the accumulated ones by a memory-bound kernel (PyTorch autograd's AccumulateGrad,
// as torchtitan and DeepSpeed accumulate, and Megatron-LM before the fusion: its DDP hook
// param.main_grad.add_(param.grad) at the 2021 commit Narayanan et al. measured; stage_work.cpp).
enum class GradAccumulation { fused, separate };
// How FP8 GEMM inputs get their per-tensor scale (TrainSpec::fp8; sim/fp8.hpp). delayed: from
// the amax history of earlier steps, the amax of this cast computed in the cast kernel itself
// (Transformer Engine's DelayedScaling, Megatron-LM's --fp8-recipe delayed, its default).
// tensorwise: from the tensor's own amax, read in a pass of its own before the cast (TE's
// Float8CurrentScaling, Megatron-LM's --fp8-recipe tensorwise, Megatron-Bridge's "FP8-CS",
// torchtitan's Float8 "tensorwise").
enum class Fp8Recipe { delayed, tensorwise };

struct TrainSpec {
  int64_t global_batch = 0;    // sequences per optimizer step
  int64_t seq = 0;             // tokens per sequence
  Dtype dtype = Dtype::bf16;   // compute and weight dtype
  Dtype grad_dtype = Dtype::bf16;
  Attention attention = Attention::fused;
  CrossEntropy cross_entropy = CrossEntropy::unfused;
  GradAccumulation grad_accumulation = GradAccumulation::fused;
  // Megatron-LM's tensor-parallel backward (megatron/core/tensor_parallel/layers.py,
  // LinearWithGradAccumulationAndAsyncCommunication.backward, at d98e8a64; since 2022, absent at
  // the 2021 commit f938e19): a column-parallel layer issues its input gradient's all-reduce
  // asynchronously and computes its weight gradient meanwhile; with sequence parallelism the
  // all-gather of its input runs beside the input-gradient GEMM and the reduce-scatter beside
  // the weight-gradient GEMM (sim/tp_overlap.hpp, tp_backward_hidden_s). false: those
  // collectives run in-line, as torchtitan's and DeepSpeed's tensor parallelism run them.
  bool tp_backward_overlap = true;
  // Megatron-LM 2021's scatter/gather of pipeline transfers (Narayanan et al. 2021, Sec. 4.1;
  // megatron/p2p_communication.py at f938e19, on unless --no-scatter-gather-tensors-in-pipeline):
  // with tp > 1 and no sequence parallelism each tp rank sends 1/tp of the (s, b, h) tensor its
  // tp group holds in full, and the receiver all-gathers the pieces over NVLink
  // (mpu.gather_split_1d_tensor) before using them. Megatron-core dropped it (2023); with
  // sequence parallelism the tensor is split already.
  bool pp_scatter_gather = false;
  // Gradient bucket of the data-parallel reduction, in bytes of the gradient dtype; 0:
  // Megatron-core's default for the configuration's dp (dp_bucket_bytes_for, below).
  int64_t dp_bucket_bytes = 0;
  // MoE: expert capacity as a multiple of the mean load (Switch Transformer, Fedus et al. 2021,
  // Sec. 2.2: capacity = tokens x top-k / experts x factor; GShard pads every expert to it).
  // Expert GEMMs and all-to-alls are priced at capacity, the busiest expert's load.
  double moe_capacity_factor = 1.25;
  // FP8 training as Transformer Engine runs it (dtype stays bf16): the linear layers' GEMMs in
  // FP8 with per-tensor scaling and the casts they need, bf16 everywhere else.
  bool fp8 = false;
  Fp8Recipe fp8_recipe = Fp8Recipe::delayed;  // with fp8 only
  // With fp8 only: the FP8 GEMMs' weights stored in FP8 (Megatron-LM's --fp8-param-gather,
  // Transformer Engine's fp8_model_init): 1 byte each where bf16 keeps 2, no FP8 copy beside
  // them (their transpose stays), the ZeRO weight all-gather moving FP8, the optimizer writing
  // them from its fp32 master copy (sim/fp8.hpp).
  bool fp8_param_gather = false;
};

// Activation recompute. selective: Megatron's, the attention core's scores rebuilt in backward
// (Korthikanti et al. 2022, Sec. 5). full: each recomputed layer keeps its input only. op:
// torchtitan's per-op selective checkpointing (torchtitan/distributed/activation_checkpoint.py
// _apply_op_sac at v0.2.2, its Llama block's _op_sac_save_list): each layer keeps the outputs of
// its attention, its reduce-scatters and every other matrix multiply (wq, wv, w1, w2 of wq, wk,
// wv, wo, w1, w3, w2) and reruns the rest in backward (sim/stage_work.cpp op_sac_*).
enum class Recompute { none, selective, full, op };
enum class Schedule { gpipe, one_f_one_b, interleaved, zb_h1, zb_v };
enum class DpComm { ring, parameter_server };
// How ZeRO-3 moves a layer's weights and gradients. layer: one all-gather of the layer's flat
// buffer (FSDP's FlatParameter, Zhao et al. 2023, Sec. 3.2), prefetched one layer ahead, and one
// reduce-scatter per layer beside the next layer's backward. tensor: DeepSpeed 0.3-0.4's stage 3
// (deepspeed/runtime/zero/partition_parameters.py at v0.3.15): one all-gather per parameter tensor
// as its sub-module is fetched, each issued after torch.cuda.synchronize(), and one reduce-scatter
// per parameter tensor, so none of them overlaps compute.
enum class Zero3Gather { layer, tensor };
// What a GPU keeps in host memory (sim/offload.hpp): the optimizer state with the update on the
// CPU (ZeRO-Offload); that and the weights and gradients, streamed in and out layer by layer
// (ZeRO-Infinity's offload_param, FSDP2's CPUOffloadPolicy; ZeRO-3 only); or the activations
// kept for backward, as the alternative to recompute.
enum class Offload { none, optimizer, optimizer_params, activations };
// How context parallelism moves K and V (sim/context_parallel.hpp): p2p, a ring of blocks each
// passed on beside the attention of the one before (Megatron-core's --cp-comm-type p2p,
// TransformerEngine's AttnFuncWithCPAndKVP2P, torchtitan's rotate method "alltoall");
// all_gather, every block gathered before the attention and, in backward, gathered again and
// the K and V gradients reduce-scattered after it, none of it overlapped (--cp-comm-type
// all_gather, AttnFuncWithCPAndKVAllGather: Llama 3's choice, Dubey et al. 2024, Sec. 3.3.2;
// torchtitan's "allgather").
enum class CpComm { p2p, all_gather };

struct ParallelConfig {
  int64_t dp = 1;
  int64_t tp = 1;
  int64_t pp = 1;
  // Context parallelism (Megatron-core's cp): each sequence split over cp ranks, attention as a
  // ring passing KV blocks around the cp group, or over K and V all-gathered from it (cp_comm).
  // Its ranks sit between tp and dp in the order.
  int64_t cp = 1;
  CpComm cp_comm = CpComm::p2p;  // with cp > 1
  // Megatron's --tp-comm-overlap / torchtitan's async TP: the tp all-gathers and reduce-scatters
  // of sequence parallelism split into chunks that overlap the GEMMs beside them.
  bool tp_comm_overlap = false;
  // ZeRO 1/2: the all-gather of the updated weights runs under the next step's first forward,
  // bucket by bucket (Megatron-LM's --overlap-param-gather with the distributed optimizer),
  // instead of after the optimizer step. Off: the gather shows in full (DeepSpeed's ZeRO 1/2).
  bool overlap_param_gather = false;
  // ZeRO 0-2: the gradient reduction runs bucket by bucket on its own stream as the backward
  // produces the buckets (Megatron-core's --overlap-grad-reduce, DeepSpeed's overlap_comm,
  // PyTorch DDP and FSDP always), so only what the backward does not cover shows. false: it
  // runs after the backward, in full, before the optimizer (Megatron-core without the flag, its
  // default, and Megatron-LM 2021's local DDP: training.py's allreduce_gradients after
  // forward_backward; DeepSpeed without overlap_comm, its default for ZeRO 0-2, on the compute
  // stream). ZeRO-3 reduce-scatters each layer beside the next one's backward: on only.
  bool overlap_grad_reduce = true;
  // Pipeline transfers (pp > 1) on their own stream, waited for only where the next chunk needs
  // them, so a stage computes its next chunk while its last output is on the wire (Megatron-
  // core's overlap_p2p_comm, on by default in its interleaved schedule; torch.distributed.
  // pipelining's asynchronous sends). false: each send blocks its sender until it is through
  // (Megatron-core's non-interleaved 1F1B, which refuses overlap_p2p_comm; DeepSpeed's pipeline
  // engine; Megatron-LM 2021's batch_isend_irecv followed by torch.cuda.synchronize()). Unset:
  // as Megatron-core runs the schedule (pp_overlapped()).
  std::optional<bool> pp_comm_overlap;
  // Expert parallelism (MoE models only): the experts of a layer are split over ep ranks and
  // each expert's FFN over etp ranks. The expert grid reuses the dense grid's tp x dp ranks of a
  // stage (Megatron-core): ep * etp divides tp * dp, and ep divides experts.
  int64_t ep = 1;
  int64_t etp = 1;
  int zero = 0;                // 0-3; 3 = FSDP full shard
  int64_t micro_batch = 1;
  bool sp = false;             // sequence parallel (needs tp > 1)
  Recompute recompute = Recompute::none;
  // With recompute full: 0 recomputes every layer (Megatron-LM's --recompute-method uniform
  // --recompute-num-layers 1); N > 0 only the first N layers of each model chunk (virtual
  // stage), the others keeping their activations (--recompute-method block
  // --recompute-num-layers N: megatron/core/transformer/transformer_block.py _checkpointed_forward
  // checkpoints layer l of a chunk while l < recompute_num_layers).
  int64_t recompute_layers = 0;
  // With recompute full, the other choice of layers: every K-th layer of each model chunk,
  // its layers K, 2K, ... counted from 1, the others keeping their activations (torchtitan's
  // selective_ac_option = "K": torchtitan/distributed/activation_checkpoint.py _apply_layer_sac
  // wraps a block when a process-wide count of the blocks it has seen is a multiple of K; at
  // v0.2.2 the count runs on across a rank's model parts, which is this where each of a rank's
  // chunks but its last holds a multiple of K layers). 0: not this choice. A chunk of n layers
  // recomputes n / K of them.
  int64_t recompute_every = 0;
  Schedule schedule = Schedule::one_f_one_b;
  int64_t vpp = 1;             // virtual stages per rank (interleaved only)
  // Transformer layers of each pipeline stage (all its chunks), first to last; empty: layers /
  // pp each. Each entry >= 1 and a multiple of vpp (each of a stage's chunks holds entry / vpp
  // layers, as Megatron-core splits an uneven stage), pp entries summing to the model's layers.
  // Uneven stages balance the embedding on the first stage and the loss head on the last.
  std::vector<int64_t> stage_layers;
  std::string order = "tp-dp-pp";  // innermost first, as Megatron-core's order string
  DpComm dp_comm = DpComm::ring;
  Zero3Gather zero3_gather = Zero3Gather::layer;  // zero 3 only
  int64_t ps_servers = 0;      // parameter-server layout only
  double grad_compression = 1; // original / sent bytes of DP gradient traffic (>= 1)
  Offload offload = Offload::none;

  int64_t gpus() const { return dp * tp * pp * cp; }
  // Whether pipeline sends overlap compute: pp_comm_overlap, or where unset off for 1F1B alone
  // (Megatron-core overlaps them in its interleaved schedule only; loom's other schedules, as
  // torch.distributed.pipelining runs them, send asynchronously).
  bool pp_overlapped() const { return pp_comm_overlap.value_or(schedule != Schedule::one_f_one_b); }
  // Whether a full recompute leaves some layers out (recompute_layers or recompute_every).
  bool partial_recompute() const { return recompute_layers > 0 || recompute_every > 0; }
  // The layers of a chunk of `layers_in_chunk` recomputed in full in backward (recompute_layers,
  // recompute_every).
  int64_t recomputed_layers(int64_t layers_in_chunk) const {
    if (recompute != Recompute::full) return 0;
    if (recompute_every > 0) return layers_in_chunk / recompute_every;
    return recompute_layers > 0 ? std::min(recompute_layers, layers_in_chunk) : layers_in_chunk;
  }
  // Whether layer `i` (0-based) of a chunk of `layers_in_chunk` is one of those.
  bool layer_recomputed(int64_t i, int64_t layers_in_chunk) const {
    if (recompute != Recompute::full) return false;
    if (recompute_every > 0) return (i + 1) % recompute_every == 0;
    return i < recomputed_layers(layers_in_chunk);
  }
};

// Layers on pipeline stage `stage` of a model of `layers` layers: stage_layers[stage], or the
// even split layers / pp.
inline int64_t stage_layer_count(const ParallelConfig& p, int64_t layers, int64_t stage) {
  return p.stage_layers.empty() ? layers / p.pp : p.stage_layers[static_cast<size_t>(stage)];
}
// Layers of stage `stage`'s chunk `chunk` (of its vpp): the stage's layers / vpp. Where vpp does
// not divide them (the first and last stage only: check_stage_layers), every chunk of the stage
// holds ceil(layers / vpp) but the model's first chunk (stage 0's chunk 0) or last chunk (the
// last stage's chunk vpp - 1), which holds the rest: Megatron-LM's
// --account-for-embedding-in-pipeline-split and --account-for-loss-in-pipeline-split, where the
// embedding and the loss take a layer's place (megatron/core/transformer/transformer_block.py,
// get_num_layers_to_build), and torchtitan's first/last stage "less layers". The cost model and
// the simulator spread a stage's work evenly over its chunks, as they spread the embedding and
// the loss head; the executors build each chunk's own layers.
inline int64_t chunk_layers_at(const ParallelConfig& p, int64_t layers, int64_t stage, int64_t chunk) {
  const int64_t n = stage_layer_count(p, layers, stage), v = p.vpp, each = (n + v - 1) / v;
  if (n % v == 0) return n / v;
  const bool rest = (stage == 0 && chunk == 0) || (stage == p.pp - 1 && stage > 0 && chunk == v - 1);
  return rest ? n - (v - 1) * each : each;
}
// The most layers any of stage `stage`'s vpp chunks holds (what a chunk in flight keeps).
inline int64_t chunk_layer_count(const ParallelConfig& p, int64_t layers, int64_t stage) {
  const int64_t n = stage_layer_count(p, layers, stage);
  return (n + p.vpp - 1) / p.vpp;
}
// The most layers any chunk of any stage holds (stage_layers, when set, must hold pp entries).
inline int64_t max_chunk_layer_count(const ParallelConfig& p, int64_t layers) {
  int64_t most = 0;
  for (int64_t i = 0; i < p.pp; ++i) most = std::max(most, chunk_layer_count(p, layers, i));
  return most;
}
// The layers stage `stage` recomputes in full in backward, over its chunks
// (ParallelConfig::recomputed_layers of each).
inline int64_t stage_recomputed_layers(const ParallelConfig& p, int64_t layers, int64_t stage) {
  int64_t r = 0;
  for (int64_t c = 0; c < p.vpp; ++c) r += p.recomputed_layers(chunk_layers_at(p, layers, stage, c));
  return r;
}

// Megatron-core's gradient bucket when none is given: max(40e6, 1e6 x dp) elements, "larger DP
// sizes need larger buckets to ensure collectives do not become latency-bound" (megatron/core/
// distributed/distributed_data_parallel.py and distributed_data_parallel_config.py bucket_size,
// NVIDIA/Megatron-LM core v0.7 on; dp without context parallelism, get_data_parallel_world_size()).
inline int64_t megatron_bucket_elements(int64_t dp) { return std::max<int64_t>(40'000'000, 1'000'000 * dp); }

// The bucket a plan reduces its gradients in, in bytes: TrainSpec::dp_bucket_bytes where set,
// else Megatron-core's default for its dp.
inline int64_t dp_bucket_bytes_for(const TrainSpec& t, const ParallelConfig& p) {
  return t.dp_bucket_bytes > 0 ? t.dp_bucket_bytes : megatron_bucket_elements(p.dp) * dtype_bytes(t.grad_dtype);
}

}  // namespace loom
