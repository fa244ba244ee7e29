// Context parallelism in the trainer (Megatron-core's context_parallel_size): each sequence of a
// micro-batch split over the cp ranks of a group, rank r keeping chunks r and 2 cp - 1 - r of
// 2 cp (cpu/ring_attention.hpp), attention as a ring over the group or over K and V gathered from
// it (stage_cp.cpp). The weights are replicated over cp, so gradients are summed, and ZeRO shards,
// over the dp x cp ranks that share a tp and pp coordinate (Megatron-core's "dp-cp" group,
// sim/rank_grid.hpp): the trainer's dp_ is that group, and the loss is the mean over every token
// of every cp rank.
#include <algorithm>
#include <string>

#include "executor/stage.hpp"
#include "executor/trainer_impl.hpp"

namespace loom::exec {

namespace {

Group group_of(GroupKind kind, const std::vector<int64_t>& ranks, int rank) {
  Group g;
  g.kind = kind;
  for (int64_t r : ranks) {
    if (r == rank) g.index = static_cast<int>(g.ranks.size());
    g.ranks.push_back(static_cast<int>(r));
  }
  return g;
}

}  // namespace


// The cp group (the ring), and with cp > 1 the dp-cp group in place of dp: gradient reduction
// and ZeRO's shards span it.
Status Trainer::setup_cp() {
  cp_ = group_of(GroupKind::cp, grid_->group(Dim::cp, rank_), rank_);
  if (plan_.parallel.cp > 1) dp_ = group_of(GroupKind::dp, grid_->dp_cp_group(rank_), rank_);
  return ok_status();
}

// tokens (B, seq) of whole sequences -> (B, seq / cp): this rank's two chunks of each, in order.
void Trainer::keep_cp_tokens(Tokens& t) const {
  if (d_.cp == 1) return;
  const int64_t seq = d_.T * d_.cp;
  Tokens mine(static_cast<size_t>(d_.B * d_.T));
  for (int64_t b = 0; b < d_.B; ++b)
    for (int64_t i = 0; i < d_.T; ++i)
      mine[static_cast<size_t>(b * d_.T + i)] = t[static_cast<size_t>(b * seq + cp_position(d_, i))];
  t = std::move(mine);
}

}  // namespace loom::exec
