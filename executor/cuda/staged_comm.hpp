// Comm on device buffers for several ranks sharing one GPU, where NCCL refuses to run ("Duplicate
// GPU detected"): every transfer is staged through host memory and carried by `host`, the MPI
// ring comm (comm.hpp): the device buffer copied to the host, the host collective or message,
// the result copied back. The simplest correct transport; its copies are the time it adds over a
// direct one, kept apart in staging() so a report can state them. Bytes sent are the host
// comm's own count (the ring's), the same numbers as every other backend.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "executor/comm.hpp"

namespace loom::exec {

struct StagingTotals {
  double copy_s = 0;       // wall time in device <-> host copies (compute stream drained first)
  int64_t copied_bytes = 0;  // both directions
};

class StagedComm final : public Comm {
 public:
  // `compute_stream`: the stream whose work must finish before a buffer is read (nullptr: the
  // legacy default stream).
  StagedComm(Comm& host, cudaStream_t compute_stream) : host_(host), compute_(compute_stream) {}
  int rank() const override { return host_.rank(); }
  int world() const override { return host_.world(); }
  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp op) override;
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp op) override;
  Status reduce_scatter(const Group& g, float* data, int64_t n) override;
  Status all_gather(const Group& g, float* data, int64_t n) override;
  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override;
  Expected<int> isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) override;
  Status wait(int request, const char* what) override;
  Status recv(int from, void* data, int64_t bytes, int tag, const char* what) override;
  Status barrier() override { return host_.barrier(); }
  const CommCounters& counters() const override { return host_.counters(); }
  void reset_counters() override {
    host_.reset_counters();
    staging_ = {};
  }
  const StagingTotals& staging() const { return staging_; }

 private:
  Status to_host(void* host, const void* device, int64_t bytes, const char* what);
  Status to_device(void* device, const void* host, int64_t bytes, const char* what);
  template <class T, class F>
  Status staged(T* data, int64_t n, const char* what, F&& on_host);

  Comm& host_;
  cudaStream_t compute_;
  std::vector<char> buffer_;                 // one collective's or receive's bytes
  std::map<int, std::vector<char>> sends_;   // by request: the bytes until the send completes
  StagingTotals staging_;
};

}  // namespace loom::exec
