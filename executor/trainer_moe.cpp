// Expert parallelism in the trainer: the CPU executor's rules for MoE plans, the expert groups
// (sim/rank_grid.hpp's ExpertGrid), where a rank's expert shards sit in the full model, and the
// gradient reduction that sums dense gradients over dp and expert gradients over the
// expert-data-parallel group (Megatron-core's expert_data_parallel group): each expert's
// gradient already holds every token of its dispatch group, so a sum over dp would add other
// experts' gradients into it.
#include <algorithm>
#include <string>

#include "executor/cpu/moe.hpp"
#include "executor/trainer_impl.hpp"

namespace loom::exec {

namespace tn = trace_names;

Status Trainer::setup_experts() {
  const auto& p = plan_.parallel;
  const auto& m = plan_.model;
  if (!m.is_moe()) return ok_status();
  auto eg = ExpertGrid::make(*grid_, p.ep, p.etp);
  if (!eg) return eg.error();
  expert_coords_ = eg->coords(rank_);
  auto fill = [&](Group& g, GroupKind kind, const std::vector<int64_t>& ranks) {
    g.kind = kind;
    g.ranks.clear();
    for (int64_t r : ranks) {
      if (r == rank_) g.index = static_cast<int>(g.ranks.size());
      g.ranks.push_back(static_cast<int>(r));
    }
  };
  fill(ep_, GroupKind::ep, eg->group(ExpertDim::ep, rank_));
  fill(etp_, GroupKind::etp, eg->group(ExpertDim::etp, rank_));
  fill(edp_, GroupKind::edp, eg->group(ExpertDim::edp, rank_));
  d_.E = m.experts;
  d_.topk = m.experts_per_token;
  d_.Fe = m.expert_ffn_hidden / p.etp;
  d_.Fs = m.shared_experts * m.expert_ffn_hidden / p.tp;
  d_.ep = p.ep;
  d_.etp = p.etp;
  d_.capacity_factor = plan_.train.moe_capacity_factor;
  bool dense_mlp = false;  // no layer with the dense MLP: none of its buffers (the cost model's count)
  for (int64_t l = 0; l < m.layers; ++l) dense_mlp = dense_mlp || !cpu::moe_layer(m, l);
  if (!dense_mlp) d_.Fl = 0;
  return ok_status();
}

ShardCoords Trainer::shard_coords() const {
  return {tp_.index, static_cast<int>(plan_.parallel.tp), expert_coords_.ep, plan_.parallel.ep, expert_coords_.etp,
          plan_.parallel.etp};
}

// Dense tensors: dp rank 0, and tp rank 0 for replicated ones; expert shards: edp rank 0.
bool Trainer::owns_share(const TensorSlice& t) const {
  if (t.experts > 0) return expert_coords_.edp == 0;
  return coords_.dp == 0 && coords_.cp == 0 && !(t.replicated && tp_.index != 0);
}

// ZeRO-0 (check_cpu_moe): runs of dense tensors all-reduced over dp and runs of expert tensors
// over edp, each in buckets of dp_bucket_bytes (a multiple of the group's size) as dp_sync.
Status Trainer::moe_dp_sync() {
  struct Run {
    int64_t begin = 0, n = 0;
    bool expert = false;
  };
  std::vector<Run> runs;
  for (const Unit& u : layout_.units)
    for (const auto& t : u.tensors) {
      const int64_t b = u.offset + t.offset;
      const bool e = t.experts > 0;
      if (!runs.empty() && runs.back().expert == e && runs.back().begin + runs.back().n == b) runs.back().n += t.numel;
      else runs.push_back({b, t.numel, e});
    }
  for (const Run& r : runs) {
    const Group& g = r.expert ? edp_ : dp_;
    if (g.size() <= 1) continue;
    const int64_t n = g.size();
    int64_t bucket = dp_bucket_bytes_for(plan_.train, plan_.parallel) / 4 / n * n;
    bucket = std::max(bucket, n);
    for (int64_t b0 = 0; b0 < r.n; b0 += bucket) {
      comm_.label(tn::dp_bucket("allreduce", grad_bucket_++), tn::Stream::dp);
      if (auto st = comm_.all_reduce(g, grads_.data() + r.begin + b0, std::min(bucket, r.n - b0)); !st) return st;
    }
  }
  return ok_status();
}

}  // namespace loom::exec
