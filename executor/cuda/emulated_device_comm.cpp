#include "executor/cuda/emulated_device_comm.hpp"

#include <algorithm>
#include <chrono>
#include <vector>
#include <map>
#include <string>

namespace loom::exec {

namespace {

using Clock = std::chrono::steady_clock;

class DeviceCopies final : public EmulatedDeviceComm {
 public:
  DeviceCopies(int rank, int world, cudaStream_t stream) : rank_(rank), world_(world), s_(stream) {}
  ~DeviceCopies() override {
    cudaFree(staging_);
    for (auto& [bytes, p] : last_sent_) cudaFree(p);
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  double copy_s() const override { return copy_s_; }
  void reset_counters() override {
    Comm::reset_counters();
    copy_s_ = 0;
  }

  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp) override {
    if (auto st = copy_ring(g, data, n, false, "all_reduce"); !st) return st;
    return copy_ring(g, data, n, true, "all_reduce");
  }
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp) override {
    if (auto st = copy_ring(g, data, n, false, "all_reduce"); !st) return st;
    return copy_ring(g, data, n, true, "all_reduce");
  }
  Status reduce_scatter(const Group& g, float* data, int64_t n) override {
    return copy_ring(g, data, n, false, "reduce_scatter");
  }
  Status all_gather(const Group& g, float* data, int64_t n) override {
    return copy_ring(g, data, n, true, "all_gather");
  }
  // Each member's block receives what this rank sent it (as if every peer routed alike), cut or
  // zero-padded to the size expected (make_emulated_comm's rule).
  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override {
    if (static_cast<int>(send_bytes.size()) != g.size() || static_cast<int>(recv_bytes.size()) != g.size())
      return Error{"rank " + std::to_string(rank_) + ": all_to_all (emulated): needs one block size per member"};
    const char* s = static_cast<const char*>(send);
    char* r = static_cast<char*>(recv);
    int64_t so = 0, ro = 0;
    for (int j = 0; j < g.size(); ++j) {
      const size_t u = static_cast<size_t>(j);
      const int64_t n = std::min(send_bytes[u], recv_bytes[u]);
      if (n > 0)
        if (auto st = timed_copy(r + ro, s + so, n, "all_to_all"); !st) return st;
      if (recv_bytes[u] > n && cudaMemsetAsync(r + ro + n, 0, static_cast<size_t>(recv_bytes[u] - n), s_) != cudaSuccess)
        return fail("all_to_all", cudaGetLastError());
      if (j != g.index) counters_.add(g.kind, "all_to_all", send_bytes[u]);
      so += send_bytes[u];
      ro += recv_bytes[u];
    }
    return ok_status();
  }
  Expected<int> isend(int, const void* data, int64_t bytes, int, GroupKind kind) override {
    void*& last = last_sent_[bytes];
    if (last == nullptr && cudaMalloc(&last, static_cast<size_t>(bytes)) != cudaSuccess)
      return fail("pipeline send", cudaGetLastError());
    if (auto st = timed_copy(last, data, bytes, "pipeline send"); !st) return st.error();
    counters_.add(kind, "send", bytes);
    return -1;
  }
  Status wait(int, const char*) override { return ok_status(); }
  Status recv(int, void* data, int64_t bytes, int, const char* what) override {
    auto it = last_sent_.find(bytes);
    if (it != last_sent_.end()) return timed_copy(data, it->second, bytes, what);
    const cudaError_t e = cudaMemsetAsync(data, 0, static_cast<size_t>(bytes), s_);
    return e == cudaSuccess ? ok_status() : fail(what, e);
  }
  Status barrier() override { return ok_status(); }

 private:
  Error fail(const char* what, cudaError_t e) const {
    return Error{"rank " + std::to_string(rank_) + ": " + what + " (emulated): " + cudaGetErrorString(e)};
  }
  Status timed_copy(void* dst, const void* src, int64_t bytes, const char* what) {
    cudaError_t e = cudaStreamSynchronize(s_);  // the compute before the copy is not the copy's
    const auto t0 = Clock::now();
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, s_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s_);
    copy_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
    return e == cudaSuccess ? ok_status() : Status(fail(what, e));
  }
  template <class T>
  Status copy_ring(const Group& g, const T* data, int64_t n, bool all_gather_phase, const char* what) {
    if (g.size() <= 1) return ok_status();
    for (const RingChunk& c : ring_sent_chunks(n, g.size(), g.index, all_gather_phase)) {
      const int64_t bytes = c.size * static_cast<int64_t>(sizeof(T));
      if (bytes > staging_bytes_) {
        cudaFree(staging_);
        staging_ = nullptr;
        staging_bytes_ = 0;
        if (cudaMalloc(&staging_, static_cast<size_t>(bytes)) != cudaSuccess) return fail(what, cudaGetLastError());
        staging_bytes_ = bytes;
      }
      if (auto st = timed_copy(staging_, data + c.begin, bytes, what); !st) return st;
      counters_.add(g.kind, what, bytes);
    }
    return ok_status();
  }

  int rank_, world_;
  cudaStream_t s_;
  void* staging_ = nullptr;
  int64_t staging_bytes_ = 0;
  std::map<int64_t, void*> last_sent_;  // by size
  double copy_s_ = 0;
};

}  // namespace

std::unique_ptr<EmulatedDeviceComm> make_emulated_device_comm(int rank, int world, cudaStream_t stream) {
  return std::make_unique<DeviceCopies>(rank, world, stream);
}

}  // namespace loom::exec
