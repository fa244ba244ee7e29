// The Open MPI backend of Comm: non-blocking point-to-point on MPI_COMM_WORLD, polled against a
// deadline. Errors come back as values (MPI_ERRORS_RETURN); a wait that passes the deadline
// names the peer, the operation and the group, because a peer that died or stalled would
// otherwise hang this rank forever.
#include <dlfcn.h>
#include <mpi.h>

#include <chrono>
#include <thread>

#include "executor/comm.hpp"

namespace loom::exec {

namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

// Open MPI's components (mca_*.so, which MPI_Init dlopens) take the symbols of libmpi and
// libopen-pal from the global scope without linking them (mca_btl_tcp.so names no libopen-pal).
// This code runs inside a module that `loom` dlopens with RTLD_LOCAL (libloom_cpu.so,
// libloom_cuda.so: executor/backend_entry.h), which loads libmpi and its dependencies local too:
// re-open the library that holds MPI_Init with RTLD_GLOBAL (RTLD_NOLOAD: the copy already
// mapped, its dependencies with it) before MPI_Init loads a component. mpi4py does the same.
void make_mpi_symbols_global() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&MPI_Init), &info) != 0 && info.dli_fname != nullptr)
    ::dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

class MpiComm final : public RingComm {
 public:
  explicit MpiComm(const MpiOptions& o) : options_(o) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  Expected<int> isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) override {
    MPI_Request req;
    const int rc = MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, to, tag, MPI_COMM_WORLD, &req);
    if (rc != MPI_SUCCESS) return fail("send to rank " + std::to_string(to), mpi_error(rc));
    counters_.add(kind, "send", bytes);
    for (size_t i = 0; i < requests_.size(); ++i) {
      if (requests_[i] == MPI_REQUEST_NULL) {
        requests_[i] = req;
        peers_[i] = to;
        return static_cast<int>(i);
      }
    }
    requests_.push_back(req);
    peers_.push_back(to);
    return static_cast<int>(requests_.size() - 1);
  }

  Status wait(int request, const char* what) override {
    if (request < 0 || requests_[static_cast<size_t>(request)] == MPI_REQUEST_NULL) return ok_status();
    MPI_Request* r = &requests_[static_cast<size_t>(request)];
    return poll(r, 1, std::string(what) + " (send to rank " + std::to_string(peers_[static_cast<size_t>(request)]) + ")");
  }

  Status recv(int from, void* data, int64_t bytes, int tag, const char* what) override {
    MPI_Request req;
    const int rc = MPI_Irecv(data, static_cast<int>(bytes), MPI_BYTE, from, tag, MPI_COMM_WORLD, &req);
    if (rc != MPI_SUCCESS) return fail(std::string(what), mpi_error(rc));
    return poll(&req, 1, std::string(what) + " (receive from rank " + std::to_string(from) + ")");
  }

  Status barrier() override {
    MPI_Request req;
    const int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
    if (rc != MPI_SUCCESS) return fail("barrier", mpi_error(rc));
    return poll(&req, 1, "barrier");
  }

 protected:
  Status exchange(int to, const void* s, int64_t sbytes, int from, void* r, int64_t rbytes, int tag,
                  const std::string& what) override {
    MPI_Request reqs[2];
    int rc = MPI_Irecv(r, static_cast<int>(rbytes), MPI_BYTE, from, tag, MPI_COMM_WORLD, &reqs[0]);
    if (rc != MPI_SUCCESS) return fail(what, mpi_error(rc));
    rc = MPI_Isend(s, static_cast<int>(sbytes), MPI_BYTE, to, tag, MPI_COMM_WORLD, &reqs[1]);
    if (rc != MPI_SUCCESS) return fail(what, mpi_error(rc));
    return poll(reqs, 2, what + " (ranks " + std::to_string(to) + " and " + std::to_string(from) + ")");
  }

 private:
  Error fail(const std::string& what, const std::string& why) const {
    return make_error("rank " + std::to_string(rank_), what + ": " + why);
  }

  // Spin briefly, then sleep between tests: ranks may outnumber cores (mpirun --oversubscribe).
  Status poll(MPI_Request* reqs, int n, const std::string& what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(options_.timeout_s);
    for (int spins = 0;; ++spins) {
      int done = 0;
      const int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) return fail(what, mpi_error(rc));
      if (done) return ok_status();
      if (spins > 64) {
        if (Clock::now() > deadline) {
          return fail(what, "no progress for " + std::to_string(static_cast<int>(options_.timeout_s)) +
                                " s; a peer rank has probably died or stalled");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(spins > 4096 ? 200 : 5));
      }
    }
  }

  MpiOptions options_;
  int rank_ = 0, world_ = 1;
  std::vector<MPI_Request> requests_;
  std::vector<int> peers_;
};

}  // namespace

Expected<std::unique_ptr<Comm>> make_mpi_comm(int* argc, char*** argv, const MpiOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) make_mpi_symbols_global();
  if (!initialized && MPI_Init(argc, argv) != MPI_SUCCESS) return make_error("MPI", "MPI_Init failed");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::unique_ptr<Comm>(new MpiComm(options));
}

void mpi_abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

void mpi_finalize() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace loom::exec
