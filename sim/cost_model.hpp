// The analytical cost model: memory, FLOPs, communication and time of one training step of
// one parallel configuration. Formulas and their sources are beside each term in
// cost_model.cpp; DESIGN.md ("The cost model, first principles") is where they start.
#pragma once
#include <cstdint>

#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/rank_grid.hpp"
#include "sim/specs.hpp"
#include "sim/topology.hpp"

namespace loom {

// Activation bytes one layer keeps for backward, for one micro-batch on one tp rank.
struct LayerActivationBytes {
  int64_t tensors = 0;     // the tensors of Korthikanti et al. Table 2 (for GPT, equal to it)
  int64_t statistics = 0;  // norm mean/rstd and attention log-sum-exp (fp32), which the
                           // paper leaves out
  int64_t total() const { return tensors + statistics; }
};
LayerActivationBytes layer_activation_bytes(const ModelSpec& m, int64_t micro_batch, int64_t seq,
                                            int64_t tp, bool sp, Recompute r, Attention a, Dtype d);

// Model state of `params` parameters on one GPU (ZeRO paper, Sec. 5): bf16 weights (2) and
// gradients (grad dtype) and Adam state of 12 bytes (fp32 master, momentum, variance; 8 in an
// fp32 plan, which needs no master copy). Stage 1 shards the optimizer state over dp, 2 also
// the gradients, 3 also the weights; a shard is ceil(params / dp).
struct ModelStateBytes {
  int64_t weights = 0, grads = 0, optimizer = 0;
  int64_t total() const { return weights + grads + optimizer; }
};
ModelStateBytes model_state_bytes(int64_t params, int64_t dp, int zero, Dtype dtype, Dtype grad_dtype);

// Micro-batch chunks whose activations stage `stage` holds at its peak (the schedule's
// warm-up depth): GPipe m; 1F1B min(p - i, m); interleaved
// min((p - i - 1) * 2 + (v - 1) * p + 1, m * v) (Megatron-core's warm-up count plus one).
int64_t in_flight_chunks(Schedule s, int64_t pp, int64_t vpp, int64_t stage, int64_t micro_batches);

// The links each kind of group crosses, for one rank grid on one cluster.
struct GroupLinksSet {
  GroupLinks tp, dp, pp;
};
GroupLinksSet group_links(const Topology& topo, const RankGrid& grid);

class CostModel {
 public:
  // The cluster must already be sized (cluster.gpus set).
  CostModel(ModelSpec model, ClusterSpec cluster, TrainSpec train);
  const ModelSpec& model() const { return model_; }
  const ClusterSpec& cluster() const { return cluster_; }
  const TrainSpec& train() const { return train_; }
  const Topology& topology() const { return topo_; }
  // The configuration must have passed validate_config().
  Estimate evaluate(const ParallelConfig& p) const;
  Estimate evaluate(const ParallelConfig& p, const GroupLinksSet& links) const;

 private:
  ModelSpec model_;
  ClusterSpec cluster_;
  TrainSpec train_;
  Topology topo_;
};

}  // namespace loom
