// ZeRO: a unit's parameters gathered before use (stage 3), its gradients reduce-scattered after
// each micro-batch (stages 2 and 3). Below stage 3 every unit is resident; below stage 2 its
// gradients accumulate in place until the DP sync (trainer_optimizer.cpp).
#include "executor/trainer_impl.hpp"

namespace loom::exec {

namespace tn = trace_names;

// ZeRO-3: the unit's shards all-gathered into the next of two buffers (the current and the next
// layer); `name` labels that all-gather in the trace. Otherwise the resident parameters.
Expected<float*> Trainer::acquire(const Unit& u, const std::string& name) {
  if (zero_ < 3) return params_.data() + u.offset;
  float* buf = gathered_[slot_].data();
  slot_ ^= 1;
  if (auto st = compute_->copy(buf + my_begin(u), params_.data() + u.shard_offset, my_end(u) - my_begin(u)); !st)
    return st.error();
  comm_.label(name, tn::Stream::dp_gather);
  if (auto st = comm_.all_gather(dp_, buf, u.size); !st) return st.error();
  return buf;
}

// Where this micro-batch's gradient of the unit is added: the resident accumulators, or (ZeRO-2/3)
// one unit's zeroed buffer, released by release_grads.
Expected<float*> Trainer::grads_for(const Unit& u) {
  if (zero_ < 2) return grads_.data() + u.offset;
  if (auto st = compute_->fill_zero(unit_grad_.data(), u.size); !st) return st.error();
  return unit_grad_.data();
}

// ZeRO-2/3: this micro-batch's gradient of the unit is reduce-scattered at once (only a shard
// is kept); the rank's chunk is added to its shard accumulator.
Status Trainer::release_grads(const Unit& u) {
  if (zero_ < 2) return ok_status();
  comm_.label(tn::dp_bucket("reduce_scatter", grad_bucket_++), tn::Stream::dp);
  if (auto st = comm_.reduce_scatter(dp_, unit_grad_.data(), u.size); !st) return st;
  return compute_->add(grads_.data() + u.shard_offset, unit_grad_.data() + my_begin(u), my_end(u) - my_begin(u));
}

// Tied embeddings (pp = 1, zero < 2 only: check_cpu_plan): the head reads and adds to the
// embedding's resident weight.
const float* Trainer::tied_head() const {
  const Unit& e = layout_.units.front();
  return params_.data() + e.offset + e.o.wte;
}
float* Trainer::tied_head_grad() {
  const Unit& e = layout_.units.front();
  return grads_.data() + e.offset + e.o.wte;
}

}  // namespace loom::exec
