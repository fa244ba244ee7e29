#include "sim/topology.hpp"

#include <algorithm>
#include <limits>

namespace loom {

Topology::Topology(const ClusterSpec& c)
    : g_(c.gpus + c.nodes + 1),
      gpus_(c.gpus),
      gpus_per_node_(c.gpus_per_node),
      nodes_(c.nodes),
      intra_busbw_(c.intra_node.busbw_bytes_per_s),
      nvls_algbw_(c.intra_node.nvls_algbw_bytes_per_s),
      nvls_latency_s_(c.intra_node.nvls_latency_s) {
  const int64_t core = gpus_ + nodes_;
  const LinkProps intra{c.intra_node.busbw_bytes_per_s, c.intra_node.latency_s};
  const LinkProps inter{c.inter_node.busbw_bytes_per_s * static_cast<double>(c.inter_node.nics_per_node),
                        c.inter_node.latency_s};
  for (int64_t i = 0; i < gpus_; ++i) {
    const int64_t sw = gpus_ + node_of(i);
    boost::add_edge(i, sw, intra, g_);
    boost::add_edge(sw, i, intra, g_);
  }
  for (int64_t n = 0; n < nodes_; ++n) {
    boost::add_edge(gpus_ + n, core, inter, g_);
    boost::add_edge(core, gpus_ + n, inter, g_);
  }
  bytes_per_s_.assign(2 * (gpus_ + nodes_), 0);
  latency_s_.assign(2 * (gpus_ + nodes_), 0);
  for (auto [it, end] = boost::edges(g_); it != end; ++it) {
    bytes_per_s_[edge_index(*it)] = g_[*it].bytes_per_s;
    latency_s_[edge_index(*it)] = g_[*it].latency_s;
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

int Topology::path(int64_t a, int64_t b, uint32_t out[4]) const {
  const int64_t na = node_of(a), nb = node_of(b);
  out[0] = static_cast<uint32_t>(2 * a);  // gpu a -> its switch
  if (na == nb) {
    out[1] = static_cast<uint32_t>(2 * b + 1);  // switch -> gpu b
    return 2;
  }
  out[1] = static_cast<uint32_t>(2 * gpus_ + 2 * na);      // switch a -> core
  out[2] = static_cast<uint32_t>(2 * gpus_ + 2 * nb + 1);  // core -> switch b
  out[3] = static_cast<uint32_t>(2 * b + 1);
  return 4;
}

GroupLinks Topology::price(const RankGrid& grid, Dim d, bool ring) const {
  GroupLinks out;
  const int64_t n = grid.size(d);
  if (n <= 1) return out;
  out.size = n;
  std::vector<uint32_t> load(2 * (gpus_ + nodes_), 0);
  uint32_t p[4];
  // Ranks r = inner + stride * (c + n * outer), c the coordinate along d.
  const int64_t stride = grid.stride(d), outers = grid.world() / (stride * n);
  for (int64_t outer = 0; outer < outers; ++outer)
    for (int64_t c = 0; c < n; ++c) {
      if (c + 1 == n && !ring) continue;
      const int64_t base = stride * (c + n * outer);
      const int64_t step = c + 1 < n ? stride : -(n - 1) * stride;
      for (int64_t r = base; r < base + stride; ++r) {
        const int k = path(r, r + step, p);
        for (int i = 0; i < k; ++i) ++load[p[i]];
      }
    }
  // The slowest link any ring crosses sets the pace of every group (they run in lockstep).
  double bw = std::numeric_limits<double>::infinity();
  double lat = 0, intra_lat = 0;
  const size_t gpu_links = static_cast<size_t>(2 * gpus_);  // edges below this join a GPU to its switch
  for (size_t e = 0; e < load.size(); ++e) {
    if (load[e] == 0) continue;
    bw = std::min(bw, bytes_per_s_[e] / load[e]);
    lat = std::max(lat, latency_s_[e]);
    if (e < gpu_links) intra_lat = std::max(intra_lat, latency_s_[e]);
  }
  // A group is an arithmetic progression of ranks with the dimension's stride: with a stride
  // of a node or more every member is on its own node; with less it covers every node
  // between its first and last member.
  if (stride >= gpus_per_node_) {
    out.nodes_spanned = n;
  } else {
    for (int64_t outer = 0; outer < outers; ++outer)
      for (int64_t first = stride * n * outer; first < stride * n * outer + stride; ++first)
        out.nodes_spanned = std::max(out.nodes_spanned, node_of(first + (n - 1) * stride) - node_of(first) + 1);
  }
  out.busbw_bytes_per_s = bw;
  out.latency_s = lat;
  out.intra_latency_s = intra_lat;
  if (ring && out.nodes_spanned <= 1 && nvls_algbw_ > 0 && intra_busbw_ > 0) {
    out.nvls_algbw_bytes_per_s = nvls_algbw_ * std::min(1.0, bw / intra_busbw_);
    out.nvls_latency_s = nvls_latency_s_;
  }
  return out;
}

// Rank r runs on GPU r; NCCL orders a ring by GPU so it crosses each node boundary once, which
// for a group of ranks r0 + i * stride is coordinate order: r sends to the next coordinate.
GroupLinks Topology::ring(const RankGrid& grid, Dim d) const { return price(grid, d, true); }

GroupLinks Topology::pipeline_p2p(const RankGrid& grid) const { return price(grid, Dim::pp, false); }

}  // namespace loom
