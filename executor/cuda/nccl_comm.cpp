#include "executor/cuda/nccl_comm.hpp"

#include <nccl.h>

#include <chrono>
#include <string>
#include <thread>
#include <utility>

namespace loom::exec {

namespace {

using Clock = std::chrono::steady_clock;

// One NCCL communicator: a group, or a directed pipeline link (comm.hpp's DeviceLink).
struct Link : DeviceLink {
  ncclUniqueId id{};
  ncclComm_t comm = nullptr;
};

std::string ranks_text(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ",") + std::to_string(r);
  return s;
}

// "rank R" (appended, not prepended: GCC 12 warns falsely on "literal" + std::string at -O3).
std::string rank_name(int rank) {
  std::string s = "rank ";
  s += std::to_string(rank);
  return s;
}

Error link_error(int rank, const Link& l, const std::string& op, const std::string& why) {
  std::string text = "NCCL ";
  text += op;
  text += " on the ";
  text += l.name;
  text += " group (ranks ";
  text += ranks_text(l.ranks);
  text += "): ";
  text += why;
  return make_error(rank_name(rank), text);
}

Error cuda_error(int rank, const std::string& op, cudaError_t e) {
  return make_error(rank_name(rank), op + ": " + cudaGetErrorString(e));
}

std::vector<Link> plan_links(const std::vector<Group>& groups, int rank) {
  std::vector<Link> links;
  for (DeviceLink& d : device_links(groups, rank)) {
    links.emplace_back();
    static_cast<DeviceLink&>(links.back()) = std::move(d);
  }
  return links;
}

// Each link's first rank draws its unique id and sends it to the others over the host comm.
Status exchange_ids(Comm& host, std::vector<Link>& links) {
  std::vector<int> requests;
  for (Link& l : links) {
    if (l.index != 0) continue;
    if (ncclResult_t r = ncclGetUniqueId(&l.id); r != ncclSuccess)
      return link_error(host.rank(), l, "ncclGetUniqueId", ncclGetErrorString(r));
    for (size_t i = 1; i < l.ranks.size(); ++i) {
      auto req = host.isend(l.ranks[i], &l.id, sizeof(l.id), bootstrap_tag(l), GroupKind::world);
      if (!req) return req.error();
      requests.push_back(*req);
    }
  }
  for (Link& l : links)
    if (l.index != 0)
      if (auto st = host.recv(l.ranks[0], &l.id, sizeof(l.id), bootstrap_tag(l), "NCCL bootstrap (unique id)"); !st)
        return st;
  for (int r : requests)
    if (auto st = host.wait(r, "NCCL bootstrap (unique id)"); !st) return st;
  return ok_status();
}

// Polls a nonblocking communicator until `done` says its operation finished, an error, or the
// deadline (then the communicator is aborted).
template <class Done>
Status poll_link(Link& l, int rank, const std::string& op, double timeout_s, Done&& done) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (int spins = 0;; ++spins) {
    ncclResult_t async = ncclSuccess;
    if (ncclResult_t r = ncclCommGetAsyncError(l.comm, &async); r != ncclSuccess)
      return link_error(rank, l, op, ncclGetErrorString(r));
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(l.comm);
      l.comm = nullptr;
      return link_error(rank, l, op, std::string(ncclGetErrorString(async)) + " (communicator aborted)");
    }
    if (async == ncclSuccess) {
      const cudaError_t q = done();
      if (q == cudaSuccess) return ok_status();
      if (q != cudaErrorNotReady) return link_error(rank, l, op, cudaGetErrorString(q));
    }
    if (Clock::now() > deadline) {
      ncclCommAbort(l.comm);
      l.comm = nullptr;
      return link_error(rank, l, op, "no progress for " + std::to_string(static_cast<int>(timeout_s)) +
                                         " s; a peer rank has probably died or stalled (communicator aborted)");
    }
    if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(spins > 4096 ? 200 : 5));
  }
}

// Every communicator started without blocking (so no rank waits on another's order), then all
// awaited against one deadline.
Status init_links(std::vector<Link>& links, int rank, double timeout_s) {
  for (Link& l : links) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r =
        ncclCommInitRankConfig(&l.comm, static_cast<int>(l.ranks.size()), l.id, l.index, &config);
    if (r != ncclSuccess && r != ncclInProgress) return link_error(rank, l, "ncclCommInitRankConfig", ncclGetErrorString(r));
  }
  for (Link& l : links)
    if (auto st = poll_link(l, rank, "init", timeout_s, [] { return cudaSuccess; }); !st) return st;
  return ok_status();
}

enum class Coll { all_reduce, reduce_scatter, all_gather };

template <class T>
ncclDataType_t nccl_type();
template <>
ncclDataType_t nccl_type<float>() { return ncclFloat32; }
template <>
ncclDataType_t nccl_type<double>() { return ncclFloat64; }

// One send still in flight: its tag (sent ahead of the payload) and the event after it.
struct SendRequest {
  Link* link = nullptr;
  int to = -1;
  int64_t tag = 0;  // host copy, alive until the send completes
  int64_t* d_tag = nullptr;
  cudaEvent_t done = nullptr;
  bool active = false;
};

class NcclComm final : public Comm {
 public:
  NcclComm(Comm& host, const NcclOptions& o) : host_(host), options_(o), rank_(host.rank()), world_(host.world()) {}
  ~NcclComm() override;
  Status start(std::vector<Link> links);

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp op) override {
    return collective(g, data, n, Coll::all_reduce, op);
  }
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp op) override {
    return collective(g, data, n, Coll::all_reduce, op);
  }
  Status reduce_scatter(const Group& g, float* data, int64_t n) override {
    return collective(g, data, n, Coll::reduce_scatter, ReduceOp::sum);
  }
  Status all_gather(const Group& g, float* data, int64_t n) override {
    return collective(g, data, n, Coll::all_gather, ReduceOp::sum);
  }
  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override;
  Expected<int> isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) override;
  Status wait(int request, const char* what) override;
  Status recv(int from, void* data, int64_t bytes, int tag, const char* what) override;
  Status barrier() override { return host_.barrier(); }

 private:
  template <class T>
  Status collective(const Group& g, T* data, int64_t n, Coll c, ReduceOp op);
  template <class T>
  ncclResult_t enqueue(Coll c, T* buf, int64_t n, int64_t chunk, int index, ReduceOp op, ncclComm_t comm);
  void count(const Group& g, int64_t n, int64_t elem_bytes, Coll c);
  Status after_compute(cudaStream_t s);
  Expected<void*> scratch(int64_t bytes);
  Link* group_link(const Group& g);
  Link* pipe(int from, int to);
  Expected<int> free_request();

  Comm& host_;
  NcclOptions options_;
  int rank_ = 0, world_ = 1;
  std::vector<Link> links_;
  cudaStream_t stream_ = nullptr, send_stream_ = nullptr, recv_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  void* scratch_ = nullptr;
  int64_t scratch_bytes_ = 0;
  int64_t* recv_tag_ = nullptr;
  std::vector<std::unique_ptr<SendRequest>> requests_;
};

Status NcclComm::start(std::vector<Link> links) {
  if (cudaError_t e = cudaSetDevice(options_.device); e != cudaSuccess) return cuda_error(rank_, "cudaSetDevice", e);
  for (cudaStream_t* s : {&stream_, &send_stream_, &recv_stream_})
    if (cudaError_t e = cudaStreamCreateWithFlags(s, cudaStreamNonBlocking); e != cudaSuccess)
      return cuda_error(rank_, "NCCL stream", e);
  if (cudaError_t e = cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming); e != cudaSuccess)
    return cuda_error(rank_, "NCCL event", e);
  if (cudaError_t e = cudaMalloc(&recv_tag_, sizeof(int64_t)); e != cudaSuccess)
    return cuda_error(rank_, "NCCL receive tag", e);
  links_ = std::move(links);
  if (auto st = exchange_ids(host_, links_); !st) return st;
  return init_links(links_, rank_, options_.timeout_s);
}

NcclComm::~NcclComm() {
  // Each communicator flushed and released; one that does not finish in time is aborted.
  for (Link& l : links_) {
    if (!l.comm) continue;
    ncclResult_t async = ncclCommFinalize(l.comm);
    const auto deadline = Clock::now() + std::chrono::duration<double>(options_.timeout_s);
    while (async == ncclInProgress && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      if (ncclCommGetAsyncError(l.comm, &async) != ncclSuccess) break;
    }
    if (async == ncclSuccess) ncclCommDestroy(l.comm);
    else ncclCommAbort(l.comm);
  }
  for (auto& q : requests_) {
    if (q->done) cudaEventDestroy(q->done);
    if (q->d_tag) cudaFree(q->d_tag);
  }
  for (cudaStream_t s : {stream_, send_stream_, recv_stream_})
    if (s) cudaStreamDestroy(s);
  if (ready_) cudaEventDestroy(ready_);
  if (scratch_) cudaFree(scratch_);
  if (recv_tag_) cudaFree(recv_tag_);
}

// The operation reads what the compute stream wrote: it waits for the work enqueued there.
Status NcclComm::after_compute(cudaStream_t s) {
  if (!options_.compute_stream) return ok_status();
  if (cudaError_t e = cudaEventRecord(ready_, options_.compute_stream); e != cudaSuccess)
    return cuda_error(rank_, "NCCL: ordering after compute", e);
  if (cudaError_t e = cudaStreamWaitEvent(s, ready_, 0); e != cudaSuccess)
    return cuda_error(rank_, "NCCL: ordering after compute", e);
  return ok_status();
}

Expected<void*> NcclComm::scratch(int64_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  if (scratch_) cudaFree(scratch_);
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  if (cudaError_t e = cudaMalloc(&scratch_, static_cast<size_t>(bytes)); e != cudaSuccess)
    return cuda_error(rank_, "NCCL padding buffer of " + std::to_string(bytes) + " bytes", e);
  scratch_bytes_ = bytes;
  return scratch_;
}

Link* NcclComm::group_link(const Group& g) {
  for (Link& l : links_)
    if (!l.p2p && l.kind == g.kind && l.ranks == g.ranks) return &l;
  return nullptr;
}

Link* NcclComm::pipe(int from, int to) {
  for (Link& l : links_)
    if (l.p2p && l.ranks[0] == from && l.ranks[1] == to) return &l;
  return nullptr;
}

// In place, as the ring: reduce-scatter leaves chunk `index` (ceil(n/G) elements, the last one
// short) summed; all-gather fills every chunk from each rank's.
template <class T>
ncclResult_t NcclComm::enqueue(Coll c, T* buf, int64_t n, int64_t chunk, int index, ReduceOp op, ncclComm_t comm) {
  const ncclDataType_t t = nccl_type<T>();
  switch (c) {
    case Coll::all_reduce:
      return ncclAllReduce(buf, buf, static_cast<size_t>(n), t, op == ReduceOp::max ? ncclMax : ncclSum, comm, stream_);
    case Coll::reduce_scatter:
      return ncclReduceScatter(buf, buf + index * chunk, static_cast<size_t>(chunk), t, ncclSum, comm, stream_);
    case Coll::all_gather:
      return ncclAllGather(buf + index * chunk, buf, static_cast<size_t>(chunk), t, comm, stream_);
  }
  return ncclInvalidArgument;
}

// Bytes as the ring sends them (comm.hpp: ring_sent_chunks), so both backends count alike.
void NcclComm::count(const Group& g, int64_t n, int64_t elem_bytes, Coll c) {
  const char* what = c == Coll::all_reduce ? "all_reduce" : c == Coll::reduce_scatter ? "reduce_scatter" : "all_gather";
  for (bool gather_phase : {false, true}) {
    if ((c == Coll::reduce_scatter && gather_phase) || (c == Coll::all_gather && !gather_phase)) continue;
    for (const RingChunk& k : ring_sent_chunks(n, g.size(), g.index, gather_phase))
      counters_.add(g.kind, what, k.size * elem_bytes);
  }
}

template <class T>
Status NcclComm::collective(const Group& g, T* data, int64_t n, Coll c, ReduceOp op) {
  if (g.size() <= 1 || n == 0) return ok_status();
  const char* what = c == Coll::all_reduce ? "all_reduce" : c == Coll::reduce_scatter ? "reduce_scatter" : "all_gather";
  Link* l = group_link(g);
  if (!l) return make_error(rank_name(rank_), std::string(what) + " on the " + group_name(g.kind) +
                                                                  " group: no NCCL communicator was built for it");
  if (!l->comm) return link_error(rank_, *l, what, "the communicator was aborted after an earlier error");
  const int64_t G = g.size(), chunk = (n + G - 1) / G, sz = static_cast<int64_t>(sizeof(T));
  const bool padded = c != Coll::all_reduce && chunk * G != n;  // NCCL wants equal chunks
  if (auto st = after_compute(stream_); !st) return st;
  T* buf = data;
  if (padded) {
    auto s = scratch(chunk * G * sz);
    if (!s) return s.error();
    buf = static_cast<T*>(*s);
    cudaMemsetAsync(buf + n, 0, static_cast<size_t>((chunk * G - n) * sz), stream_);
    cudaMemcpyAsync(buf, data, static_cast<size_t>(n * sz), cudaMemcpyDeviceToDevice, stream_);
  }
  const ncclResult_t r = enqueue(c, buf, n, chunk, g.index, op, l->comm);
  if (r != ncclSuccess && r != ncclInProgress) return link_error(rank_, *l, what, ncclGetErrorString(r));
  if (padded) cudaMemcpyAsync(data, buf, static_cast<size_t>(n * sz), cudaMemcpyDeviceToDevice, stream_);
  cudaStream_t s = stream_;
  if (auto st = poll_link(*l, rank_, what, options_.timeout_s, [s] { return cudaStreamQuery(s); }); !st) return st;
  count(g, n, sz, c);
  return ok_status();
}

// The all-to-all as NCCL's own (nccl-tests' alltoall): one ncclSend and one ncclRecv per peer in
// one group call on the group's communicator; the own block is a device copy.
Status NcclComm::all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                            const std::vector<int64_t>& recv_bytes) {
  const int G = g.size();
  if (static_cast<int>(send_bytes.size()) != G || static_cast<int>(recv_bytes.size()) != G)
    return make_error(rank_name(rank_), "all_to_all: needs one block size per member");
  std::vector<int64_t> sd(static_cast<size_t>(G) + 1, 0), rd(static_cast<size_t>(G) + 1, 0);
  for (size_t j = 0; j < static_cast<size_t>(G); ++j) {
    sd[j + 1] = sd[j] + send_bytes[j];
    rd[j + 1] = rd[j] + recv_bytes[j];
  }
  const char* s = static_cast<const char*>(send);
  char* r = static_cast<char*>(recv);
  const size_t self = static_cast<size_t>(g.index);
  if (auto st = after_compute(stream_); !st) return st;
  cudaMemcpyAsync(r + rd[self], s + sd[self], static_cast<size_t>(send_bytes[self]), cudaMemcpyDeviceToDevice, stream_);
  if (G > 1) {
    Link* l = group_link(g);
    if (!l) return make_error(rank_name(rank_), std::string("all_to_all on the ") + group_name(g.kind) +
                                                    " group: no NCCL communicator was built for it");
    if (!l->comm) return link_error(rank_, *l, "all_to_all", "the communicator was aborted after an earlier error");
    ncclGroupStart();
    for (int j = 0; j < G; ++j) {
      if (j == g.index) continue;
      const size_t u = static_cast<size_t>(j);
      ncclSend(s + sd[u], static_cast<size_t>(send_bytes[u]), ncclInt8, j, l->comm, stream_);
      ncclRecv(r + rd[u], static_cast<size_t>(recv_bytes[u]), ncclInt8, j, l->comm, stream_);
    }
    const ncclResult_t res = ncclGroupEnd();
    if (res != ncclSuccess && res != ncclInProgress) return link_error(rank_, *l, "all_to_all", ncclGetErrorString(res));
    cudaStream_t st = stream_;
    if (auto p = poll_link(*l, rank_, "all_to_all", options_.timeout_s, [st] { return cudaStreamQuery(st); }); !p)
      return p;
    for (int j = 0; j < G; ++j)
      if (j != g.index) counters_.add(g.kind, "all_to_all", send_bytes[static_cast<size_t>(j)]);
    return ok_status();
  }
  if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) return cuda_error(rank_, "all_to_all", e);
  return ok_status();
}

Expected<int> NcclComm::free_request() {
  for (size_t i = 0; i < requests_.size(); ++i)
    if (!requests_[i]->active) return static_cast<int>(i);
  auto q = std::make_unique<SendRequest>();
  if (cudaError_t e = cudaEventCreateWithFlags(&q->done, cudaEventDisableTiming); e != cudaSuccess)
    return cuda_error(rank_, "NCCL send event", e);
  if (cudaError_t e = cudaMalloc(&q->d_tag, sizeof(int64_t)); e != cudaSuccess)
    return cuda_error(rank_, "NCCL send tag", e);
  requests_.push_back(std::move(q));
  return static_cast<int>(requests_.size() - 1);
}

// The tag travels ahead of the payload, both in one group call on the send stream: NCCL pairs a
// link's messages in issue order, so the receiver checks that it got the message it expected.
Expected<int> NcclComm::isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) {
  Link* l = pipe(rank_, to);
  if (!l) return make_error(rank_name(rank_), "send to rank " + std::to_string(to) +
                                                                 ": no NCCL pipeline link to it (links join neighbouring stages)");
  if (!l->comm) return link_error(rank_, *l, "send", "the communicator was aborted after an earlier error");
  auto slot = free_request();
  if (!slot) return slot.error();
  SendRequest& q = *requests_[static_cast<size_t>(*slot)];
  q.tag = tag;
  if (auto st = after_compute(send_stream_); !st) return st.error();
  cudaMemcpyAsync(q.d_tag, &q.tag, sizeof(int64_t), cudaMemcpyHostToDevice, send_stream_);
  ncclGroupStart();
  ncclSend(q.d_tag, 1, ncclInt64, 1, l->comm, send_stream_);
  ncclSend(data, static_cast<size_t>(bytes), ncclInt8, 1, l->comm, send_stream_);
  const ncclResult_t r = ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress) return link_error(rank_, *l, "send", ncclGetErrorString(r));
  if (cudaError_t e = cudaEventRecord(q.done, send_stream_); e != cudaSuccess) return cuda_error(rank_, "NCCL send event", e);
  q.link = l;
  q.to = to;
  q.active = true;
  counters_.add(kind, "send", bytes);
  return *slot;
}

Status NcclComm::wait(int request, const char* what) {
  if (request < 0 || static_cast<size_t>(request) >= requests_.size() || !requests_[static_cast<size_t>(request)]->active)
    return ok_status();
  SendRequest& q = *requests_[static_cast<size_t>(request)];
  q.active = false;
  cudaEvent_t done = q.done;
  return poll_link(*q.link, rank_, std::string(what) + " (send to rank " + std::to_string(q.to) + ")",
                   options_.timeout_s, [done] { return cudaEventQuery(done); });
}

Status NcclComm::recv(int from, void* data, int64_t bytes, int tag, const char* what) {
  Link* l = pipe(from, rank_);
  if (!l) return make_error(rank_name(rank_), std::string(what) + " from rank " + std::to_string(from) +
                                                                 ": no NCCL pipeline link from it (links join neighbouring stages)");
  if (!l->comm) return link_error(rank_, *l, what, "the communicator was aborted after an earlier error");
  if (auto st = after_compute(recv_stream_); !st) return st;
  ncclGroupStart();
  ncclRecv(recv_tag_, 1, ncclInt64, 0, l->comm, recv_stream_);
  ncclRecv(data, static_cast<size_t>(bytes), ncclInt8, 0, l->comm, recv_stream_);
  const ncclResult_t r = ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress) return link_error(rank_, *l, what, ncclGetErrorString(r));
  cudaStream_t s = recv_stream_;
  if (auto st = poll_link(*l, rank_, what, options_.timeout_s, [s] { return cudaStreamQuery(s); }); !st) return st;
  int64_t got = -1;
  if (cudaError_t e = cudaMemcpy(&got, recv_tag_, sizeof(int64_t), cudaMemcpyDeviceToHost); e != cudaSuccess)
    return cuda_error(rank_, what, e);
  if (got != tag)
    return link_error(rank_, *l, what, "received the message tagged " + std::to_string(got) + " where " +
                                           std::to_string(tag) + " was expected: the two stages issued this link's "
                                           "messages in different orders");
  return ok_status();
}

}  // namespace

Expected<std::unique_ptr<Comm>> make_nccl_comm(Comm& host, const std::vector<Group>& groups, const NcclOptions& options) {
  auto comm = std::make_unique<NcclComm>(host, options);
  if (auto st = comm->start(plan_links(groups, host.rank())); !st) return st.error();
  return std::unique_ptr<Comm>(std::move(comm));
}

}  // namespace loom::exec
