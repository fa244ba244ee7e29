#include "sim/topology.hpp"

#include <algorithm>
#include <limits>

namespace loom {

Topology::Topology(const ClusterSpec& c)
    : g_(c.gpus + c.nodes + 1), gpus_(c.gpus), gpus_per_node_(c.gpus_per_node), nodes_(c.nodes) {
  const int64_t core = gpus_ + nodes_;
  const LinkProps intra{c.intra_node.busbw_bytes_per_s, c.intra_node.latency_s};
  const LinkProps inter{c.inter_node.busbw_bytes_per_s * static_cast<double>(c.inter_node.nics_per_node),
                        c.inter_node.latency_s};
  for (int64_t i = 0; i < gpus_; ++i) {
    const int64_t sw = gpus_ + node_of(i);
    gpu_up_.push_back(boost::add_edge(i, sw, intra, g_).first);
    gpu_down_.push_back(boost::add_edge(sw, i, intra, g_).first);
  }
  for (int64_t n = 0; n < nodes_; ++n) {
    node_up_.push_back(boost::add_edge(gpus_ + n, core, inter, g_).first);
    node_down_.push_back(boost::add_edge(core, gpus_ + n, inter, g_).first);
  }
}

// Edges are numbered gpu links first (up, down per GPU), then node links (up, down).
size_t Topology::edge_index(const Edge& e) const {
  const auto s = boost::source(e, g_), t = boost::target(e, g_);
  const auto core = static_cast<size_t>(gpus_ + nodes_);
  if (static_cast<int64_t>(s) < gpus_) return 2 * s;                      // gpu -> switch
  if (static_cast<int64_t>(t) < gpus_) return 2 * t + 1;                  // switch -> gpu
  if (t == core) return 2 * gpus_ + 2 * (s - gpus_);                      // switch -> core
  return 2 * gpus_ + 2 * (t - gpus_) + 1;                                 // core -> switch
}

int Topology::path(int64_t a, int64_t b, Edge out[4]) const {
  if (node_of(a) == node_of(b)) {
    out[0] = gpu_up_[a];
    out[1] = gpu_down_[b];
    return 2;
  }
  out[0] = gpu_up_[a];
  out[1] = node_up_[node_of(a)];
  out[2] = node_down_[node_of(b)];
  out[3] = gpu_down_[b];
  return 4;
}

GroupLinks Topology::price(const std::vector<std::pair<int64_t, int64_t>>& sends,
                           const std::vector<std::vector<int64_t>>& groups) const {
  GroupLinks out;
  if (groups.empty() || groups.front().size() <= 1) return out;
  out.size = static_cast<int64_t>(groups.front().size());
  std::vector<uint32_t> load(2 * (gpus_ + nodes_), 0);
  Edge p[4];
  for (auto [a, b] : sends) {
    int n = path(a, b, p);
    for (int i = 0; i < n; ++i) ++load[edge_index(p[i])];
  }
  double bw = std::numeric_limits<double>::infinity();
  double lat = 0;
  for (auto [a, b] : sends) {
    int n = path(a, b, p);
    for (int i = 0; i < n; ++i) {
      const auto& props = g_[p[i]];
      bw = std::min(bw, props.bytes_per_s / load[edge_index(p[i])]);
      lat = std::max(lat, props.latency_s);
    }
  }
  for (const auto& grp : groups) {
    // Distinct nodes: members are sorted by rank only for some orders, so count them.
    std::vector<int64_t> nodes;
    for (auto r : grp) nodes.push_back(node_of(r));
    std::sort(nodes.begin(), nodes.end());
    int64_t distinct = std::unique(nodes.begin(), nodes.end()) - nodes.begin();
    out.nodes_spanned = std::max(out.nodes_spanned, distinct);
  }
  out.busbw_bytes_per_s = bw;
  out.latency_s = lat;
  return out;
}

GroupLinks Topology::ring(const RankGrid& grid, Dim d) const {
  auto groups = grid.all_groups(d);
  std::vector<std::pair<int64_t, int64_t>> sends;
  for (auto grp : groups) {
    if (grp.size() <= 1) continue;
    std::sort(grp.begin(), grp.end());  // NCCL orders the ring to cross nodes as little as it can
    for (size_t i = 0; i < grp.size(); ++i) sends.emplace_back(grp[i], grp[(i + 1) % grp.size()]);
  }
  return price(sends, groups);
}

GroupLinks Topology::pipeline_p2p(const RankGrid& grid) const {
  auto groups = grid.all_groups(Dim::pp);
  std::vector<std::pair<int64_t, int64_t>> sends;
  for (const auto& grp : groups)
    for (size_t i = 0; i + 1 < grp.size(); ++i) sends.emplace_back(grp[i], grp[i + 1]);
  return price(sends, groups);
}

}  // namespace loom
