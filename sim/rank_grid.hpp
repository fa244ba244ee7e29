// The rank grid: a pure function of the parallel sizes and an order string, as
// Megatron-core's RankGenerator ("tp-cp-dp-pp": tp innermost, so a tensor-parallel group is
// tp consecutive ranks, which sit on one node when tp <= GPUs per node; context parallelism
// next, as Megatron-core's default order "tp-cp-ep-dp-pp" places it, whose expert dimension
// ExpertGrid below regroups separately).
//   rank = c[order[0]] + n[order[0]] * (c[order[1]] + n[order[1]] * (c[order[2]] + n[order[2]] * c[order[3]]))
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

enum class Dim { tp = 0, dp = 1, pp = 2, cp = 3 };
inline const char* dim_name(Dim d) {
  return d == Dim::tp ? "tp" : d == Dim::dp ? "dp" : d == Dim::pp ? "pp" : "cp";
}

struct Coords {
  int64_t tp = 0, dp = 0, pp = 0, cp = 0;
  int64_t get(Dim d) const { return d == Dim::tp ? tp : d == Dim::dp ? dp : d == Dim::pp ? pp : cp; }
  void set(Dim d, int64_t v) { (d == Dim::tp ? tp : d == Dim::dp ? dp : d == Dim::pp ? pp : cp) = v; }
};

class RankGrid {
 public:
  RankGrid() = default;
  // `order` must be a permutation of "tp", "cp", "dp", "pp" joined by '-', or of "tp", "dp",
  // "pp" alone, in which case cp is placed right after tp ("tp-dp-pp" is "tp-cp-dp-pp").
  static Expected<RankGrid> make(int64_t tp, int64_t dp, int64_t pp, const std::string& order, int64_t cp = 1);
  int64_t size(Dim d) const { return sizes_[static_cast<int>(d)]; }
  int64_t world() const { return sizes_[0] * sizes_[1] * sizes_[2] * sizes_[3]; }
  const std::array<Dim, 4>& order() const { return order_; }
  // The order with all four names, innermost first ("tp-cp-dp-pp").
  std::string order_string() const;
  int64_t rank(const Coords& c) const;
  // Distance in ranks between neighbours along `d`: the product of the sizes inside it.
  int64_t stride(Dim d) const;
  Coords coords(int64_t rank) const;
  // The ranks of the group of kind `d` that `rank` belongs to, in coordinate order.
  std::vector<int64_t> group(Dim d, int64_t rank) const;
  // Every group of kind `d` once (each as from group()).
  std::vector<std::vector<int64_t>> all_groups(Dim d) const;
  // Megatron-core's "dp-cp" group of `rank`: the dp x cp ranks sharing its tp and pp
  // coordinates, ascending. The weights are replicated over it, so the gradient reduction and
  // the distributed optimizer's shards span it (its size is dp x cp).
  std::vector<int64_t> dp_cp_group(int64_t rank) const;
  // Every dp-cp group once.
  std::vector<std::vector<int64_t>> all_dp_cp_groups() const;

 private:
  std::array<int64_t, 4> sizes_{1, 1, 1, 1};  // indexed by Dim
  std::array<Dim, 4> order_{Dim::tp, Dim::cp, Dim::dp, Dim::pp};
};

// The expert grid of MoE layers, as Megatron-core's expert RankGenerator: the tp x cp x dp ranks
// of one pipeline stage, numbered tp innermost (local = tp + tp_size * (cp + cp_size * dp)), are
// regrouped with expert tensor parallelism innermost, then expert parallelism, then expert data
// parallelism:
//   local = etp + etp_size * (ep + ep_size * edp),   etp_size * ep_size * edp_size = tp * cp * dp.
// With order "tp-dp-pp" and etp = tp this keeps each tp group an etp group, as Megatron does.
enum class ExpertDim { etp = 0, ep = 1, edp = 2 };
struct ExpertCoords {
  int64_t etp = 0, ep = 0, edp = 0;
};

class ExpertGrid {
 public:
  // ep * etp must divide tp * cp * dp (the dense grid's ranks per stage).
  static Expected<ExpertGrid> make(const RankGrid& dense, int64_t ep, int64_t etp);
  int64_t size(ExpertDim d) const { return sizes_[static_cast<int>(d)]; }
  ExpertCoords coords(int64_t rank) const;
  // The ranks of `rank`'s group along d, in coordinate order.
  std::vector<int64_t> group(ExpertDim d, int64_t rank) const;

 private:
  int64_t world_rank(const Coords& stage, int64_t local) const;
  RankGrid dense_;
  std::array<int64_t, 3> sizes_{1, 1, 1};
};

}  // namespace loom
