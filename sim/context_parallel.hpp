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

// The KV ring of one micro-batch on a stage of `layers` layers: per layer cp - 1 sends of K
// and V forward (2 blocks) and in backward of K, V and their gradients (4 blocks), again in a
// recompute's forward. Nothing with cp 1.
void cp_messages(std::vector<Message>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p,
                 int64_t layers);

// The ring's receive buffers: the block attended and the one arriving (two in flight), of K
// and V and in backward of dK and dV too: 8 blocks, transient.
void cp_buffers(std::vector<Buffer>& v, const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p);

// Ring time not hidden behind attention, per micro-batch, added to its pass: each of the
// cp - 1 steps of a layer sends while it computes one block, so a step lasts the longer of
// the two and shows max(0, send - block) beyond the block (Liu et al. 2023, Sec. 3.1).
void price_cp_ring(const StageWork& w, const GroupLinks& cp, const OpTimer& op, StageEstimate& s);

}  // namespace loom
