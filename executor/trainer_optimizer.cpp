// After the step's last slot: gradients summed where parallelism split them (SP over tp, data
// parallelism over dp), the global gradient norm, and AdamW on the ranges this rank owns.
#include <algorithm>

#include "executor/trainer_impl.hpp"
#include "sim/stage_work.hpp"

namespace loom::exec {

namespace tn = trace_names;

// SP: replicated parameters (norms, row-parallel biases, positions) saw only this rank's token
// rows, so their gradients are summed over the tp group (Megatron's layernorm-grad all-reduce),
// packed into one buffer.
Status Trainer::sp_sync() {
  if (!d_.sp || tp_.size() <= 1) return ok_status();
  std::vector<std::pair<float*, int64_t>> parts;
  int64_t n = 0;
  for (const Unit& u : layout_.units)
    for (const auto& t : u.tensors)
      if (t.replicated) {
        parts.emplace_back(grads_.data() + u.offset + t.offset, t.numel);
        n += t.numel;
      }
  auto pack = compute_->alloc(Mem::workspace, n);
  if (!pack) return pack.error();
  int64_t k = 0;
  for (const auto& [ptr, len] : parts) {
    if (auto st = compute_->copy(pack->data() + k, ptr, len); !st) return st;
    k += len;
  }
  comm_.label(kTpGradSync, tn::Stream::tp);
  if (auto st = comm_.all_reduce(tp_, pack->data(), n); !st) return st;
  k = 0;
  for (const auto& [ptr, len] : parts) {
    if (auto st = compute_->copy(ptr, pack->data() + k, len); !st) return st;
    k += len;
  }
  return ok_status();
}

// ZeRO-0's buckets as the stage's work prices them: the "dp gradients" message's pieces
// (sim/stage_work.hpp), which Megatron-core's rule sets per model chunk (chunk_grad_buckets:
// the first stage's first chunk cut by the bucket size, every other chunk one bucket; other
// schedules by size), shared among the chunks by chunk_buckets_of. Each chunk's units lie
// together in the buffer; its range is cut into that many near-equal buckets, each a multiple
// of `align` elements but the last.
std::vector<std::pair<int64_t, int64_t>> Trainer::zero0_buckets(int64_t align) const {
  const StageWork w = build_stage_work(plan_.model, plan_.cluster, plan_.train, plan_.parallel, coords_.pp);
  const Message* msg = w.find(loom::Group::dp, "dp gradients");
  const int64_t total = msg ? msg->pieces : 1;
  std::vector<std::pair<int64_t, int64_t>> out;
  for (size_t c = 0; c < layout_.chunk_units.size(); ++c) {
    const auto& ids = layout_.chunk_units[c];
    if (ids.empty()) continue;
    const int64_t begin = layout_.units[static_cast<size_t>(ids.front())].offset;
    const Unit& last = layout_.units[static_cast<size_t>(ids.back())];
    const int64_t len = last.offset + last.size - begin;
    const int64_t k = chunk_buckets_of(plan_.parallel, total, static_cast<int64_t>(c));
    const int64_t share = (len + k - 1) / k;
    const int64_t piece = std::max(align, (share + align - 1) / align * align);
    for (int64_t b = 0; b < len; b += piece) out.emplace_back(begin + b, std::min(piece, len - b));
  }
  return out;
}

// Gradient reduction over dp after the last micro-batch. ZeRO-0: all-reduce in the buckets the
// stage's work prices (zero0_buckets). ZeRO-1: reduce-scatter of each unit (each unit is
// sharded over dp on its own, so a bucket across units has no equal share per rank: here the
// count differs from Megatron-core's buckets). ZeRO-2/3 reduced every micro-batch already
// (trainer_zero.cpp).
Status Trainer::dp_sync() {
  if (plan_.model.is_moe()) return moe_dp_sync();  // expert gradients over edp (trainer_moe.cpp)
  if (dp_.size() <= 1) return ok_status();
  if (zero_ == 0) {
    for (const auto& [b0, n] : zero0_buckets(dp_.size())) {
      comm_.label(tn::dp_bucket("allreduce", grad_bucket_++), tn::Stream::dp);
      if (auto st = comm_.all_reduce(dp_, grads_.data() + b0, n); !st) return st;
    }
  } else if (zero_ == 1) {
    for (const Unit& u : layout_.units) {
      comm_.label(tn::dp_bucket("reduce_scatter", grad_bucket_++), tn::Stream::dp);
      if (auto st = comm_.reduce_scatter(dp_, grads_.data() + u.offset, u.size); !st) return st;
    }
  }
  return ok_status();
}

// Calls f(tensor, n, grad, param, m, v) with pointers at the start of every range of reduced
// gradients this rank owns after the DP sync (ZeRO >= 1: its shard of each unit), n elements.
template <class F>
Status Trainer::for_each_owned(F&& f) {
  for (const Unit& u : layout_.units) {
    const int64_t lo = zero_ == 0 ? 0 : my_begin(u), hi = zero_ == 0 ? u.size : my_end(u);
    // Where element i of the unit sits in each buffer: its shard (from lo) or the whole unit.
    const int64_t g0 = zero_ >= 2 ? u.shard_offset - lo : u.offset;
    const int64_t p0 = zero_ >= 3 ? u.shard_offset - lo : u.offset;
    const int64_t o0 = zero_ >= 1 ? u.shard_offset - lo : u.offset;
    for (const auto& t : u.tensors) {
      const int64_t a = std::max(lo, t.offset), b = std::min(hi, t.offset + t.numel);
      if (a >= b) continue;
      if (auto st = f(t, b - a, grads_.data() + (g0 + a), params_.data() + (p0 + a), adam_m_.data() + (o0 + a),
                      adam_v_.data() + (o0 + a));
          !st)
        return st;
    }
  }
  return ok_status();
}

// The squares of the reduced gradients, each counted once: replicated tensors on tp rank 0,
// unsharded gradients (ZeRO-0) on dp rank 0.
Status Trainer::add_grad_sum_squares(double& sum) {
  return for_each_owned([&](const TensorSlice& t, int64_t n, float* g, float*, float*, float*) -> Status {
    if (t.experts > 0 ? expert_coords_.edp != 0  // an expert shard: once per expert-data-parallel group
                      : (t.replicated && tp_.index != 0) || (zero_ == 0 && dp_.index != 0))
      return ok_status();
    return compute_->add_sum_squares(g, n, sum);
  });
}

// Gradients scaled by the clip factor, AdamW on every owned range (decay on matrices and
// embeddings only), then ZeRO-1/2 all-gather the updated parameters.
Status Trainer::optimizer_step(int64_t step, double clip) {
  cpu::AdamWConfig cfg;
  cfg.lr = opt_.lr;
  rec_.compute_begin(tn::kOptimizer);
  auto st = for_each_owned([&](const TensorSlice& t, int64_t n, float* g, float* p, float* m, float* v) -> Status {
    if (clip != 1.0)
      if (auto s = compute_->scale(g, n, clip); !s) return s;
    cfg.weight_decay = t.decay ? opt_.weight_decay : 0.0;
    return compute_->adamw(p, g, m, v, n, step + 1, cfg);
  });
  if (!st) return st;
  if (zero_ == 1 || zero_ == 2)
    for (const Unit& u : layout_.units) {
      comm_.label(tn::kDpGatherParams, tn::Stream::dp);
      if (auto s = comm_.all_gather(dp_, params_.data() + u.offset, u.size); !s) return s;
    }
  rec_.compute_end();
  return ok_status();
}

}  // namespace loom::exec
