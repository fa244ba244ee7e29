// One rank's parameters cut into units: the embedding, each transformer layer, and the final
// norm with the head, each a contiguous range of this rank's tensor-parallel shards (Megatron's
// splits, cpu::TensorInfo::tp_split_dim), grouped by model chunk in forward order. ZeRO shards
// every unit over dp in ceil(size / dp) pieces (the last one short), which is what its gathers
// and reduce-scatters move. Pure functions of the model's tensor list and the plan: no buffers.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "executor/cpu/gpt.hpp"
#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"

namespace loom::exec {

// A tensor's local shard inside a unit and where it sits in the full cpu::Gpt tensor.
struct TensorSlice {
  std::string name;
  int64_t offset = 0, numel = 0;  // in the unit
  bool replicated = false;        // the same values on every tp rank
  bool decay = false;             // AdamW weight decay applies
  int64_t full_offset = 0, rows = 0, cols = 0;  // full tensor as (rows, cols) in cpu::Gpt
  int split = -1;                               // 0 rows, 1 columns, -1 replicated
  // MoE expert stack (cpu::TensorInfo::experts): `experts` matrices of (rows, cols), this rank
  // holding experts / ep of them, each split over etp (not tp) along `split`.
  int64_t experts = 0;
};

// Offsets inside a unit (-1 where absent).
struct UnitOffsets {
  int64_t wte = -1, wpe = -1;
  int64_t norm1_w = -1, norm1_b = -1, q_w = -1, q_b = -1, k_w = -1, k_b = -1, v_w = -1, v_b = -1;
  int64_t o_w = -1, o_b = -1, norm2_w = -1, norm2_b = -1, fc_w = -1, fc_b = -1, up_w = -1;
  int64_t proj_w = -1, proj_b = -1, normf_w = -1, normf_b = -1, head = -1;
  // MoE layers (executor/cpu/moe.hpp): router, experts' fc|gate, up, proj|down, shared experts'.
  int64_t router_w = -1, efc_w = -1, eup_w = -1, eproj_w = -1, sfc_w = -1, sup_w = -1, sproj_w = -1;
};

enum class UnitKind { embed, layer, out };

struct Unit {
  UnitKind kind = UnitKind::layer;
  int64_t layer = -1;  // model layer for kind layer
  int chunk = 0;       // model chunk on this rank
  int64_t size = 0;    // elements on this rank (tp shard)
  int64_t offset = 0;  // in the rank's full parameter and gradient buffers
  int64_t shard = 0;   // ceil(size / dp): ZeRO shard length
  int64_t shard_offset = 0;
  UnitOffsets o;
  std::vector<TensorSlice> tensors;
};

// This rank's group along `d` (world ranks in group order, and its index in it).
Group make_group(const RankGrid& grid, Dim d, int rank);

struct LayoutSpec {
  int64_t layers = 0, pp = 1, vpp = 1, stage = 0;  // the model's layers, the pipeline and this rank's stage
  int64_t tp = 1, dp = 1;
  int zero = 0;  // effective ZeRO stage (dp = 1 shards nothing)
  std::vector<int64_t> stage_layers;  // layers per stage (ParallelConfig::stage_layers; empty: layers / pp)
  int64_t ep = 1, etp = 1;            // expert parallelism (MoE expert tensors)
  Schedule schedule = Schedule::one_f_one_b;  // zb-v: the layers and the head placed as a V
};

struct UnitLayout {
  std::vector<Unit> units;                     // in buffer order
  std::vector<std::vector<int>> chunk_units;   // unit indices per model chunk, in forward order
  int64_t total = 0, total_shard = 0, max_unit = 0;  // elements: all units, all ZeRO shards, the largest unit
};

// The units of this stage in buffer order: per chunk, the embedding (first stage, chunk 0), its
// layers (sim/plan.hpp's layer_placement) and the head (last stage, last chunk).
UnitLayout build_layout(const std::vector<cpu::TensorInfo>& tensors, const LayoutSpec& spec);

// The range [begin, end) of unit `u` dp rank `index` owns under ZeRO.
inline int64_t shard_begin(const Unit& u, int index) { return std::min(u.size, index * u.shard); }
inline int64_t shard_end(const Unit& u, int index) { return std::min(u.size, (index + 1) * u.shard); }

// Where a rank sits for the shards it holds: tp for dense tensors, ep and etp for expert stacks.
struct ShardCoords {
  int tp_index = 0, tp = 1;
  int64_t ep_index = 0, ep = 1, etp_index = 0, etp = 1;
};

// Element (i, j) of a tp rank's shard <-> the full tensor in cpu::Gpt's flat layout:
// f(index in the unit, index in the full model) for every element the shard holds.
template <class F>
void for_each_element(const TensorSlice& t, int tp_index, int tp, F&& f);

// The same for any tensor: an expert stack's shard is experts [ep_index E/ep, (ep_index+1) E/ep),
// each matrix's etp part along `split`.
template <class F>
void for_each_element(const TensorSlice& t, const ShardCoords& c, F&& f) {
  if (t.experts == 0) return for_each_element(t, c.tp_index, c.tp, f);
  const int64_t El = t.experts / c.ep, e0 = c.ep_index * El;
  const int64_t lr = t.split == 0 ? t.rows / c.etp : t.rows, lc = t.split == 1 ? t.cols / c.etp : t.cols;
  const int64_t r0 = t.split == 0 ? c.etp_index * lr : 0, c0 = t.split == 1 ? c.etp_index * lc : 0;
  for (int64_t e = 0; e < El; ++e)
    for (int64_t i = 0; i < lr; ++i)
      for (int64_t j = 0; j < lc; ++j)
        f(t.offset + (e * lr + i) * lc + j, t.full_offset + ((e0 + e) * t.rows + r0 + i) * t.cols + (c0 + j));
}

template <class F>
void for_each_element(const TensorSlice& t, int tp_index, int tp, F&& f) {
  const int64_t lr = t.split == 0 ? t.rows / tp : t.rows, lc = t.split == 1 ? t.cols / tp : t.cols;
  const int64_t r0 = t.split == 0 ? tp_index * lr : 0, c0 = t.split == 1 ? tp_index * lc : 0;
  for (int64_t i = 0; i < lr; ++i)
    for (int64_t j = 0; j < lc; ++j) f(t.offset + i * lc + j, t.full_offset + (r0 + i) * t.cols + (c0 + j));
}

}  // namespace loom::exec
