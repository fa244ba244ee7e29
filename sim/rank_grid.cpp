#include "sim/rank_grid.hpp"

#include <set>

namespace loom {

Expected<RankGrid> RankGrid::make(int64_t tp, int64_t dp, int64_t pp, const std::string& order) {
  RankGrid g;
  g.sizes_ = {tp, dp, pp};
  std::array<std::string, 3> parts;
  size_t start = 0;
  for (int i = 0; i < 3; ++i) {
    size_t end = order.find('-', start);
    if ((i < 2) != (end != std::string::npos))
      return Error{"order: must be a permutation of tp, dp, pp joined by '-' (got \"" + order + "\")"};
    parts[i] = order.substr(start, end == std::string::npos ? std::string::npos : end - start);
    start = end + 1;
  }
  std::set<std::string> seen;
  for (int i = 0; i < 3; ++i) {
    const auto& p = parts[i];
    if (p == "tp") g.order_[i] = Dim::tp;
    else if (p == "dp") g.order_[i] = Dim::dp;
    else if (p == "pp") g.order_[i] = Dim::pp;
    else return Error{"order: must be a permutation of tp, dp, pp joined by '-' (got \"" + order + "\")"};
    if (!seen.insert(p).second)
      return Error{"order: must name each of tp, dp, pp once (got \"" + order + "\")"};
  }
  return g;
}

int64_t RankGrid::rank(const Coords& c) const {
  int64_t r = 0;
  for (int i = 2; i >= 0; --i) r = r * size(order_[i]) + c.get(order_[i]);
  return r;
}

int64_t RankGrid::stride(Dim d) const {
  int64_t s = 1;
  for (int i = 0; i < 3 && order_[i] != d; ++i) s *= size(order_[i]);
  return s;
}

Coords RankGrid::coords(int64_t rank) const {
  Coords c;
  for (int i = 0; i < 3; ++i) {
    c.set(order_[i], rank % size(order_[i]));
    rank /= size(order_[i]);
  }
  return c;
}

std::vector<int64_t> RankGrid::group(Dim d, int64_t rank) const {
  Coords c = coords(rank);
  std::vector<int64_t> out;
  out.reserve(size(d));
  for (int64_t i = 0; i < size(d); ++i) {
    c.set(d, i);
    out.push_back(this->rank(c));
  }
  return out;
}

std::vector<std::vector<int64_t>> RankGrid::all_groups(Dim d) const {
  std::vector<std::vector<int64_t>> out;
  for (int64_t r = 0; r < world(); ++r)
    if (coords(r).get(d) == 0) out.push_back(group(d, r));
  return out;
}

Expected<ExpertGrid> ExpertGrid::make(const RankGrid& dense, int64_t ep, int64_t etp) {
  const int64_t stage = dense.size(Dim::tp) * dense.size(Dim::dp);
  if (ep < 1 || etp < 1 || stage % (ep * etp) != 0)
    return Error{"ep: ep x etp must divide tp x dp (got ep " + std::to_string(ep) + ", etp " + std::to_string(etp) +
                 ", tp x dp " + std::to_string(stage) + ")"};
  ExpertGrid g;
  g.dense_ = dense;
  g.sizes_ = {etp, ep, stage / (ep * etp)};
  return g;
}

int64_t ExpertGrid::world_rank(const Coords& stage, int64_t local) const {
  Coords c = stage;
  c.tp = local % dense_.size(Dim::tp);
  c.dp = local / dense_.size(Dim::tp);
  return dense_.rank(c);
}

ExpertCoords ExpertGrid::coords(int64_t rank) const {
  const Coords c = dense_.coords(rank);
  const int64_t local = c.tp + dense_.size(Dim::tp) * c.dp;
  return {local % sizes_[0], (local / sizes_[0]) % sizes_[1], local / (sizes_[0] * sizes_[1])};
}

std::vector<int64_t> ExpertGrid::group(ExpertDim d, int64_t rank) const {
  const Coords stage = dense_.coords(rank);
  const ExpertCoords e = coords(rank);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < size(d); ++i) {
    ExpertCoords x = e;
    (d == ExpertDim::etp ? x.etp : d == ExpertDim::ep ? x.ep : x.edp) = i;
    out.push_back(world_rank(stage, x.etp + sizes_[0] * (x.ep + sizes_[1] * x.edp)));
  }
  return out;
}

}  // namespace loom
