// Context parallelism (Megatron-core's --context-parallel-size with --cp-comm-type p2p): each
// sequence is split over the cp ranks of a group, each holding s / cp of its tokens as two
// chunks, i and 2 cp - 1 - i of 2 cp (the load-balanced split of causal attention), and
// attention runs as a ring passing each rank's K and V block around the group (Liu et al. 2023,
// "Ring Attention with Blockwise Transformers", arXiv 2310.01889; TransformerEngine's
// attn_forward_func_with_cp / AttnFuncWithCPAndKVP2P). Everything but attention is per token,
// so a rank's GEMMs, activations and tensor/pipeline messages are those of s / cp tokens. The
// weights are replicated over cp: the gradient reduction and ZeRO's shards span dp x cp ranks,
// Megatron-core's "dp-cp" group.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/expected.hpp"
#include "sim/op_timer.hpp"
#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"

namespace loom {

struct GroupLinksSet;
struct StageEstimate;
class Topology;

// Ranks the weights are replicated over: the gradient reduction's and ZeRO's group size.
inline int64_t dp_cp(const ParallelConfig& p) { return p.dp * p.cp; }

// The rules of cp: >= 1 (bounds: check_parallel_sizes); with cp > 1, seq divisible by 2 cp
// (the load-balanced split), seq / cp by tp with sequence parallelism, fused attention (the ring
// runs FlashAttention blocks), a dense model, the ring data-parallel layout, and cp next to dp
// in the order (so the dp-cp group is one arithmetic progression of ranks, priced as one ring).
Status check_context_parallel(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                              const FieldNamer& name);

// The grid with cp folded into dp (dp x cp ranks at the inner of the two positions, cp 1): its
// dp groups are the dp-cp groups of `grid`. Needs cp next to dp in the order.
Expected<RankGrid> dp_cp_grid(const RankGrid& grid);

// Group links with cp > 1: links.cp the KV ring's, links.dp the dp-cp group's.
void add_cp_links(GroupLinksSet& links, const Topology& topo, const RankGrid& grid);

// Bytes of one K or V block a rank holds: b x (s / cp) tokens x kv / tp x e.
int64_t cp_kv_block_bytes(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p);

// The names of the ring's messages: the KV ring's hops, each beside one attention block of
// its pass, and backward's last dK/dV hop home, beside nothing.
inline constexpr const char* kCpRingMessage = "cp kv ring";
inline constexpr const char* kCpReturnMessage = "cp dkv return";
// CpComm::all_gather's: K and V gathered whole, dK and dV reduce-scattered back.
inline constexpr const char* kCpGatherMessage = "cp kv all-gather";
inline constexpr const char* kCpReduceScatterMessage = "cp dkv reduce-scatter";

// The KV ring of one micro-batch on a stage of `layers` layers: per layer cp - 1 sends of K
// and V forward (2 blocks) and in backward of K, V and their gradients (4 blocks), again in a
// recompute's forward for each of its `recomputed` layers (a full recompute's; every layer
// under a selective one), each beside one attention block of its pass; in backward one more
// hop of dK, dV per layer. Nothing with cp 1. CpComm::all_gather instead: per layer an
// all-gather of K and V (cp blocks of each) in forward, again in backward with a reduce-scatter
// of dK and dV, and again in a recompute (cp_all_gather_messages).
void cp_messages(std::vector<Message>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                 int64_t layers, int64_t recomputed);

// The memory-bound work TransformerEngine's ring attention runs beside its attention blocks
// (AttnFuncWithCPAndKVP2P, NVIDIA/TransformerEngine v2.6 c90a720765bc, transformer_engine/
// pytorch/attention/dot_product_attention/context_parallel.py; Megatron-core's sbhd layout),
// per layer on rank r of cp = C, in bytes read and written, with Q the rank's query (and output)
// block b (s / C) heads/tp x head size x e, KV its K and V, and L its fp32 softmax statistics
// 4 b heads/tp (s / C):
//  forward: K and V packed for the ring (torch.cat, 2 KV), the output and statistics started
//    from step 0's (2 Q + 4 L), and per later step the statistics' and the output's correction:
//    3 Q + 5 L where Q's both chunks attend half of KV (steps 1..r), 1.5 Q + 2.5 L where Q's
//    second chunk attends all of it (steps r+1..C-1) (lines 691, 1364-1414, 93-161);
//  backward: K and V copied into the ring's buffer (2 KV); dQ and dKV added in bf16 step by step
//    (the diagonal step 3 Q + 3 KV, rank 0's 2.5 + 2.5; a half-KV step 3 Q + 1.5 KV, a half-Q
//    step 1.5 Q + 3 KV, the first writing instead of adding: 2 Q / 1 KV, 1 Q / 2 KV); the
//    statistics' second half made contiguous (L) except on the last rank (lines 1575-1586,
//    1653-1658, 2305-2353, 2506-2550).
// The ranks' counts differ; each pass of the ring waits for its slowest rank every layer, so the
// most forward bytes of any rank price the forward and the most backward bytes the backward.
struct CpRingBytes {
  double forward = 0, backward = 0;
};
CpRingBytes cp_ring_bytes(int64_t cp, double q, double kv, double lse);
// The all-gather variant's (AttnFuncWithCPAndKVAllGather, the same file and version), the same
// on every rank: forward the gathered K and V put in sequence order (index_select, 2 C KV,
// lines 2813-2818) and each of the rank's two chunks' outputs copied into the output (2 Q,
// 2920-2925); backward the full-sequence dK and dV zeroed (C KV, 2987-2988), K and V gathered
// and put in order again (2 C KV, 3006-3007), dQ's chunks copied (2 Q, 3128-3130), each chunk's
// dK and dV added into them in bf16 (3 C + 1.5 KV over the two chunks' prefixes, 3143-3144)
// and reordered for the reduce-scatter (2 C KV, 3150-3155): 2 C KV + 2 Q and (8 C + 1.5) KV + 2 Q.
CpRingBytes cp_all_gather_bytes(int64_t cp, double q, double kv);
// Those as memory-bound ops of a stage's `layers` (forward, backward) and of the layers its
// recompute runs again (`recomputed`, every layer under selective recompute): the ring's
// "cp ring corrections" in 2 C + 1 kernels per layer and pass, the all-gather's "cp gather
// reorders" in 4 forward and 12 backward; nothing with cp 1.
void cp_attention_ops(std::vector<Op>& ops, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                      int64_t layers, int64_t recomputed);

// The attention op (one ring step's block) a cp message runs beside, from the stage's own op
// list; nullptr for the last dK/dV hop and for CpComm::all_gather's collectives, which nothing
// hides.
const Op* cp_block_of(const StageWork& w, const Message& msg);

// The ring's receive buffers: the block attended and the one arriving (two in flight), of K
// and V and in backward of dK and dV too: 8 blocks, transient. CpComm::all_gather: the gathered
// K and V (cp blocks each) and, in backward, the full-sequence dK and dV before their
// reduce-scatter: 4 cp blocks, transient (TransformerEngine's reordering of the gathered blocks
// into sequence order, index_select, holds one more cp blocks for the instant of the copy; not
// counted).
void cp_buffers(std::vector<Buffer>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p);

// One pass's ring on one micro-batch, priced from the messages and the blocks they run beside
// (cp_block_of). Each of the `hops` ring steps sends a hop while it computes a block, so it
// lasts the longer of the two (Liu et al. 2023, Sec. 3.1): exposed_s = hops x max(0, hop -
// block) + the hops beside nothing. Without overlap every hop shows in full. The simulator
// plays the same numbers as tasks (block_s of attention beside send_s on the cp link, then
// alone_s on it), which, the steps being equal, shows the same exposed time.
struct CpRingPass {
  double block_s = 0;    // the attention blocks the hops run beside
  double send_s = 0;     // those hops
  double alone_s = 0;    // hops nothing hides (backward's dK/dV return)
  double exposed_s = 0;  // what the pass waits for beyond its blocks
  int64_t bytes = 0;     // bytes one rank sends in this pass
};
struct CpRing {
  CpRingPass forward, backward, recompute;
};
CpRing cp_ring(const StageWork& w, const GroupLinks& cp, const OpTimer& op, bool overlap);

// The ring's exposed time per micro-batch (CpComm::all_gather: its collectives' whole time) into
// s.cp_comm_s (its forward part also into s.cp_forward_s), and its bytes per step
// (`micro_batches` of them) into s.comm.cp.
void price_cp_ring(const StageWork& w, const GroupLinks& cp, const OpTimer& op, bool overlap, int64_t micro_batches,
                   StageEstimate& s);

}  // namespace loom
