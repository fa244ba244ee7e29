// The names of trace tracks and events, shared by the simulator's predicted trace and the
// executors' measured traces: both use these track and event names, so a predicted and a
// measured trace can be laid side by side (`loom compare` matches events by name). Chrome
// trace event format: one process
// per rank (pid = global rank), one thread per stream (tid below), complete events ("X").
//
//   process name     "rank 12 (dp 0, pp 1, tp 4)"
//   threads          "compute" (tid 0), "tp" (1), "dp" (2), "pp" (3)
//   compute stream   "F mb3 c0", "B mb3 c0", "R mb3 c0" (recompute before that backward), "optimizer",
//                    "W mb3 c0" (zb-h1's weight gradients, split off the backward)
//   tp stream        "tp allreduce" (sequence parallel: "tp reduce_scatter+all_gather")
//   dp stream        "dp allreduce bucket 2", "dp reduce_scatter bucket 2",
//                    "dp all_gather params" (ZeRO-1/2 after the optimizer),
//                    "dp all_gather F mb3 c0" / "dp all_gather B mb3 c0" (ZeRO-3),
//                    "dp push_pull" (parameter server)
//   pp stream        "pp send F mb3", "pp recv F mb3", "pp send B mb3", "pp recv B mb3"
//   args             micro_batch, chunk, layers, bytes (whichever apply)
#pragma once
#include <cstdint>
#include <string>

namespace loom::trace_names {

// dp_gather: ZeRO-3/FSDP parameter all-gathers, on their own stream as FSDP's unshard
// stream, so a prefetch is not queued behind the previous layer's gradient reduce-scatter.
// pp carries a rank's own sends; what it receives is drawn on two tracks of its own, activations
// from the stage before and gradients from the stage after, so that a receive overlapping a send
// (or the other direction's receive) never shares a track with it: Perfetto nests the events of
// one track and draws overlapping ones wrongly.
enum class Stream : uint8_t { compute = 0, tp = 1, dp = 2, pp = 3, dp_gather = 4, pp_recv_activations = 5,
                              pp_recv_gradients = 6, host = 7 };
inline constexpr int kStreams = 8;
inline Stream pp_recv_stream(bool forward) {
  return forward ? Stream::pp_recv_activations : Stream::pp_recv_gradients;
}
inline const char* stream_name(Stream s) {
  switch (s) {
    case Stream::compute: return "compute";
    case Stream::tp: return "tp";
    case Stream::dp: return "dp";
    case Stream::pp: return "pp";
    case Stream::dp_gather: return "dp gather";
    case Stream::pp_recv_activations: return "pp recv activations";
    case Stream::pp_recv_gradients: return "pp recv gradients";
    case Stream::host: return "host link";
  }
  return "?";
}
inline int tid(Stream s) { return static_cast<int>(s); }

inline std::string process_name(int64_t rank, int64_t dp, int64_t pp, int64_t tp) {
  return "rank " + std::to_string(rank) + " (dp " + std::to_string(dp) + ", pp " + std::to_string(pp) + ", tp " +
         std::to_string(tp) + ")";
}

inline std::string mb_chunk(int64_t micro_batch, int64_t chunk) {
  return "mb" + std::to_string(micro_batch) + " c" + std::to_string(chunk);
}
inline std::string forward(int64_t micro_batch, int64_t chunk) { return "F " + mb_chunk(micro_batch, chunk); }
inline std::string backward(int64_t micro_batch, int64_t chunk) { return "B " + mb_chunk(micro_batch, chunk); }
inline std::string recompute(int64_t micro_batch, int64_t chunk) { return "R " + mb_chunk(micro_batch, chunk); }
inline std::string weight(int64_t micro_batch, int64_t chunk) { return "W " + mb_chunk(micro_batch, chunk); }
inline constexpr const char* kOptimizer = "optimizer";

inline constexpr const char* kTpAllReduce = "tp allreduce";
inline constexpr const char* kTpSequenceParallel = "tp reduce_scatter+all_gather";

inline std::string dp_bucket(const char* collective, int64_t bucket) {  // "allreduce", "reduce_scatter"
  return std::string("dp ") + collective + " bucket " + std::to_string(bucket);
}
inline constexpr const char* kDpGatherParams = "dp all_gather params";
inline std::string dp_gather(bool forward, int64_t micro_batch, int64_t chunk) {
  return std::string("dp all_gather ") + (forward ? "F " : "B ") + mb_chunk(micro_batch, chunk);
}
inline constexpr const char* kDpPushPull = "dp push_pull";
// MoE (sim/moe.hpp): a slot's expert all-to-alls and expert-tp collectives, in-line on the tp
// stream; the expert gradients' reduction over the expert-data-parallel group on the dp stream.
inline constexpr const char* kEpAllToAll = "ep all-to-all";
inline constexpr const char* kEdpGradients = "edp expert gradients";
// Context parallelism (sim/context_parallel.hpp): a slot's KV-ring hops on the tp stream (no cp
// stream yet), beside its attention blocks on the compute stream.
inline constexpr const char* kCpRing = "cp kv ring";
// CpComm::all_gather's collectives, in-line: K and V gathered, in backward dK, dV reduce-scattered.
inline constexpr const char* kCpAllGather = "cp kv all-gather, dkv reduce-scatter";

// Offload, on the "host link" stream: a slot's copies "host copy F mb3 c0" / "host copy B mb3 c0"
// (both directions), per step "host to_host gradients" and "host to_device weights" around the
// CPU's "cpu optimizer".
inline std::string host_copy(bool forward, int64_t micro_batch, int64_t chunk) {
  return std::string("host copy ") + (forward ? "F " : "B ") + mb_chunk(micro_batch, chunk);
}
inline constexpr const char* kHostGradients = "host to_host gradients";
inline constexpr const char* kHostWeights = "host to_device weights";
inline constexpr const char* kCpuOptimizer = "cpu optimizer";

inline std::string pp_send(bool forward, int64_t micro_batch) {
  return std::string("pp send ") + (forward ? "F" : "B") + " mb" + std::to_string(micro_batch);
}
inline std::string pp_recv(bool forward, int64_t micro_batch) {
  return std::string("pp recv ") + (forward ? "F" : "B") + " mb" + std::to_string(micro_batch);
}

}  // namespace loom::trace_names
