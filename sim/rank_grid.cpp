#include "sim/rank_grid.hpp"

#include <algorithm>
#include <set>

namespace loom {

namespace {

std::vector<std::string> split_order(const std::string& order) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t end = order.find('-', start);
    parts.push_back(order.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

}  // namespace

Expected<RankGrid> RankGrid::make(int64_t tp, int64_t dp, int64_t pp, const std::string& order, int64_t cp) {
  const std::string rule = "order: must be a permutation of tp, dp, pp (and optionally cp) joined by '-' (got \"" +
                           order + "\")";
  RankGrid g;
  g.sizes_ = {tp, dp, pp, cp};
  std::vector<std::string> parts = split_order(order);
  if (parts.size() == 3) {  // no cp named: right after tp (Megatron-core's tp-cp-...)
    for (size_t i = 0; i < parts.size(); ++i)
      if (parts[i] == "tp") {
        parts.insert(parts.begin() + static_cast<std::ptrdiff_t>(i) + 1, "cp");
        break;
      }
  }
  if (parts.size() != 4) return Error{rule};
  std::set<std::string> seen;
  for (size_t i = 0; i < 4; ++i) {
    const auto& p = parts[i];
    if (p == "tp") g.order_[i] = Dim::tp;
    else if (p == "dp") g.order_[i] = Dim::dp;
    else if (p == "pp") g.order_[i] = Dim::pp;
    else if (p == "cp") g.order_[i] = Dim::cp;
    else return Error{rule};
    if (!seen.insert(p).second)
      return Error{"order: must name each of tp, cp, dp, pp once (got \"" + order + "\")"};
  }
  return g;
}

std::string RankGrid::order_string() const {
  std::string s;
  for (Dim d : order_) s += (s.empty() ? "" : "-") + std::string(dim_name(d));
  return s;
}

int64_t RankGrid::rank(const Coords& c) const {
  int64_t r = 0;
  for (int i = 3; i >= 0; --i) r = r * size(order_[i]) + c.get(order_[i]);
  return r;
}

int64_t RankGrid::stride(Dim d) const {
  int64_t s = 1;
  for (int i = 0; i < 4 && order_[i] != d; ++i) s *= size(order_[i]);
  return s;
}

Coords RankGrid::coords(int64_t rank) const {
  Coords c;
  for (int i = 0; i < 4; ++i) {
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

std::vector<int64_t> RankGrid::dp_cp_group(int64_t rank) const {
  Coords c = coords(rank);
  std::vector<int64_t> out;
  out.reserve(size(Dim::dp) * size(Dim::cp));
  for (int64_t d = 0; d < size(Dim::dp); ++d)
    for (int64_t x = 0; x < size(Dim::cp); ++x) {
      c.dp = d;
      c.cp = x;
      out.push_back(this->rank(c));
    }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::vector<int64_t>> RankGrid::all_dp_cp_groups() const {
  std::vector<std::vector<int64_t>> out;
  for (int64_t r = 0; r < world(); ++r) {
    const Coords c = coords(r);
    if (c.dp == 0 && c.cp == 0) out.push_back(dp_cp_group(r));
  }
  return out;
}

Expected<ExpertGrid> ExpertGrid::make(const RankGrid& dense, int64_t ep, int64_t etp) {
  const int64_t stage = dense.size(Dim::tp) * dense.size(Dim::cp) * dense.size(Dim::dp);
  if (ep < 1 || etp < 1 || stage % (ep * etp) != 0)
    return Error{"ep: ep x etp must divide tp x cp x dp (got ep " + std::to_string(ep) + ", etp " +
                 std::to_string(etp) + ", tp x cp x dp " + std::to_string(stage) + ")"};
  ExpertGrid g;
  g.dense_ = dense;
  g.sizes_ = {etp, ep, stage / (ep * etp)};
  return g;
}

int64_t ExpertGrid::world_rank(const Coords& stage, int64_t local) const {
  Coords c = stage;
  const int64_t tp = dense_.size(Dim::tp), cp = dense_.size(Dim::cp);
  c.tp = local % tp;
  c.cp = (local / tp) % cp;
  c.dp = local / (tp * cp);
  return dense_.rank(c);
}

ExpertCoords ExpertGrid::coords(int64_t rank) const {
  const Coords c = dense_.coords(rank);
  const int64_t local = c.tp + dense_.size(Dim::tp) * (c.cp + dense_.size(Dim::cp) * c.dp);
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
