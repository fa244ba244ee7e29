#include "executor/comm.hpp"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

namespace loom::exec {

namespace {

int64_t chunk_len(int64_t n, int g) { return (n + g - 1) / g; }
int64_t chunk_begin(int64_t n, int g, int i) { return std::min<int64_t>(n, i * chunk_len(n, g)); }
int64_t chunk_end(int64_t n, int g, int i) { return std::min<int64_t>(n, (i + 1) * chunk_len(n, g)); }
int mod(int a, int g) { return ((a % g) + g) % g; }

// Tags of collectives, one per group kind, apart from pipeline p2p tags (>= 1000). Two ranks share
// at most one group of each kind, and every member issues the group's collectives in the same
// order, so FIFO matching per (peer, tag) pairs them correctly.
int collective_tag(GroupKind k) { return 10 + static_cast<int>(k); }

}  // namespace

// Ring reduce-scatter (Patarasuk & Yuan 2009): in step k, rank i sends chunk (i-k-1) to its right
// neighbour and adds chunk (i-k-2) received from its left one; after g-1 steps chunk i is
// complete. Each chunk is summed in one fixed order (starting at rank i+1), so the result is the
// same bits on every run.
template <class T>
Status RingComm::ring_reduce_scatter(const Group& g, T* data, int64_t n, ReduceOp op, const char* what) {
  const int G = g.size(), i = g.index;
  if (G <= 1) return ok_status();
  const int right = g.ranks[mod(i + 1, G)], left = g.ranks[mod(i - 1, G)];
  staging_.resize(static_cast<size_t>(chunk_len(n, G)) * sizeof(T));
  T* in = reinterpret_cast<T*>(staging_.data());
  for (int k = 0; k < G - 1; ++k) {
    const int s = mod(i - k - 1, G), r = mod(i - k - 2, G);
    const int64_t sb = chunk_begin(n, G, s), sn = chunk_end(n, G, s) - sb;
    const int64_t rb = chunk_begin(n, G, r), rn = chunk_end(n, G, r) - rb;
    auto st = exchange(right, data + sb, sn * static_cast<int64_t>(sizeof(T)), left, in,
                       rn * static_cast<int64_t>(sizeof(T)), collective_tag(g.kind),
                       std::string(what) + " on the " + group_name(g.kind) + " group");
    if (!st) return st;
    counters_.add(g.kind, what, sn * static_cast<int64_t>(sizeof(T)));
    T* acc = data + rb;
    if (op == ReduceOp::sum) {
      for (int64_t j = 0; j < rn; ++j) acc[j] = in[j] + acc[j];
    } else {
      for (int64_t j = 0; j < rn; ++j) acc[j] = std::max(in[j], acc[j]);
    }
  }
  return ok_status();
}

// Ring all-gather: in step k, rank i forwards chunk (i-k) and receives chunk (i-k-1).
template <class T>
Status RingComm::ring_all_gather(const Group& g, T* data, int64_t n, const char* what) {
  const int G = g.size(), i = g.index;
  if (G <= 1) return ok_status();
  const int right = g.ranks[mod(i + 1, G)], left = g.ranks[mod(i - 1, G)];
  for (int k = 0; k < G - 1; ++k) {
    const int s = mod(i - k, G), r = mod(i - k - 1, G);
    const int64_t sb = chunk_begin(n, G, s), sn = chunk_end(n, G, s) - sb;
    const int64_t rb = chunk_begin(n, G, r), rn = chunk_end(n, G, r) - rb;
    auto st = exchange(right, data + sb, sn * static_cast<int64_t>(sizeof(T)), left, data + rb,
                       rn * static_cast<int64_t>(sizeof(T)), collective_tag(g.kind),
                       std::string(what) + " on the " + group_name(g.kind) + " group");
    if (!st) return st;
    counters_.add(g.kind, what, sn * static_cast<int64_t>(sizeof(T)));
  }
  return ok_status();
}

// All-reduce = reduce-scatter + all-gather: 2(n-1) chunks sent, as NCCL's ring.
Status RingComm::all_reduce(const Group& g, float* data, int64_t n, ReduceOp op) {
  if (auto st = ring_reduce_scatter(g, data, n, op, "all_reduce"); !st) return st;
  return ring_all_gather(g, data, n, "all_reduce");
}
Status RingComm::all_reduce(const Group& g, double* data, int64_t n, ReduceOp op) {
  if (auto st = ring_reduce_scatter(g, data, n, op, "all_reduce"); !st) return st;
  return ring_all_gather(g, data, n, "all_reduce");
}
Status RingComm::reduce_scatter(const Group& g, float* data, int64_t n) {
  return ring_reduce_scatter(g, data, n, ReduceOp::sum, "reduce_scatter");
}
Status RingComm::all_gather(const Group& g, float* data, int64_t n) {
  return ring_all_gather(g, data, n, "all_gather");
}

namespace {
std::vector<int64_t> prefix(const std::vector<int64_t>& v) {
  std::vector<int64_t> out(v.size() + 1, 0);
  for (size_t i = 0; i < v.size(); ++i) out[i + 1] = out[i] + v[i];
  return out;
}
}  // namespace

// Pairwise all-to-all (Thakur, Rabenseifner & Gropp 2005, the pairwise-exchange algorithm): in
// step k member i sends its block for i+k and receives the block of i-k.
Status RingComm::all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                            const std::vector<int64_t>& recv_bytes) {
  const int G = g.size(), i = g.index;
  if (static_cast<int>(send_bytes.size()) != G || static_cast<int>(recv_bytes.size()) != G)
    return make_error("all_to_all", "needs one block size per member of the " + std::string(group_name(g.kind)) + " group");
  const auto sd = prefix(send_bytes), rd = prefix(recv_bytes);
  const char* s = static_cast<const char*>(send);
  char* r = static_cast<char*>(recv);
  if (recv_bytes[static_cast<size_t>(i)] != send_bytes[static_cast<size_t>(i)])
    return make_error("all_to_all", "this rank's own block must be as large sent as received");
  std::memcpy(r + rd[static_cast<size_t>(i)], s + sd[static_cast<size_t>(i)], static_cast<size_t>(send_bytes[static_cast<size_t>(i)]));
  for (int k = 1; k < G; ++k) {
    const size_t to = static_cast<size_t>(mod(i + k, G)), from = static_cast<size_t>(mod(i - k, G));
    auto st = exchange(g.ranks[to], s + sd[to], send_bytes[to], g.ranks[from], r + rd[from], recv_bytes[from],
                       collective_tag(g.kind), std::string("all_to_all on the ") + group_name(g.kind) + " group");
    if (!st) return st;
    counters_.add(g.kind, "all_to_all", send_bytes[to]);
  }
  return ok_status();
}

std::vector<RingChunk> ring_sent_chunks(int64_t n, int g, int index, bool all_gather_phase) {
  std::vector<RingChunk> out;
  for (int k = 0; k < g - 1; ++k) {
    const int c = mod(index - k - (all_gather_phase ? 0 : 1), g);
    out.push_back({chunk_begin(n, g, c), chunk_end(n, g, c) - chunk_begin(n, g, c)});
  }
  return out;
}

std::vector<DeviceLink> device_links(const std::vector<Group>& groups, int rank) {
  std::vector<DeviceLink> links;
  for (const Group& g : groups) {
    if (g.size() <= 1) continue;
    links.push_back({group_name(g.kind), g.kind, false, g.ranks, g.index});
    if (g.kind != GroupKind::pp) continue;
    const int P = g.size();
    std::set<std::pair<int, int>> pairs;  // (sender, receiver), ordered: the same on both ends
    for (int step : {1, -1}) {
      const int other = g.ranks[static_cast<size_t>(mod(g.index + step, P))];
      pairs.insert({rank, other});
      pairs.insert({other, rank});
    }
    for (const auto& [a, b] : pairs)
      links.push_back({"pipeline " + std::to_string(a) + "->" + std::to_string(b), GroupKind::pp, true, {a, b},
                       a == rank ? 0 : 1});
  }
  return links;
}

namespace {

class EmulatedComm final : public Comm {
 public:
  EmulatedComm(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp) override {
    copy_ring(g, data, n, false, "all_reduce");
    copy_ring(g, data, n, true, "all_reduce");
    return ok_status();
  }
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp) override {
    copy_ring(g, data, n, false, "all_reduce");
    copy_ring(g, data, n, true, "all_reduce");
    return ok_status();
  }
  Status reduce_scatter(const Group& g, float* data, int64_t n) override {
    copy_ring(g, data, n, false, "reduce_scatter");
    return ok_status();
  }
  Status all_gather(const Group& g, float* data, int64_t n) override {
    copy_ring(g, data, n, true, "all_gather");
    return ok_status();
  }

  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override {
    const auto sd = prefix(send_bytes), rd = prefix(recv_bytes);
    for (size_t j = 0; j < send_bytes.size() && j < recv_bytes.size(); ++j) {
      const int64_t n = std::min(send_bytes[j], recv_bytes[j]);
      char* r = static_cast<char*>(recv) + rd[j];
      std::memcpy(r, static_cast<const char*>(send) + sd[j], static_cast<size_t>(n));
      std::memset(r + n, 0, static_cast<size_t>(recv_bytes[j] - n));
      if (static_cast<int>(j) != g.index) counters_.add(g.kind, "all_to_all", send_bytes[j]);
    }
    return ok_status();
  }

  Expected<int> isend(int, const void* data, int64_t bytes, int, GroupKind kind) override {
    auto& last = last_sent_[bytes];
    last.resize(static_cast<size_t>(bytes));
    std::memcpy(last.data(), data, static_cast<size_t>(bytes));
    counters_.add(kind, "send", bytes);
    return -1;
  }
  Status wait(int, const char*) override { return ok_status(); }
  Status recv(int, void* data, int64_t bytes, int, const char*) override {
    auto it = last_sent_.find(bytes);
    if (it != last_sent_.end()) {
      std::memcpy(data, it->second.data(), static_cast<size_t>(bytes));
    } else {
      std::memset(data, 0, static_cast<size_t>(bytes));
    }
    return ok_status();
  }
  Status barrier() override { return ok_status(); }

 private:
  template <class T>
  void copy_ring(const Group& g, const T* data, int64_t n, bool all_gather_phase, const char* what) {
    if (g.size() <= 1) return;
    for (const RingChunk& c : ring_sent_chunks(n, g.size(), g.index, all_gather_phase)) {
      const size_t bytes = static_cast<size_t>(c.size) * sizeof(T);
      if (staging_.size() < bytes) staging_.resize(bytes);
      std::memcpy(staging_.data(), data + c.begin, bytes);
      counters_.add(g.kind, what, static_cast<int64_t>(bytes));
    }
  }

  int rank_, world_;
  std::vector<char> staging_;
  std::map<int64_t, std::vector<char>> last_sent_;  // by size
};

}  // namespace

std::unique_ptr<Comm> make_emulated_comm(int rank, int world) { return std::make_unique<EmulatedComm>(rank, world); }

}  // namespace loom::exec
