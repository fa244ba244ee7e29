// The cluster as a graph (Boost.Graph) of GPUs, one NVSwitch per node and the network core,
// with a directed edge per link direction carrying its achievable bus bandwidth:
//   GPU <-> node switch: intra_node.busbw (NVLink through NVSwitch, per GPU)
//   node switch <-> core: inter_node.busbw * nics_per_node (the node's NICs together,
//   rail-optimised so NCCL spreads one ring's channels over all of them)
// A process group's collective is priced on the links its ring crosses; all groups of one
// kind (every DP group, say) run at the same time, so a link carrying k rings gives each
// 1/k of its bandwidth (8 DP rings leaving one node share its NICs).
#pragma once
#include <boost/graph/adjacency_list.hpp>

#include <cstdint>
#include <vector>

#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"

namespace loom {

// What a group's collective sees.
struct GroupLinks {
  int64_t size = 1;                 // ranks in the group
  double busbw_bytes_per_s = 0;     // ring bus bandwidth of the slowest group of this kind
  double latency_s = 0;             // per ring step on the slowest link crossed (the NIC's
                                    // when the group spans nodes)
  int64_t nodes_spanned = 1;        // most nodes any group of this kind spans
  double intra_latency_s = 0;       // per ring step between GPUs of one node (NVLink/NVSwitch)
  // NVLink SHARP where every group stays inside a node whose switch has it (FabricSpec), at
  // the share of the GPU's links the ring gets; 0: none.
  double nvls_algbw_bytes_per_s = 0, nvls_latency_s = 0;
};

class Topology {
 public:
  explicit Topology(const ClusterSpec& c);
  int64_t gpus() const { return gpus_; }
  int64_t node_of(int64_t gpu) const {  // 32-bit division: ranks fit, and it is 3x faster
    return static_cast<uint32_t>(gpu) / static_cast<uint32_t>(gpus_per_node_);
  }
  // Ring collectives of every group of kind `d` at once (rank r runs on GPU r).
  GroupLinks ring(const RankGrid& grid, Dim d) const;
  // Point-to-point between consecutive pipeline stages, every pair at once.
  GroupLinks pipeline_p2p(const RankGrid& grid) const;

 private:
  struct LinkProps {
    double bytes_per_s = 0;
    double latency_s = 0;
  };
  using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS,
                                      boost::no_property, LinkProps>;
  using Edge = Graph::edge_descriptor;
  // The directed links (as edge indices) a message from GPU a to GPU b crosses.
  int path(int64_t a, int64_t b, uint32_t out[4]) const;
  // Prices, all at once, every rank's send to its next neighbour along `d` (and, for a ring,
  // the last one's back to the first).
  GroupLinks price(const RankGrid& grid, Dim d, bool ring) const;
  size_t edge_index(const Edge& e) const;

  Graph g_;
  int64_t gpus_ = 0, gpus_per_node_ = 1, nodes_ = 1;
  double intra_busbw_ = 0, nvls_algbw_ = 0, nvls_latency_s_ = 0;
  // The graph's link properties flattened by edge index (gpu up, gpu down per GPU, then node
  // up, node down per node), so pricing a group reads arrays rather than walking the graph.
  std::vector<double> bytes_per_s_, latency_s_;
};

}  // namespace loom
