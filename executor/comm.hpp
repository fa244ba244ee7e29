// Communication behind one narrow interface, so a backend can change without touching the
// trainer (as ASTRA-sim keeps its network behind one): ring collectives on a
// group (all_reduce, reduce_scatter, all_gather), point-to-point send/recv and barrier. The ring
// algorithms live here, on top of three primitives a backend provides (MpiComm: Open MPI
// point-to-point), so the bytes counted are the bytes really sent, and they follow
// sim/collectives.hpp's convention: a buffer of S bytes over n ranks is cut in n chunks of
// ceil(S/n); reduce-scatter and all-gather send n-1 chunks, all-reduce 2(n-1).
//
// Every wait has a deadline: a peer that died or stalled makes the caller return an error
// naming the group, the peer and the operation instead of hanging (executor/comm_mpi.cpp
// applies --timeout-s; tests/executor/test_parallel.cpp kills and stalls ranks to check it).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sim/expected.hpp"

namespace loom::exec {

// MoE layers (sim/rank_grid.hpp's ExpertGrid): ep, the group tokens are dispatched over by
// all-to-all; etp, the group an expert's FFN is split over; edp, the expert-data-parallel group
// expert gradients are summed over. cp: context parallelism's ring of K and V blocks
// (executor/cpu/ring_attention.hpp).
enum class GroupKind : int { tp = 0, dp = 1, pp = 2, world = 3, ep = 4, etp = 5, edp = 6, cp = 7 };
inline constexpr int kGroupKinds = 8;
inline const char* group_name(GroupKind k) {
  static const char* names[] = {"tp", "dp", "pp", "world", "ep", "etp", "edp", "cp"};
  return names[static_cast<int>(k)];
}

// A process group: world ranks in group order (RankGrid::group), and this rank's index in it.
struct Group {
  GroupKind kind = GroupKind::world;
  std::vector<int> ranks;
  int index = 0;
  int size() const { return static_cast<int>(ranks.size()); }
};

enum class ReduceOp { sum, max };

// Bytes this rank sent, by group kind and by "kind.collective" (e.g. "tp.all_reduce").
struct CommCounters {
  std::array<int64_t, kGroupKinds> by_group{};
  std::map<std::string, int64_t> by_collective;
  void add(GroupKind g, const char* what, int64_t bytes) {
    by_group[static_cast<int>(g)] += bytes;
    by_collective[std::string(group_name(g)) + "." + what] += bytes;
  }
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;

  // In place over data[0, n). Chunk i = [i*c, min((i+1)*c, n)), c = ceil(n/g).
  virtual Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp op = ReduceOp::sum) = 0;
  virtual Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp op = ReduceOp::sum) = 0;
  // In place: afterwards chunk g.index of data holds the sum over the group; others are garbage.
  virtual Status reduce_scatter(const Group& g, float* data, int64_t n) = 0;
  // In place: chunk g.index of data is this rank's; afterwards every chunk is filled.
  virtual Status all_gather(const Group& g, float* data, int64_t n) = 0;

  // All-to-all with a block per member (MPI_Alltoallv): block j of `send` (send_bytes[j] bytes,
  // blocks back to back in group order) goes to member j, and block j of `recv` (recv_bytes[j])
  // comes from member j; the caller knows recv_bytes (a MoE layer exchanges the counts first).
  // Pairwise exchange: in step k = 1..g-1 member i sends to i+k and receives from i-k, so every
  // pair meets once; the bytes counted are the blocks sent to others (the own block is copied).
  virtual Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                            const std::vector<int64_t>& recv_bytes) = 0;

  // Point-to-point between world ranks (pipeline activations and gradients). isend returns a
  // handle to wait on before the buffer is reused; recv blocks (with the deadline).
  virtual Expected<int> isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) = 0;
  virtual Status wait(int request, const char* what) = 0;
  virtual Status recv(int from, void* data, int64_t bytes, int tag, const char* what) = 0;
  virtual Status barrier() = 0;

  virtual const CommCounters& counters() const { return counters_; }
  virtual void reset_counters() { counters_ = {}; }

 protected:
  CommCounters counters_;
};

// The ring algorithms over one primitive a transport provides (exchange), so the bytes counted
// are the bytes really sent.
class RingComm : public Comm {
 public:
  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Status reduce_scatter(const Group& g, float* data, int64_t n) override;
  Status all_gather(const Group& g, float* data, int64_t n) override;
  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override;

 protected:
  // Send `sbytes` to world rank `to` and receive `rbytes` from `from` concurrently.
  virtual Status exchange(int to, const void* s, int64_t sbytes, int from, void* r, int64_t rbytes, int tag,
                          const std::string& what) = 0;

 private:
  template <class T>
  Status ring_reduce_scatter(const Group& g, T* data, int64_t n, ReduceOp op, const char* what);
  template <class T>
  Status ring_all_gather(const Group& g, T* data, int64_t n, const char* what);
  std::vector<char> staging_;  // one chunk being received (op scratch, at most ceil(n/g))
};

// The chunks rank `index` of a ring of `g` sends, in order: reduce-scatter step k sends chunk
// index-k-1, all-gather step k chunk index-k (Patarasuk & Yuan 2009; NCCL's ring).
struct RingChunk {
  int64_t begin = 0, size = 0;  // elements
};
std::vector<RingChunk> ring_sent_chunks(int64_t n, int g, int index, bool all_gather_phase);

// The communicators a device backend (NCCL, executor/cuda/nccl_comm.hpp) builds on one rank:
// one per group of two or more ranks, and for the pipeline group one per directed link between
// this stage and each neighbour (i to i+1 and i-1, wrapping around: every pipeline transfer the
// schedules make, sim/schedule.hpp's slot_destination, is between neighbours). ranks[0] draws
// the link's bootstrap id and sends it to the others over MPI with bootstrap_tag; every member
// computes the same link (ranks in the same order), which the bootstrap relies on.
struct DeviceLink {
  std::string name;  // "tp", "dp", "pp", "world" or "pipeline 3->5"
  GroupKind kind = GroupKind::world;
  bool p2p = false;        // a directed pipeline link: ranks = {sender, receiver}
  std::vector<int> ranks;  // world ranks in communicator order
  int index = 0;           // this rank's
};
std::vector<DeviceLink> device_links(const std::vector<Group>& groups, int rank);
// Host tags of the bootstrap messages: apart from the collectives' (10..17), the trace's (900)
// and the pipeline's (>= 1000); one per group kind, and one for pipeline links (between two
// ranks the two directions have different senders).
inline int bootstrap_tag(const DeviceLink& l) { return 800 + (l.p2p ? kGroupKinds : static_cast<int>(l.kind)); }

// `loom execute --emulate-rank r`: rank r of a plan larger than the machine, alone. Collectives
// and point-to-point become local copies of the bytes this rank would send (each chunk copied
// through a staging buffer, so the memory traffic is the same size), counted exactly as the ring
// counts them; the data is left as it was (a partial sum stands in for the sum, so the numbers
// stay finite but are not the model's). all_to_all receives from each member what this rank sent
// it (as if every peer routed alike), cut or zero-padded to the size expected. recv copies the last message this rank sent of the same
// size (activations of the right shape), or zeros.
std::unique_ptr<Comm> make_emulated_comm(int rank, int world);

struct MpiOptions {
  double timeout_s = 60;  // longest wait on any one message before giving up
};

// Initialises MPI (once per process); errors come back as values (MPI_ERRORS_RETURN).
Expected<std::unique_ptr<Comm>> make_mpi_comm(int* argc, char*** argv, const MpiOptions& options);
// Ends the job from this rank: MPI_Abort with `code` (the others are killed by mpirun).
[[noreturn]] void mpi_abort(int code);
void mpi_finalize();

}  // namespace loom::exec
