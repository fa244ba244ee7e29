// One pipeline rank's share of the model under tensor (and sequence) parallelism: its units of
// parameters (embedding, layers, final norm + head), each a contiguous range, and the forward and
// backward of those units on one micro-batch, calling the fp32 ops of executor/cpu on shards
// (Megatron: column-parallel q, k, v and fc/gate/up; row-parallel o and proj/down; vocab-parallel
// embedding and cross-entropy). With SP the residual stream holds N/tp token rows per rank.
// This is the CPU backend's math; the trainer reaches it through compute.hpp (compute_cpu.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "executor/compute.hpp"
#include "executor/cpu/flop_counter.hpp"
#include "executor/ledger.hpp"
#include "executor/stage_moe.hpp"
#include "executor/units.hpp"
#include "sim/specs.hpp"

namespace loom::exec {

// What one layer keeps for backward. `x` (the layer input) is held by the caller.
struct LayerStash {
  Buf ln1, mean1, rstd1, q, k, v, att, atty, res2, ln2, mean2, rstd2, fch, up, fch_act;
  Buf lse;       // context parallelism: the ring's log-sum-exp per head and token, in place of att
  MoeStash moe;  // MoE layers
};
LayerStash make_layer_stash(Ledger& l, const Dims& d, StashKind kind);

struct HeadStash {  // last model chunk: final norm input and stats, gathered output, probabilities
  Buf lnf_in, lnf_mean, lnf_rstd, lnf_out, probs;
};
HeadStash make_head_stash(Ledger& l, const Dims& d);

// Scratch reused by every op of this rank (workspace), the SP gather buffer (comm_buffers) and
// the logits buffer (logits).
struct Scratch {
  Buf full_a, full_b, d_full, d_ln_full, d_fch_act, d_fch, d_up, d_atty, dq, dk, dv, dq0, dk0, rows3, att_out;
  Buf sp_gather, logits;
  // Context parallelism: the K, V (and dK, dV) block held and the one arriving; with
  // CpComm::all_gather every rank's K, V (a) and every block's dK, dV (b).
  Buf ring_a, ring_b;
};
Scratch make_scratch(Ledger& l, const Dims& d, bool last_stage);

struct StageCtx {
  Comm& comm;
  const Group& tp;
  Dims d;
  Scratch& s;
  Ledger& ledger;
  cpu::FlopCounter& flops;
  const Group* ep = nullptr;   // MoE: expert-parallel and expert-tensor-parallel groups
  const Group* etp = nullptr;
  const Group* cp = nullptr;   // context parallelism's ring (stage_cp.cpp)
};

// Context parallelism (stage_cp.cpp): the attention core as a ring over c.cp
// (cpu/ring_attention.hpp), RoPE by global position, and the global position of a local token.
Status cp_attention_forward(StageCtx& c, LayerStash& st);
Status cp_attention_backward(StageCtx& c, LayerStash& st);
void cp_rope(const StageCtx& c, LayerStash& st);
void cp_rope_grad(StageCtx& c);  // s.dq, s.dk (after RoPE) into s.dq0, s.dk0 (before), zeroed first
int64_t cp_position(const Dims& d, int64_t t);

Status embed_forward(StageCtx& c, const float* P, const UnitOffsets& o, const int32_t* tokens, float* x);
Status embed_backward(StageCtx& c, float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx);
// out (Ns, C) = layer(x); `st` filled (without att when kind is no_attention_core).
Status layer_forward(StageCtx& c, const float* P, const UnitOffsets& o, const float* x, LayerStash& st,
                     float* out);
// d (Ns, C): in the gradient of the layer output, out the gradient of its input. With
// `recompute_core` the attention probabilities are rebuilt first (selective recompute).
Status layer_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, const float* x,
                      LayerStash& st, float* d, bool recompute_core);
// ZB-H1's split backward (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", Sec. 2):
// layer_backward_input is layer_backward less the GEMMs' weight gradients (the norms' and the
// biases' stay in it). It writes the output gradients those GEMMs read over stash entries the
// input gradient has finished with: q, k, v take dq, dk, dv; fch and up theirs; without SP res2
// takes the MLP output's gradient and `x` (the layer input, read last) the attention output's.
// With SP those two are N rows where the stash holds Ns, so proj and o keep their weight
// gradients in B. Nothing is allocated: a stash awaiting W holds what it held awaiting B.
// layer_backward_weight then runs the deferred GEMMs on the same operands (ln1, ln2 gathered
// again under SP, as the unsplit backward gathers them), so each weight's gradient is the
// unsplit one bit for bit when W's run in the order B's did.
Status layer_backward_input(StageCtx& c, const float* P, float* G, const UnitOffsets& o, float* x, LayerStash& st,
                            float* d, bool recompute_core);
Status layer_backward_weight(StageCtx& c, float* G, const UnitOffsets& o, const float* x, LayerStash& st);
// The SP row collectives of stage.cpp, for stage_moe.cpp: the rank's (Ns, C) rows gathered into
// `full` (N, C), and (N, C) partial sums reduced to the rank's rows (without SP: in place).
Expected<const float*> sp_gather_rows(StageCtx& c, const float* shard, float* full);
Expected<const float*> sp_reduce_rows(StageCtx& c, float* full);
// MoE layers (stage_moe.cpp): out (Ns, C) = res2 + moe(ln2) on this rank's rows, and the gradient
// of ln2 (Ns, C, workspace `dln2`) from the output's `dres`.
Status moe_layer_forward(StageCtx& c, const float* P, const UnitOffsets& o, LayerStash& st, float* out);
Status moe_layer_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, LayerStash& st,
                          const float* dres, float* dln2);
// Returns the sum of the N token losses. `head_P` is the head weight (the embedding when tied).
Expected<double> head_forward(StageCtx& c, const float* P, const UnitOffsets& o, const float* head_P,
                              const float* x, const int32_t* targets, HeadStash& st);
// d (Ns, C) = gradient of the last layer's output; each token's loss has weight `scale`.
Status head_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, const float* head_P,
                     float* head_G, const int32_t* targets, HeadStash& st, double scale, float* d);

}  // namespace loom::exec
