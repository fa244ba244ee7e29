// Mixture-of-experts layers: which layers route tokens to experts, their parameters, and one
// stage's expert work (parameters, buffers, ops, messages) for sim/stage_work.cpp.
//
// A MoE layer (Shazeer et al. 2017; GShard, Lepikhin et al. 2020; Switch Transformer, Fedus et
// al. 2021; Mixtral, Jiang et al. 2024) replaces the dense MLP: a router (a hidden x experts
// GEMM, softmax and top-k) sends each token to experts_per_token (k) of `experts` (E) SwiGLU
// FFNs of expert_ffn_hidden (fe), and every token also passes through shared_experts FFNs of fe
// (DeepSeekMoE, Dai et al. 2024; Qwen2-MoE), run as one FFN of fs = shared_experts x fe.
//
// Parallel layout (Megatron-core MoE, docs "Mixture of Experts package", and its
// expert_tensor_parallel_size): the experts of a layer are split over the ep ranks of an
// expert-parallel group, each expert's FFN over etp ranks (column- then row-parallel); the
// expert grid (etp innermost, then ep, then the expert-data-parallel edp = tp dp / (ep etp))
// reuses the tp x dp ranks of a pipeline stage. Attention, router and shared experts keep the
// dense layout (tp, sequence parallel; replicated over dp).
//
// Token flow of one MoE layer on one rank (Megatron's all-to-all dispatcher; GShard's padded
// dispatch): the rank's Tr = b s / t tokens (sequence-parallel shard) are routed; each
// expert takes at most C = ceil(cf Tr k / E) of them (capacity, cf the capacity factor,
// Switch Transformer Sec. 2.2) and the dispatch buffer is padded to E x C rows; an all-to-all
// over ep sends each rank C rows per expert it holds (E C h bytes of dtype per rank, forward),
// an all-gather over etp collects its etp group's rows (R = etp E C rows through E/ep local
// experts), the experts run on R rows, a reduce-scatter over etp and a second all-to-all
// (combine) bring the outputs back. Backward mirrors the four collectives. Expert GEMMs and
// all-to-alls are so priced at capacity: the busiest expert's load, not the mean.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/collectives.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"

namespace loom {

// Whether layer `layer` (from 0) is a MoE layer: DeepSeek-V2's rule (modeling_deepseek.py:
// layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0).
bool is_moe_layer(const ModelSpec& m, int64_t layer);
// MoE layers among layers [first, first + count).
int64_t moe_layers_in(const ModelSpec& m, int64_t first, int64_t count);
int64_t moe_layer_total(const ModelSpec& m);

// Parameters of the dense MLP one layer holds (gpt: fc1 h f + f, fc2 f h + h; llama: 3 h f).
int64_t dense_mlp_params(const ModelSpec& m);

// One MoE layer's MLP part: router h E; routed experts E x 3 h fe; shared experts 3 h fs, plus
// Qwen2-MoE's hidden x 1 shared-expert gate (h).
struct MoeLayerParams {
  int64_t router = 0, routed = 0, shared = 0;
  int64_t total() const { return router + routed + shared; }
};
MoeLayerParams moe_layer_params(const ModelSpec& m);
// Parameters one token activates: every dense parameter and, per MoE layer, the router, k of
// the E routed experts and the shared experts (Mixtral 8x7B: 12.9B of 46.7B).
int64_t active_params(const ModelSpec& m);
// Total parameters: MoE layers' MLPs in place of the dense one (model_math's total_params).
int64_t moe_params_delta(const ModelSpec& m);
// Forward FLOPs of one MoE layer's MLP part less the dense MLP's, for `tokens` tokens at the
// mean load (model FLOPs, no capacity padding): router 2 T h E, k routed experts 6 T h fe,
// shared 6 T h fs, less the dense 6 T h f (llama). Negative when the MoE MLP is the smaller.
FlopCount moe_forward_flops_delta(const ModelSpec& m, int64_t tokens);

// Model checks of the MoE fields (bounds, experts_per_token <= experts, llama family, the
// parameter count within limits::kParams), as file or flag errors through `name`.
Status check_moe_model(const ModelSpec& m, const FieldNamer& name);
// Configuration rules with experts (Megatron-LM's argument checks): ep divides experts;
// ep x etp divides tp x dp; etp <= tp; etp divides expert_ffn_hidden; tp divides the shared
// experts' size; sequence parallelism with tp > 1; ZeRO 0 or 1 (the distributed optimizer);
// ring data parallelism; pp outermost in the order; a dense model keeps ep = etp = 1.
Status check_moe_config(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, const FieldNamer& name);

// One stage's expert work, in the terms above (all per rank, one micro-batch).
struct MoeStage {
  int64_t layers = 0;          // MoE layers on the stage (all chunks)
  int64_t layers_chunk = 0;    // most MoE layers in one of its chunks
  int64_t rec_layers = 0;      // of layers, those a full recompute runs again (a block recompute:
                               // those among each chunk's first recompute_layers layers)
  int64_t e = 2;               // bytes per element
  int64_t E = 0, k = 0, h = 0, fe = 0, fs = 0, t = 1, ep = 1, etp = 1, edp = 1;
  int64_t T = 0;               // micro-batch tokens b s
  int64_t Tr = 0;              // tokens this rank routes: b s / t with SP
  int64_t C = 0;               // capacity per expert per source rank: ceil(cf Tr k / E)
  int64_t R = 0;               // rows through this rank's experts: etp E C
  int64_t dense_params = 0;    // per MoE layer on this rank, not experts: router + shared / t
  int64_t expert_params = 0;   // all MoE layers of the stage: (E / ep) 3 h fe / etp each
  int64_t mlp_params = 0;      // the dense MLP a MoE layer replaces, on this rank: 3 h f / t
  int64_t router_params = 0;   // all MoE layers: h E each (replicated over tp), and Qwen2-MoE's gate h
  int64_t gate = 0;            // Qwen2-MoE's shared-expert gate: h parameters a layer (0: none)
  int64_t dispatch_bytes = 0;  // one all-to-all's buffer per rank: E C h e
  int64_t gathered_bytes = 0;  // the etp all-gather's full buffer: R h e
};
// `first_layer`: the stage's first layer; the stage holds p.vpp chunks of `chunk_layers` each
// (chunk c of stage i starts at layer (c pp + i) chunk_layers, Megatron's interleaving).
MoeStage moe_stage(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, int64_t stage);
// The model layer chunk `chunk` of stage `stage` starts at (the assignment moe_stage walks:
// Megatron-core's interleaving, zb-v's V).
int64_t chunk_first_layer(const ModelSpec& m, const ParallelConfig& p, int64_t stage, int64_t chunk);

// Activation bytes one MoE layer keeps for backward (one micro-batch, one rank): the dense
// layer's (layer_activation_bytes) less its MLP's inner tensors 3 e T f / t, plus router
// probabilities (fp32, 4 Tr E), the experts' gathered input (e R h), gate, up and product
// (3 e R fe / etp), the routed outputs the combine weights (e E C h) and the shared experts'
// inner tensors (3 e T fs / t). A full recompute keeps only the layer input, as dense.
int64_t moe_layer_activation_bytes(const ModelSpec& m, const MoeStage& s, int64_t micro_batch, int64_t seq, bool sp,
                                   Recompute r, Attention a, Dtype d);
// Transient buffers of the expert layers: the dispatch send and receive buffers (2 E C h e) and
// the etp-gathered rows (R h e, with etp > 1) as comm buffers; the backward's expert scratch
// (gradients of the gathered input and of gate, up and product: e R (h + 3 fe / etp)) as workspace.
void moe_buffers(std::vector<Buffer>& v, const MoeStage& s, const ParallelConfig& p);
// The MoE layers' ops of one pass (count = the stage's MoE layers; in the recompute pass, those
// recomputed): router GEMM (Tr, E, h),
// expert gate|up (R, 2 fe / etp, h) and down (R, h, fe / etp) as grouped GEMMs, shared experts
// (T, 2 fs / t, h) and (T, h, fs / t), and the memory-bound router softmax/top-k, token
// permutation and SwiGLU (backward 1.5x the forward's time, as the dense layers').
void moe_ops(std::vector<Op>& ops, const MoeStage& s, Pass pass);
// Messages: per pass 2 all-to-alls (dispatch, combine) of E C h e over ep and, with etp > 1, an
// all-gather and a reduce-scatter of R h e over etp, per MoE layer (the recompute pass: per
// recomputed MoE layer); per step the expert
// gradients over edp (all-reduce; ZeRO-1: reduce-scatter, then the updated weights' all-gather).
void moe_messages(std::vector<Message>& v, const MoeStage& s, const ParallelConfig& p, const TrainSpec& t);
// Tensor-parallel halves (reduce-scatter or all-gather of b s h) a MoE layer saves against a
// dense one, per pass: without shared experts the router reads the sequence-parallel shard, so
// the MLP's two halves go (and SP's re-gather of the MLP input in backward). {forward, backward}.
struct TpHalves {
  int64_t forward = 0, backward = 0, recompute = 0;
};
TpHalves moe_tp_halves_saved(const MoeStage& s, const ParallelConfig& p);

// The links of the expert groups (pp outermost, so each stage's tp x dp ranks are consecutive;
// rank r on GPU r): etp groups of etp consecutive ranks, ep groups of stride etp, edp groups of
// stride ep etp. Sets links.ep, links.etp and links.edp; leaves them alone for a dense model.
void add_moe_links(GroupLinksSet& links, const Topology& topo, const ModelSpec& m, const ClusterSpec& c,
                   const ParallelConfig& p);

// Whether `msg` is one of the expert groups' (ep, etp, edp), and the time of one call on its links.
bool is_moe_message(const Message& msg);
double moe_message_time_s(const Message& msg, const GroupLinksSet& links);
// Prices an expert group's message into the stage (the cost model's price_messages): bytes sent
// per step into comm.ep (all-to-alls, expert tp) or comm.dp (expert gradients); in-line time per
// micro-batch into ep_comm_s (and ep_forward_s), per-step time into edp_step_s.
void price_moe_message(const Message& msg, const GroupLinksSet& links, int64_t micro_batches, StageEstimate& s);

}  // namespace loom
