// Comm on device buffers through NCCL: what runs on a real cluster, one rank per GPU, across
// nodes. One communicator per group this rank belongs to (tp, dp, pp and the world), plus one per
// directed pipeline link (stage i to its neighbours i+1 and i-1, the wrap-around of interleaved
// schedules included), each bootstrapped by sending ncclUniqueId from the group's first rank to
// the others over `host` (the MPI comm). Collectives run on a stream of their own, after the work
// already enqueued on the compute stream; pipeline transfers are ncclSend/ncclRecv inside
// ncclGroupStart/End on a send and a receive stream. Every call returns when its operation is
// complete (the Comm contract), polling ncclCommGetAsyncError and the stream against a deadline:
// past it the communicator is aborted (ncclCommAbort) and the error names the rank, the group
// and the operation. Bytes are counted as the ring counts them (comm.hpp), so counters compare.
//
// NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): several ranks sharing a device use
// make_staged_comm (staged_comm.hpp) instead.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "executor/comm.hpp"
#include "sim/expected.hpp"

namespace loom::exec {

struct NcclOptions {
  double timeout_s = 60;               // longest wait on one NCCL operation before aborting
  int device = 0;                      // this rank's GPU
  cudaStream_t compute_stream = nullptr;  // each operation starts after the work enqueued here
};

// Collective over every rank of `host`'s world. `groups`: this rank's tp, dp and pp groups
// (RankGrid::group) and the world; the pipeline links are those of the pp group.
Expected<std::unique_ptr<Comm>> make_nccl_comm(Comm& host, const std::vector<Group>& groups, const NcclOptions& options);

}  // namespace loom::exec
