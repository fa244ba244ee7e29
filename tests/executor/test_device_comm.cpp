// The device-buffer comms against the host ring, under mpirun on a GPU machine (CTest label gpu,
// which CI skips): `mpirun -np 2 loom_device_comm_test`. Every rank runs the same collectives and
// pipeline transfers on device buffers through the shared-GPU comm (staged_comm.hpp) and, where
// there is a GPU per rank, NCCL (nccl_comm.hpp), and checks the results element by element against
// the sums they must equal (exact: small integers in fp32) and the bytes counted against the
// ring's own count. Prints one line per check; exit 0 when all pass.
#include <cuda_runtime.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "executor/cuda/staged_comm.hpp"
#ifdef LOOM_WITH_NCCL
#include "executor/cuda/nccl_comm.hpp"
#endif

using namespace loom;
using namespace loom::exec;

namespace {

int failures = 0;

void check(bool ok, int rank, const std::string& what) {
  if (!ok) ++failures;
  std::printf("rank %d: %s: %s\n", rank, what.c_str(), ok ? "ok" : "FAILED");
}

std::vector<float> device_round(Comm& c, const std::vector<float>& in, const std::function<Status(float*)>& op,
                                std::string& error) {
  float* d = nullptr;
  std::vector<float> out(in.size());
  cudaMalloc(&d, in.size() * sizeof(float));
  cudaMemcpy(d, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
  if (auto st = op(d); !st) error = st.error().message;
  cudaMemcpy(out.data(), d, in.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
  (void)c;
  return out;
}

// Element i of rank r's input: r * 1000 + i; sums over W ranks are exact in fp32.
std::vector<float> input(int rank, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(rank * 1000 + i);
  return v;
}
float sum_over(int world, int64_t i) { return static_cast<float>(1000 * world * (world - 1) / 2 + world * i); }

void collectives(Comm& c, const Group& g, const std::string& name) {
  const int W = g.size(), r = g.index;
  for (int64_t n : {int64_t{3} * W, int64_t{3} * W + 1}) {  // equal chunks, and a short last one
    const int64_t chunk = (n + W - 1) / W, lo = std::min(n, r * chunk), hi = std::min(n, (r + 1) * chunk);
    std::string err;
    auto ar = device_round(c, input(r, n), [&](float* d) { return c.all_reduce(g, d, n); }, err);
    bool ok = err.empty();
    for (int64_t i = 0; i < n; ++i) ok = ok && ar[static_cast<size_t>(i)] == sum_over(W, i);
    check(ok, r, name + " all_reduce n=" + std::to_string(n) + " " + err);
    err.clear();
    auto rs = device_round(c, input(r, n), [&](float* d) { return c.reduce_scatter(g, d, n); }, err);
    ok = err.empty();
    for (int64_t i = lo; i < hi; ++i) ok = ok && rs[static_cast<size_t>(i)] == sum_over(W, i);
    check(ok, r, name + " reduce_scatter n=" + std::to_string(n) + " " + err);
    err.clear();
    std::vector<float> mine(static_cast<size_t>(n), -1.0f);
    for (int64_t i = lo; i < hi; ++i) mine[static_cast<size_t>(i)] = static_cast<float>(i);
    auto ag = device_round(c, mine, [&](float* d) { return c.all_gather(g, d, n); }, err);
    ok = err.empty();
    for (int64_t i = 0; i < n; ++i) ok = ok && ag[static_cast<size_t>(i)] == static_cast<float>(i);
    check(ok, r, name + " all_gather n=" + std::to_string(n) + " " + err);
  }
}

// Each rank sends to the next (a pipeline's forward link) and receives from the previous.
void pipeline(Comm& c, const Group& g, const std::string& name) {
  const int W = g.size(), r = g.index, n = 4096;
  const int to = g.ranks[static_cast<size_t>((r + 1) % W)], from = g.ranks[static_cast<size_t>((r + W - 1) % W)];
  float *s = nullptr, *d = nullptr;
  cudaMalloc(&s, n * sizeof(float));
  cudaMalloc(&d, n * sizeof(float));
  const std::vector<float> v = input(r, n);
  cudaMemcpy(s, v.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  std::string err;
  auto req = c.isend(to, s, n * 4, 1000 + r, GroupKind::pp);
  if (!req) err = req.error().message;
  if (auto st = c.recv(from, d, n * 4, 1000 + (r + W - 1) % W, "test receive"); !st) err += st.error().message;
  if (req)
    if (auto st = c.wait(*req, "test send"); !st) err += st.error().message;
  std::vector<float> got(n);
  cudaMemcpy(got.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  check(err.empty() && got == input((r + W - 1) % W, n), r, name + " send/recv " + err);
  cudaFree(s);
  cudaFree(d);
}

}  // namespace

int main(int argc, char** argv) {
  auto host = make_mpi_comm(&argc, &argv, {30});
  if (!host) {
    std::fprintf(stderr, "loom: %s\n", host.error().message.c_str());
    return 2;
  }
  Comm& h = **host;
  const int rank = h.rank(), world = h.world();
  int devices = 0;
  cudaGetDeviceCount(&devices);
  if (devices == 0) {
    std::fprintf(stderr, "loom: no GPU\n");
    return 2;
  }
  cudaSetDevice(rank % devices);
  Group g{GroupKind::pp, {}, rank};
  for (int r = 0; r < world; ++r) g.ranks.push_back(r);
  {
    StagedComm staged(h, nullptr);
    collectives(staged, g, "staged");
    pipeline(staged, g, "staged");
    std::printf("rank %d: staged: %.6f s in copies, %lld bytes\n", rank, staged.staging().copy_s,
                static_cast<long long>(staged.staging().copied_bytes));
  }
#ifdef LOOM_WITH_NCCL
  if (devices >= world) {  // NCCL refuses two ranks on one GPU
    h.reset_counters();
    auto nccl = make_nccl_comm(h, {g}, {30, rank % devices, nullptr});
    if (!nccl) {
      check(false, rank, "nccl init: " + nccl.error().message);
    } else {
      collectives(**nccl, g, "nccl");
      pipeline(**nccl, g, "nccl");
    }
  } else if (rank == 0) {
    std::printf("nccl: skipped (%d GPUs for %d ranks)\n", devices, world);
  }
#endif
  mpi_finalize();
  return failures == 0 ? 0 : 1;
}
