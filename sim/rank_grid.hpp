// The rank grid: a pure function of the parallel sizes and an order string, as
// Megatron-core's RankGenerator ("tp-dp-pp": tp innermost, so a tensor-parallel group is
// tp consecutive ranks, which sit on one node when tp <= GPUs per node).
//   rank = c[order[0]] + n[order[0]] * (c[order[1]] + n[order[1]] * c[order[2]])
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

enum class Dim { tp = 0, dp = 1, pp = 2 };
inline const char* dim_name(Dim d) { return d == Dim::tp ? "tp" : d == Dim::dp ? "dp" : "pp"; }

struct Coords {
  int64_t tp = 0, dp = 0, pp = 0;
  int64_t get(Dim d) const { return d == Dim::tp ? tp : d == Dim::dp ? dp : pp; }
  void set(Dim d, int64_t v) { (d == Dim::tp ? tp : d == Dim::dp ? dp : pp) = v; }
};

class RankGrid {
 public:
  // `order` must be a permutation of "tp", "dp", "pp" joined by '-'.
  static Expected<RankGrid> make(int64_t tp, int64_t dp, int64_t pp, const std::string& order);
  int64_t size(Dim d) const { return sizes_[static_cast<int>(d)]; }
  int64_t world() const { return sizes_[0] * sizes_[1] * sizes_[2]; }
  const std::array<Dim, 3>& order() const { return order_; }
  int64_t rank(const Coords& c) const;
  // Distance in ranks between neighbours along `d`: the product of the sizes inside it.
  int64_t stride(Dim d) const;
  Coords coords(int64_t rank) const;
  // The ranks of the group of kind `d` that `rank` belongs to, in coordinate order.
  std::vector<int64_t> group(Dim d, int64_t rank) const;
  // Every group of kind `d` once (each as from group()).
  std::vector<std::vector<int64_t>> all_groups(Dim d) const;

 private:
  std::array<int64_t, 3> sizes_{1, 1, 1};
  std::array<Dim, 3> order_{Dim::tp, Dim::dp, Dim::pp};
};

}  // namespace loom
