#include "sim/offload.hpp"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "sim/schedule.hpp"
#include "sim/spec_json.hpp"

namespace loom {

namespace {

bool named(const Buffer& b, const char* name) { return std::strcmp(b.name, name) == 0; }

void add_device(std::vector<Buffer>& v, const char* name, MemCategory c, int64_t bytes) {
  if (bytes > 0) v.push_back({name, c, Lifetime::transient, bytes, Placement::device});
}

}  // namespace

const std::vector<std::string>& offload_names() {
  static const std::vector<std::string> n{"none", "optimizer", "optimizer+params", "activations"};
  return n;
}
std::string to_string(Offload o) { return offload_names()[static_cast<int>(o)]; }

// optimizer: the Adam state (12 bytes per parameter of the shard) on the host; the gradients
// are read from and the weights written to their device buffers, nothing else on the GPU.
// optimizer+params: the weight and gradient shards on the host too; the GPU holds the shard of
// the layer it computes and of the one it prefetches (2 e) and of one layer's gradient (g)
// (ZeRO-Infinity's working set of a layer, Rajbhandari et al. 2021, Sec. 5.1).
// activations: the layers' saved activations on the host; the GPU holds the layer being
// written out or read back and the one being computed (2 layers).
void offload_buffers(std::vector<Buffer>& v, const ParallelConfig& p, const OffloadShape& s) {
  if (p.offload == Offload::none) return;
  for (Buffer& b : v) {
    const bool state = b.lifetime == Lifetime::step;
    if (p.offload != Offload::activations && state && b.category == MemCategory::optimizer)
      b.placement = Placement::host;
    if (p.offload == Offload::optimizer_params && state &&
        (b.category == MemCategory::weights || b.category == MemCategory::grads))
      b.placement = Placement::host;
    if (p.offload == Offload::activations && named(b, "layer activations")) b.placement = Placement::host;
  }
  if (p.offload == Offload::optimizer_params)
    add_device(v, "host-streamed layer shards", MemCategory::comm_buffers, (2 * s.e + s.g) * s.largest_layer_shard);
  if (p.offload == Offload::activations)
    add_device(v, "activations in transit", MemCategory::activations, 2 * s.layer_activation_bytes);
}

// optimizer: per step g x shard out, e x shard back (ZeRO-Offload's data flow, Ren et al.
// 2021, Fig. 2: fp16 gradients to the CPU, updated fp16 parameters to the GPU).
// optimizer+params: per micro-batch e x shard in for forward and again for backward, g x
// shard out after backward (the shard of every layer; ZeRO-Infinity, Sec. 5).
// activations: per micro-batch the stage's layers' saved activations out in forward and in
// for backward.
void offload_messages(std::vector<Message>& v, const ParallelConfig& p, const OffloadShape& s) {
  const auto mbc = Cadence::micro_batch, step = Cadence::step;
  const auto out = MessageKind::to_host, in = MessageKind::to_device;
  const int64_t n = s.optimizer_params, L = std::max<int64_t>(1, s.layers);
  switch (p.offload) {
    case Offload::none: return;
    case Offload::optimizer:
      v.push_back(message("host gradients", Group::host, out, Pass::step, step, s.g * n, 1));
      v.push_back(message("host weights", Group::host, in, Pass::step, step, s.e * n, 1));
      return;
    case Offload::optimizer_params:
      v.push_back(message("host weights", Group::host, in, Pass::forward, mbc, s.e * n, 1, L));
      v.push_back(message("host weights", Group::host, in, Pass::backward, mbc, s.e * n, 1, L));
      v.push_back(message("host gradients", Group::host, out, Pass::backward, mbc, s.g * n, 1, L));
      return;
    case Offload::activations:
      v.push_back(message("host activations", Group::host, out, Pass::forward, mbc, s.layers * s.layer_activation_bytes, 1, L));
      v.push_back(message("host activations", Group::host, in, Pass::backward, mbc, s.layers * s.layer_activation_bytes, 1, L));
      return;
  }
}

int64_t gpus_sharing_host(const ClusterSpec& c) {
  return std::max<int64_t>(1, std::min(c.gpus > 0 ? c.gpus : c.gpus_per_node, c.gpus_per_node));
}

double host_copy_s(double bytes, const HostSpec& h) { return h.link_bytes_per_s > 0 ? bytes / h.link_bytes_per_s : 0; }

double cpu_optimizer_s(const ClusterSpec& c, double optimizer_bytes) {
  if (c.host.memory_bytes_per_s <= 0) return 0;
  return optimizer_bytes * static_cast<double>(gpus_sharing_host(c)) / c.host.memory_bytes_per_s;
}

// Per chunk of L layers: layer 1's copy is exposed (nothing to hide it behind: the first fetch,
// the last write-back), the other L - 1 run beside the chunk's compute and show what exceeds it.
double host_exposed_s(double copy_s, double layers, double window_s, bool overlap) {
  if (!overlap || copy_s <= 0) return copy_s;
  const double one = copy_s / std::max(1.0, layers);
  return one + std::max(0.0, copy_s - one - window_s);
}

HostLinkTimes host_link_times(const StageWork& w, const HostSpec& h, int64_t micro_batches) {
  HostLinkTimes t;
  double fwd_in = 0, fwd_out = 0, bwd_in = 0, bwd_out = 0;
  for (const Message& msg : w.messages) {
    if (msg.group != Group::host) continue;
    const double s = static_cast<double>(msg.count) * host_copy_s(static_cast<double>(msg.bytes), h);
    const int64_t bytes = msg.count * msg.bytes;
    t.bytes_per_step += calls_per_step(msg, micro_batches) * msg.bytes;
    if (msg.cadence == Cadence::step) {
      (msg.kind == MessageKind::to_host ? t.step_out_s : t.step_in_s) += s;
      (msg.kind == MessageKind::to_host ? t.step_out_bytes : t.step_in_bytes) += bytes;
      continue;
    }
    t.layers = msg.pieces;
    const bool fwd = msg.pass == Pass::forward, out = msg.kind == MessageKind::to_host;
    (fwd ? (out ? fwd_out : fwd_in) : (out ? bwd_out : bwd_in)) += s;
    (fwd ? t.forward_bytes : t.backward_bytes) += bytes;
  }
  // PCIe is full duplex: a pass's copies out and in run at once (two copy engines).
  t.forward_s = std::max(fwd_in, fwd_out);
  t.backward_s = std::max(bwd_in, bwd_out);
  return t;
}

// Per micro-batch, v chunks each exposing host_exposed_s of its share beside its share of the
// pass's compute and tp time (the simulator's slot: its compute-stream tasks).
void price_offload(const StageWork& w, const HostSpec& h, const ParallelConfig& p, int64_t micro_batches,
                   bool overlap, StageEstimate& s) {
  if (p.offload == Offload::none) return;
  const HostLinkTimes t = host_link_times(w, h, micro_batches);
  const double v = static_cast<double>(p.vpp), L = static_cast<double>(t.layers) / v;
  const double fwd_window = s.forward_s + s.tp_forward_s;
  const double bwd_window = s.backward_s - (splits_backward(p.schedule) ? s.weight_grad_s : 0) + s.recompute_s +
                            s.tp_comm_s - s.tp_forward_s;
  s.host_s = v * (host_exposed_s(t.forward_s / v, L, fwd_window / v, overlap) +
                  host_exposed_s(t.backward_s / v, L, bwd_window / v, overlap));
  s.host_step_s = t.step_out_s + t.step_in_s;
  s.comm.host = t.bytes_per_step;
}

void check_host_memory(Estimate& est, const ClusterSpec& c, int64_t stage_host_bytes) {
  if (est.parallel.offload == Offload::none) return;
  est.host_memory_bytes = stage_host_bytes * gpus_sharing_host(c);
  est.host_capacity_bytes = c.host.memory_bytes;
  if (est.host_memory_bytes <= est.host_capacity_bytes) return;
  std::ostringstream why;
  why.precision(1);
  why << std::fixed << "host memory: " << gpus_sharing_host(c) << " GPUs x " << stage_host_bytes / 1073741824.0
      << " GiB offloaded = " << est.host_memory_bytes / 1073741824.0 << " GiB > " << c.host.memory_bytes / 1073741824.0
      << " GiB per node";
  est.reason = est.fits ? why.str() : est.reason + "; " + why.str();
  est.fits = false;
}

Status validate_offload(const ClusterSpec& c, const ParallelConfig& p, const FieldNamer& name) {
  if (p.offload == Offload::none) return ok_status();
  const std::string what = "offload " + to_string(p.offload);
  if (c.host.memory_bytes <= 0 || c.host.link_bytes_per_s <= 0 || c.host.memory_bytes_per_s <= 0)
    return Error{name("offload") + ": " + what + " needs the cluster's host memory_bytes, link_bytes_per_s and " +
                 "memory_bytes_per_s (cluster " + c.name + " has no host section)"};
  if (p.offload == Offload::optimizer_params && p.zero != 3)
    return Error{name("offload") + ": optimizer+params needs zero 3 (as DeepSpeed's offload_param and FSDP2 do; got zero " +
                 std::to_string(p.zero) + ")"};
  if (p.offload == Offload::activations && p.recompute != Recompute::none)
    return Error{name("offload") + ": activations is the alternative to recompute: needs recompute none (got " +
                 to_string(p.recompute) + ")"};
  return ok_status();
}

}  // namespace loom
