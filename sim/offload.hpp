// Offload: state a GPU keeps in its node's host memory instead of its own, and what moving it
// over the host link costs. Three choices (ParallelConfig::offload):
//   optimizer         ZeRO-Offload (Ren et al., USENIX ATC 2021, Sec. 4): the fp32 master
//                     weights, momentum and variance of the GPU's shard live in host memory and
//                     the CPU runs AdamW; per step the gradient shard goes out and the updated
//                     bf16 weights come back. DeepSpeed offload_optimizer, Megatron
//                     --optimizer-cpu-offload.
//   optimizer+params  ZeRO-Infinity (Rajbhandari et al., SC21, Sec. 5) / FSDP2's
//                     CPUOffloadPolicy: the weights and gradients too, under ZeRO-3; each micro-
//                     batch streams the weight shard in layer by layer for forward and again for
//                     backward, and the gradient shard out.
//   activations       the activations each layer keeps for backward go out after the layer's
//                     forward and come back before its backward (the alternative to recompute).
// Copies run on a host-link stream beside the compute: a chunk's copies of L layers show one
// layer's copy plus what the other L - 1 take beyond the chunk's compute (the prefetch or
// write-back of layer l runs during layer l +- 1). Per-step copies around the CPU optimizer are
// exposed. The cost model and the simulator both read these messages (stage_work.hpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sim/estimate.hpp"
#include "sim/expected.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"

namespace loom {

const std::vector<std::string>& offload_names();  // "none", "optimizer", "optimizer+params", "activations"
std::string to_string(Offload o);

// What build_stage_work knows of a stage that offload needs.
struct OffloadShape {
  int64_t optimizer_params = 0;        // the shard the optimizer updates (ZeRO)
  int64_t largest_layer_shard = 0;     // parameters of the largest layer (or end) on this GPU's shard
  int64_t layers = 0;                  // transformer layers on this stage, all chunks
  int64_t layer_activation_bytes = 0;  // one layer, one micro-batch, one tp rank
  int64_t e = 2, g = 2;                // bytes per weight/activation element, per gradient element
};

// Places the offloaded buffers on the host and adds the device buffers the copies land in.
void offload_buffers(std::vector<Buffer>& v, const ParallelConfig& p, const OffloadShape& s);
// The host-link copies (Group::host messages).
void offload_messages(std::vector<Message>& v, const ParallelConfig& p, const OffloadShape& s);

// GPUs of one node sharing its host memory and DRAM bandwidth.
int64_t gpus_sharing_host(const ClusterSpec& c);
// One copy of `bytes` over the GPU's host link.
double host_copy_s(double bytes, const HostSpec& h);
// AdamW on the CPU: memory-bound over the node's DRAM, which the node's GPUs' updates share
// (ZeRO-Offload's CPU-Adam is vectorised to DRAM speed, Ren et al. 2021, Sec. 5.1).
double cpu_optimizer_s(const ClusterSpec& c, double optimizer_bytes);
// A pass's copies of `copy_s` split over `layers` layers beside `window_s` of compute.
double host_exposed_s(double copy_s, double layers, double window_s, bool overlap);

// A stage's host-link copies: per micro-batch by pass (all chunks) and per step.
struct HostLinkTimes {
  double forward_s = 0, backward_s = 0, step_out_s = 0, step_in_s = 0;
  int64_t forward_bytes = 0, backward_bytes = 0, step_out_bytes = 0, step_in_bytes = 0;
  int64_t layers = 1;       // layers the per-micro-batch copies are split over, all chunks
  int64_t bytes_per_step = 0;
};
HostLinkTimes host_link_times(const StageWork& w, const HostSpec& h, int64_t micro_batches);

// Prices a stage's copies into s (host_s, host_step_s, comm.host); the pass windows are the
// op and tp times already in s. zb-h1's backward window is its B only.
void price_offload(const StageWork& w, const HostSpec& h, const ParallelConfig& p, int64_t micro_batches,
                   bool overlap, StageEstimate& s);

// Host memory of the node (the largest stage's host buffers times the GPUs of a node) against
// the cluster's; a plan that does not fit gets fits false and the reason.
void check_host_memory(Estimate& est, const ClusterSpec& c, int64_t stage_host_bytes);

// The rules: a described host (link and memory), optimizer+params only under ZeRO-3 (as
// DeepSpeed's offload_param and FSDP2 require), activations only without recompute.
Status validate_offload(const ClusterSpec& c, const ParallelConfig& p, const FieldNamer& name);

}  // namespace loom
