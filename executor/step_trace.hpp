// What one rank did during a step, timed, in the names the simulator gives its tasks
// (sim/trace_names.hpp), so a measured Chrome trace lays over a predicted one and `loom compare`
// matches them by name.
//
// StepRecorder keeps the open compute event (e.g. "F mb3 c0") and the finished ones. TracedComm
// wraps a Comm: every collective or point-to-point call closes the open compute segment, is
// recorded on its stream (tp, dp, dp gather, pp) under the label the trainer gave it, or a
// default from its group, and reopens the compute segment afterwards. On the CPU backend every
// call blocks, so compute and communication never overlap and the categories add up to the step.
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "sim/rank_grid.hpp"
#include "sim/trace_names.hpp"

namespace loom::exec {

struct MeasuredEvent {
  std::string name;
  trace_names::Stream stream = trace_names::Stream::compute;
  double start_s = 0, dur_s = 0;  // from the start of the step
  int64_t micro_batch = -1, chunk = -1;
  int64_t bytes = 0;              // communication: the buffer's size
};

class StepRecorder {
 public:
  using Clock = std::chrono::steady_clock;
  void start_step();  // the origin is now; events are cleared
  // A compute event: segments are cut wherever communication interrupts it.
  void compute_begin(std::string name, int64_t micro_batch = -1, int64_t chunk = -1);
  void compute_end();
  void pause();   // communication starts: close the open compute segment here
  void resume();  // communication ended: the open compute event continues
  void add(MeasuredEvent e) { events_.push_back(std::move(e)); }
  double now_s() const { return std::chrono::duration<double>(Clock::now() - origin_).count(); }
  int64_t micro_batch() const { return open_ ? mb_ : -1; }
  int64_t chunk() const { return open_ ? chunk_ : -1; }
  const std::vector<MeasuredEvent>& events() const { return events_; }

 private:
  void close_segment();
  Clock::time_point origin_ = Clock::now();
  std::vector<MeasuredEvent> events_;
  bool open_ = false, paused_ = false;
  std::string name_;
  int64_t mb_ = -1, chunk_ = -1;
  double seg_start_s_ = 0;
};

// Time by category over one step, and per micro-batch on this rank (the cost model's
// StageEstimate fields): forward, backward and recompute are compute segments; tp, dp and pp the
// blocking communication calls on those groups; optimizer the AdamW step (its ZeRO all-gather
// is dp). other = step less all of them (loss and norm all-reduce, bookkeeping).
struct MeasuredTimes {
  double forward_s = 0, backward_s = 0, recompute_s = 0, optimizer_s = 0;
  double tp_s = 0, tp_grad_sync_s = 0, dp_s = 0, pp_s = 0, world_s = 0;
  double cp_s = 0;  // context parallelism's calls (names "cp ...": the ring's hops, the all-gathers)
  double compute_s() const { return forward_s + backward_s + recompute_s; }
};
MeasuredTimes measured_times(const std::vector<MeasuredEvent>& events);

// The name of SP's per-step all-reduce of replicated parameters' gradients over tp.
inline constexpr const char* kTpGradSync = "tp allreduce replicated grads";
inline constexpr const char* kWorldAllReduce = "world allreduce loss+norm";

class TracedComm final : public Comm {
 public:
  TracedComm(Comm& inner, StepRecorder& rec, bool sequence_parallel)
      : inner_(inner), rec_(rec), sp_(sequence_parallel) {}
  // The name and stream of the next call (else: from its group and operation).
  void label(std::string name, trace_names::Stream stream) {
    label_ = std::move(name);
    label_stream_ = stream;
  }
  Comm& inner() { return inner_; }

  int rank() const override { return inner_.rank(); }
  int world() const override { return inner_.world(); }
  Status all_reduce(const Group& g, float* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Status all_reduce(const Group& g, double* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Status reduce_scatter(const Group& g, float* data, int64_t n) override;
  Status all_gather(const Group& g, float* data, int64_t n) override;
  Status all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override;
  Expected<int> isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) override;
  Status wait(int request, const char* what) override;
  Status recv(int from, void* data, int64_t bytes, int tag, const char* what) override;
  Status barrier() override { return inner_.barrier(); }
  const CommCounters& counters() const override { return inner_.counters(); }
  void reset_counters() override { inner_.reset_counters(); }

 private:
  template <class F>
  auto timed(const Group* g, const char* op, int64_t bytes, F&& f) -> decltype(f());
  Comm& inner_;
  StepRecorder& rec_;
  bool sp_;
  std::string label_;
  trace_names::Stream label_stream_ = trace_names::Stream::compute;
  std::map<int, std::string> send_names_;  // by request: the label given at isend
};

// One rank's events as the Chrome trace events of `loom simulate --trace` (process and thread
// metadata, then complete events in microseconds).
nlohmann::json measured_trace_events(const std::vector<MeasuredEvent>& events, int64_t rank, const Coords& c);

}  // namespace loom::exec
