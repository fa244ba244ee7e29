// NCCL collectives: bytes each rank sends and the time on a group's links.
// Bus-bandwidth factors from NVIDIA/nccl-tests doc/PERFORMANCE.md ("Bus bandwidth"): all-reduce 2(n-1)/n,
// all-gather and reduce-scatter (n-1)/n of the full buffer S. Time = S * factor / busbw plus
// NCCL's latency, one per ring step, NVLink's inside a node and the NIC's between (ring_latency_s).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sim/topology.hpp"

namespace loom {

enum class Collective { all_reduce, all_gather, reduce_scatter };

// Bytes one rank sends for a collective over a buffer of `bytes` (the full, unsharded size).
// The ring splits the buffer in n chunks of ceil(S/n) bytes; reduce-scatter and all-gather
// send n-1 chunks, all-reduce (one of each) 2(n-1).
inline int64_t collective_send_bytes(Collective c, int64_t bytes, int64_t n) {
  if (n <= 1) return 0;
  const int64_t chunk = (bytes + n - 1) / n;
  return (c == Collective::all_reduce ? 2 : 1) * (n - 1) * chunk;
}

// NCCL's latency model (NVIDIA/nccl src/graph/tuning.cc, ncclTopoTuneModel; the same formula
// in v2.8.4 of early 2021 and v2.30.7): one hardware latency per step, where a ring all-reduce
// has nsteps = 2 (n - 1) and all-gather or reduce-scatter n - 1, of which nInterSteps =
// 2 (nNodes - 1), resp. nNodes - 1, cross between nodes at the network's latency (hwLat NET)
// and the rest stay inside a node at NVLink's (hwLat NVLINK). The per-step latencies are the
// cluster's (Simple-protocol values, cited in models/clusters/*.json). Worked example: an
// all-gather over 1536 ranks on 192 nodes of dgx-a100 waits 1344 x 3.4 + 191 x 14 us =
// 7.24 ms, where charging every step at the NIC's 14 us gave 21.5 ms.
// Left out: tuning.cc's base latency per collective (8.4 us, ring Simple), because the
// measured 8-GPU all-reduce of the smallest sizes (42-51 us, shared/data/published/14) is
// already met by the steps alone (14 x 3.4 = 47.6 us; tests/test_published_collectives.cpp);
// NCCL's choice of the LL/LL128 protocols for small messages (lower latency, lower bandwidth);
// v2.19+'s floor of 3x the CPU's network overhead on the intra-node steps of a multi-node ring.
inline double ring_latency_s(Collective c, const GroupLinks& g) {
  const double per = c == Collective::all_reduce ? 2.0 : 1.0;
  const double steps = per * static_cast<double>(g.size - 1);
  if (g.nodes_spanned <= 1) return steps * g.latency_s;
  const double inter = per * static_cast<double>(g.nodes_spanned - 1);
  return (steps - inter) * g.intra_latency_s + inter * g.latency_s;
}

// An all-reduce whose group spans nodes may also run on NCCL's double binary tree (Sanders et
// al. 2009; NCCL 2.4, "Massively Scale Your Deep Learning Training with NCCL 2.4", NVIDIA blog
// 2019): a reduce up and a broadcast down, pipelined in chunks, at about the ring's bus
// bandwidth; tuning.cc's latency for it is 2 ((n / nNodes - 1) intra + log2i(nNodes) inter)
// (priced with the ring's per-step latencies, and without the base, as the ring). One inside
// a node whose NVSwitch reduces (NVLink SHARP, GroupLinks::nvls_*) may run on NVLS: each rank
// sends its buffer to the switch once and reads the reduced result once, so the buffer moves at
// the NVLS algorithm bandwidth whatever the group's size (a ring of 2 moves the same bytes and
// is faster there), with one latency (tuning.cc at v2.30.7: NVLS's is hwLat NVLINK NVLS
// Simple, 25 us, no per-step term). NCCL picks the algorithm its tuning model predicts fastest for the size,
// so the time is the least of them. All-gather and reduce-scatter run on the ring (NCCL's
// model gives NVLS (n - 1) / n of the all-reduce's per-channel bandwidth for them, below the
// ring's).
inline double collective_time_s(Collective c, double bytes, const GroupLinks& g) {
  const int64_t n = g.size;
  if (n <= 1 || bytes <= 0) return 0;
  const double steps = (c == Collective::all_reduce ? 2.0 : 1.0) * static_cast<double>(n - 1);
  const double transfer_s = bytes * steps / static_cast<double>(n) / g.busbw_bytes_per_s;
  const double ring_s = transfer_s + ring_latency_s(c, g);
  if (c == Collective::all_reduce && g.nodes_spanned <= 1 && g.nvls_algbw_bytes_per_s > 0)
    return std::min(ring_s, bytes / g.nvls_algbw_bytes_per_s + g.nvls_latency_s);
  if (c != Collective::all_reduce || g.nodes_spanned <= 1) return ring_s;
  const double nodes = static_cast<double>(g.nodes_spanned);
  const double per_node = std::max(0.0, std::floor(static_cast<double>(n) / nodes) - 1);
  const double tree_lat = 2.0 * (per_node * g.intra_latency_s + std::floor(std::log2(nodes)) * g.latency_s);
  return std::min(ring_s, transfer_s + tree_lat);
}

// All-to-all (MoE token dispatch and combine; NCCL's ncclAllToAll as grouped send/recv): each of
// n ranks holds S bytes split in n equal parts, keeps its own and sends one to every other rank,
// (n - 1) ceil(S/n) bytes (nccl-tests doc/PERFORMANCE.md: all-to-all bus bandwidth factor (n-1)/n).
inline int64_t all_to_all_send_bytes(int64_t bytes, int64_t n) {
  if (n <= 1) return 0;
  return (n - 1) * ((bytes + n - 1) / n);
}

// The links an all-to-all crosses: of a group of `size` ranks, `ranks_per_node` share a node
// (each rank sends (ranks_per_node - 1)/size of S over its NVLink and the other
// (size - ranks_per_node)/size over the node's NICs); every GPU of a node runs its group's
// all-to-all at once, so the node's NICs carry gpus_per_node such shares.
struct AllToAllLinks {
  int64_t size = 1;
  int64_t ranks_per_node = 1;
  int64_t nodes_spanned = 1;
  int64_t gpus_per_node = 1;          // GPUs of one node sending across at once
  double intra_bytes_per_s = 0;       // one GPU's NVLink/NVSwitch bus bandwidth
  double nic_bytes_per_s = 0;         // the node's NICs together
  double latency_s = 0;               // per peer, on the slowest link crossed
};

// Time of one all-to-all of S bytes per rank: the intra-node and the inter-node shares run at
// once on their own links, so the slower of the two, plus one latency per peer (the n - 1
// point-to-point exchanges NCCL's all-to-all issues).
inline double all_to_all_time_s(double bytes, const AllToAllLinks& l) {
  const int64_t n = l.size;
  if (n <= 1 || bytes <= 0) return 0;
  const double nn = static_cast<double>(n);
  const double intra = l.intra_bytes_per_s > 0
                           ? bytes * static_cast<double>(l.ranks_per_node - 1) / nn / l.intra_bytes_per_s : 0;
  const double cross = static_cast<double>(n - l.ranks_per_node) / nn;
  const double inter = cross > 0 && l.nic_bytes_per_s > 0
                           ? static_cast<double>(l.gpus_per_node) * bytes * cross / l.nic_bytes_per_s : 0;
  return std::max(intra, inter) + static_cast<double>(n - 1) * l.latency_s;
}

// Point-to-point send of `bytes` between neighbouring pipeline stages.
inline double p2p_time_s(double bytes, const GroupLinks& g) {
  if (g.size <= 1 || bytes <= 0) return 0;
  return bytes / g.busbw_bytes_per_s + g.latency_s;
}

}  // namespace loom
