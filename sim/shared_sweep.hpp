// Playing a step's task graph when communication tasks share a node's NICs.
//
// Most tasks have a fixed duration (compute, pipeline sends, collectives on links nobody else
// uses at that moment). A communication task that shares its links with others running at the
// same time gets a share of their bandwidth, so its duration is only known once it ends. This
// sweep is an event simulation with processor sharing, the fluid model flow-level network
// simulators use (SimGrid's max-min sharing, Velho et al., ACM TOMACS 2013; ASTRA-sim's
// analytical network backend): each sharing task holds an amount of work in seconds at its
// solo bandwidth and progresses at a rate in (0, 1] that is recomputed whenever a task starts
// or ends. The sharing rules:
//   - on one stage, the data-parallel collectives running at once (a gradient reduction and a
//     ZeRO-3 gather, which run on separate streams) and, when the tensor-parallel group leaves
//     the node too, the stage's tensor-parallel collective, share the stage's rings equally;
//   - across stages, a node whose NICs carry dp ring edges of several stages gives each ring
//     edge NIC / (ring edges of the active collectives leaving it).
#pragma once
#include <cstdint>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

struct SimTask;

// An edge of the task graph: `to` starts no earlier than from.start + frac * from.dur (frac 1:
// when `from` ends). A sharing task's edges are resolved at its start (frac 0), at its end
// (frac 1), or in between once it has done frac of its work at the pace sharing leaves it.
struct SweepEdge {
  int32_t from = 0, to = 0;
  double frac = 1;
};

// Who shares what. A task of a stage is a dp user (data-parallel collective), a tp user
// (tensor-parallel collective, only where tp_shares_nic of its stage is set) or fixed.
struct NicSharing {
  std::vector<double> solo_bytes_per_s;  // [stage]: the bandwidth a dp task of the stage was priced at
  std::vector<uint8_t> tp_shares_nic;    // [stage]: its tp and dp groups both leave the node
  double nic_bytes_per_s = 0;            // one node's NICs together
  // Distinct columns of rings_leaving over the nodes that carry dp rings of two or more
  // stages: pattern[k][stage] = ring edges of that stage leaving such a node.
  std::vector<std::vector<int32_t>> node_patterns;
  bool any() const;  // whether any task can share at all
};

// Start times of every task, and the durations of the sharing tasks, in place. Returns the time
// sharing added, summed over tasks, or an error when the graph has a cycle (a schedule that
// deadlocks).
Expected<double> sweep_shared(std::vector<SimTask>& tasks, const std::vector<SweepEdge>& edges,
                              const NicSharing& sharing);

}  // namespace loom
