#include "executor/cuda/staged_comm.hpp"

#include <chrono>
#include <string>

namespace loom::exec {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

// The compute stream drained (the buffer holds what it wrote), then a synchronous copy.
Status StagedComm::to_host(void* host, const void* device, int64_t bytes, const char* what) {
  const auto t0 = Clock::now();
  cudaError_t e = cudaStreamSynchronize(compute_);
  if (e == cudaSuccess) e = cudaMemcpy(host, device, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost);
  staging_.copy_s += since(t0);
  staging_.copied_bytes += bytes;
  if (e != cudaSuccess)
    return make_error("rank " + std::to_string(rank()), std::string(what) + ": device to host staging: " + cudaGetErrorString(e));
  return ok_status();
}

Status StagedComm::to_device(void* device, const void* host, int64_t bytes, const char* what) {
  const auto t0 = Clock::now();
  const cudaError_t e = cudaMemcpy(device, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice);
  staging_.copy_s += since(t0);
  staging_.copied_bytes += bytes;
  if (e != cudaSuccess)
    return make_error("rank " + std::to_string(rank()), std::string(what) + ": host to device staging: " + cudaGetErrorString(e));
  return ok_status();
}

// data[0, n) to the host, `on_host(host copy)` there, and back.
template <class T, class F>
Status StagedComm::staged(T* data, int64_t n, const char* what, F&& on_host) {
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  buffer_.resize(static_cast<size_t>(bytes));
  T* h = reinterpret_cast<T*>(buffer_.data());
  if (auto st = to_host(h, data, bytes, what); !st) return st;
  if (auto st = on_host(h); !st) return st;
  return to_device(data, h, bytes, what);
}

Status StagedComm::all_reduce(const Group& g, float* data, int64_t n, ReduceOp op) {
  if (g.size() <= 1) return ok_status();
  return staged(data, n, "all_reduce", [&](float* h) { return host_.all_reduce(g, h, n, op); });
}
Status StagedComm::all_reduce(const Group& g, double* data, int64_t n, ReduceOp op) {
  if (g.size() <= 1) return ok_status();
  return staged(data, n, "all_reduce", [&](double* h) { return host_.all_reduce(g, h, n, op); });
}
Status StagedComm::reduce_scatter(const Group& g, float* data, int64_t n) {
  if (g.size() <= 1) return ok_status();
  return staged(data, n, "reduce_scatter", [&](float* h) { return host_.reduce_scatter(g, h, n); });
}
Status StagedComm::all_gather(const Group& g, float* data, int64_t n) {
  if (g.size() <= 1) return ok_status();
  return staged(data, n, "all_gather", [&](float* h) { return host_.all_gather(g, h, n); });
}

// Both sides staged: every block to the host, the host all-to-all, every block back.
Status StagedComm::all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                              const std::vector<int64_t>& recv_bytes) {
  int64_t sbytes = 0, rbytes = 0;
  for (int64_t b : send_bytes) sbytes += b;
  for (int64_t b : recv_bytes) rbytes += b;
  std::vector<char> out(static_cast<size_t>(sbytes)), in(static_cast<size_t>(rbytes));
  if (auto st = to_host(out.data(), send, sbytes, "all_to_all"); !st) return st;
  if (auto st = host_.all_to_all(g, out.data(), send_bytes, in.data(), recv_bytes); !st) return st;
  return to_device(recv, in.data(), rbytes, "all_to_all");
}

// The bytes are copied out at once, so the device buffer may be reused before the send completes.
Expected<int> StagedComm::isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) {
  std::vector<char> out(static_cast<size_t>(bytes));
  if (auto st = to_host(out.data(), data, bytes, "pipeline send"); !st) return st.error();
  auto r = host_.isend(to, out.data(), bytes, tag, kind);
  if (!r) return r.error();
  sends_[*r] = std::move(out);  // the vector's storage does not move with it
  return r;
}

Status StagedComm::wait(int request, const char* what) {
  auto st = host_.wait(request, what);
  sends_.erase(request);
  return st;
}

Status StagedComm::recv(int from, void* data, int64_t bytes, int tag, const char* what) {
  buffer_.resize(static_cast<size_t>(bytes));
  if (auto st = host_.recv(from, buffer_.data(), bytes, tag, what); !st) return st;
  return to_device(data, buffer_.data(), bytes, what);
}

}  // namespace loom::exec
