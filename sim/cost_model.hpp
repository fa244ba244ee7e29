// The analytical cost model: memory, FLOPs, communication and time of one training step of
// one parallel configuration. It sums each stage's work (sim/stage_work.hpp, where the
// buffers, ops and messages and their sources are) and prices it: ops with OpTimer
// (sim/op_timer.hpp), messages with the ring collectives (sim/collectives.hpp) on the links
// each group crosses (sim/topology.hpp), the step with the pipeline's fill and drain.
#pragma once
#include <cstdint>

#include "sim/estimate.hpp"
#include "sim/gemm_model.hpp"
#include "sim/schedule.hpp"
#include "sim/expected.hpp"
#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/topology.hpp"

namespace loom {

struct EvalMemo;  // below

// The links each kind of group crosses, for one rank grid on one cluster.
struct GroupLinksSet {
  GroupLinks tp, dp, pp;
  // MoE with ep x etp > 1 (sim/moe.hpp moe_links): the expert groups; untouched otherwise.
  AllToAllLinks ep;
  GroupLinks etp, edp;
  // Context parallelism (sim/context_parallel.hpp): the KV ring; dp is then the dp-cp group.
  GroupLinks cp;
};
GroupLinksSet group_links(const Topology& topo, const RankGrid& grid);

// What one search thread keeps between evaluations (never shared between threads): the
// schedule tables it compiled and played (sim/schedule.hpp) and the GEMM times it priced.
struct EvalMemo {
  TableMakespans tables;
  GemmMemo gemms;
};

// Which numbers price a plan's compute, in words (Estimate::priced_by): a measured profile, a
// cluster's documented efficiencies, the GEMM models it carries, and how FP8 GEMMs are timed.
std::string priced_by(const ClusterSpec& c, const TrainSpec& t);

class CostModel {
 public:
  // The cluster must already be sized (cluster.gpus set).
  CostModel(ModelSpec model, ClusterSpec cluster, TrainSpec train);
  const ModelSpec& model() const { return model_; }
  const ClusterSpec& cluster() const { return cluster_; }
  const TrainSpec& train() const { return train_; }
  const Topology& topology() const { return topo_; }
  // The configuration must have passed validate_config(). With overlap off, no communication
  // hides behind compute (the event simulator's SimOptions::overlap = false prices the same).
  Estimate evaluate(const ParallelConfig& p, bool overlap = true) const;
  Estimate evaluate(const ParallelConfig& p, const GroupLinksSet& links, bool overlap = true) const;
  // The same, the schedule tables it plays (zb-v's, an uneven interleaved split's) and the GEMM
  // times it prices kept in `memo` (one per thread, the search's): the same estimate, bit for bit.
  Estimate evaluate(const ParallelConfig& p, const GroupLinksSet& links, bool overlap, EvalMemo* memo) const;

 private:
  StageEstimate price_stage(const StageWork& w, const ParallelConfig& p, const GroupLinksSet& links, int64_t mb,
                            bool overlap, GemmMemo* gemms) const;
  ModelSpec model_;
  ClusterSpec cluster_;
  TrainSpec train_;
  Topology topo_;
};

}  // namespace loom
