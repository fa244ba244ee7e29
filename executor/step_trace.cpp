#include "executor/step_trace.hpp"

#include "sim/trace.hpp"

namespace loom::exec {

namespace tn = trace_names;

void StepRecorder::start_step() {
  origin_ = Clock::now();
  events_.clear();
  open_ = paused_ = false;
}

void StepRecorder::compute_begin(std::string name, int64_t micro_batch, int64_t chunk) {
  if (open_) compute_end();
  name_ = std::move(name);
  mb_ = micro_batch;
  chunk_ = chunk;
  open_ = true;
  paused_ = false;
  seg_start_s_ = now_s();
}

void StepRecorder::close_segment() {
  const double end = now_s();
  if (end > seg_start_s_) {
    MeasuredEvent e;
    e.name = name_;
    e.start_s = seg_start_s_;
    e.dur_s = end - seg_start_s_;
    e.micro_batch = mb_;
    e.chunk = chunk_;
    events_.push_back(std::move(e));
  }
}

void StepRecorder::compute_end() {
  if (open_ && !paused_) close_segment();
  open_ = paused_ = false;
}

void StepRecorder::pause() {
  if (!open_ || paused_) return;
  close_segment();
  paused_ = true;
}

void StepRecorder::resume() {
  if (!open_ || !paused_) return;
  paused_ = false;
  seg_start_s_ = now_s();
}

MeasuredTimes measured_times(const std::vector<MeasuredEvent>& events) {
  MeasuredTimes t;
  for (const MeasuredEvent& e : events) {
    const std::string& n = e.name;
    auto starts = [&](const char* p) { return n.rfind(p, 0) == 0; };
    if (starts("cp ") && e.stream != tn::Stream::compute) {
      t.cp_s += e.dur_s;
    } else if (e.stream == tn::Stream::compute) {
      if (starts("F ")) t.forward_s += e.dur_s;
      else if (starts("B ") || starts("W ")) t.backward_s += e.dur_s;  // W: zb-h1's weight gradients
      else if (starts("R ")) t.recompute_s += e.dur_s;
      else if (n == tn::kOptimizer) t.optimizer_s += e.dur_s;
      else if (n == kWorldAllReduce) t.world_s += e.dur_s;
    } else if (e.stream == tn::Stream::tp) {
      (n == kTpGradSync ? t.tp_grad_sync_s : t.tp_s) += e.dur_s;
    } else if (e.stream == tn::Stream::dp || e.stream == tn::Stream::dp_gather) {
      t.dp_s += e.dur_s;
    } else if (e.stream == tn::Stream::pp || e.stream == tn::Stream::pp_recv_activations ||
               e.stream == tn::Stream::pp_recv_gradients) {
      t.pp_s += e.dur_s;
    }
  }
  return t;
}

// The call's name and stream: the trainer's label, else its group's default (tensor-parallel
// calls come from inside the layers, which do not know their micro-batch: Megatron's names).
template <class F>
auto TracedComm::timed(const Group* g, const char* op, int64_t bytes, F&& f) -> decltype(f()) {
  if (g != nullptr && g->size() <= 1) {  // nothing is sent: not an event
    label_.clear();
    return f();
  }
  MeasuredEvent e;
  if (!label_.empty()) {
    e.name = std::move(label_);
    e.stream = label_stream_;
    label_.clear();
  } else if (g == nullptr || g->kind == GroupKind::pp) {
    e.name = std::string("pp ") + op;
    e.stream = tn::Stream::pp;
  } else if (g->kind == GroupKind::tp) {
    const bool sp_op = std::string(op) != "all_reduce";
    e.name = sp_ && sp_op ? tn::kTpSequenceParallel : tn::kTpAllReduce;
    e.stream = tn::Stream::tp;
  } else if (g->kind == GroupKind::cp) {  // CpComm::all_gather's (the ring's hops are labelled, stage_cp.cpp)
    e.name = tn::kCpAllGather;
    e.stream = tn::Stream::tp;
  } else if (g->kind == GroupKind::dp || g->kind == GroupKind::edp) {
    e.name = std::string(group_name(g->kind)) + " " + op;
    e.stream = tn::Stream::dp;
  } else if (g->kind == GroupKind::ep || g->kind == GroupKind::etp) {  // MoE: on the tp stream (no ep stream yet)
    e.name = std::string(group_name(g->kind)) + " " + op;
    e.stream = tn::Stream::tp;
  } else {
    e.name = kWorldAllReduce;
    e.stream = tn::Stream::compute;
  }
  e.micro_batch = rec_.micro_batch();
  e.chunk = rec_.chunk();
  e.bytes = bytes;
  rec_.pause();
  e.start_s = rec_.now_s();
  auto result = f();
  e.dur_s = rec_.now_s() - e.start_s;
  rec_.add(std::move(e));
  rec_.resume();
  return result;
}

Status TracedComm::all_reduce(const Group& g, float* data, int64_t n, ReduceOp op) {
  return timed(&g, "all_reduce", n * 4, [&] { return inner_.all_reduce(g, data, n, op); });
}
Status TracedComm::all_reduce(const Group& g, double* data, int64_t n, ReduceOp op) {
  return timed(&g, "all_reduce", n * 8, [&] { return inner_.all_reduce(g, data, n, op); });
}
Status TracedComm::reduce_scatter(const Group& g, float* data, int64_t n) {
  return timed(&g, "reduce_scatter", n * 4, [&] { return inner_.reduce_scatter(g, data, n); });
}
Status TracedComm::all_gather(const Group& g, float* data, int64_t n) {
  return timed(&g, "all_gather", n * 4, [&] { return inner_.all_gather(g, data, n); });
}

Status TracedComm::all_to_all(const Group& g, const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                              const std::vector<int64_t>& recv_bytes) {
  int64_t bytes = 0;
  for (int64_t b : send_bytes) bytes += b;
  return timed(&g, "all_to_all", bytes, [&] { return inner_.all_to_all(g, send, send_bytes, recv, recv_bytes); });
}

// A send is posted (isend) and completed later (wait): both intervals carry the send's label.
Expected<int> TracedComm::isend(int to, const void* data, int64_t bytes, int tag, GroupKind kind) {
  const std::string name = label_.empty() ? std::string("pp send") : label_;
  auto r = timed(nullptr, "send", bytes, [&] { return inner_.isend(to, data, bytes, tag, kind); });
  if (r) send_names_[*r] = name;
  return r;
}

Status TracedComm::wait(int request, const char* what) {
  auto it = send_names_.find(request);
  if (it == send_names_.end()) return inner_.wait(request, what);
  label(it->second, tn::Stream::pp);
  send_names_.erase(it);
  return timed(nullptr, "send", 0, [&] { return inner_.wait(request, what); });
}

Status TracedComm::recv(int from, void* data, int64_t bytes, int tag, const char* what) {
  return timed(nullptr, "recv", bytes, [&] { return inner_.recv(from, data, bytes, tag, what); });
}

nlohmann::json measured_trace_events(const std::vector<MeasuredEvent>& events, int64_t rank, const Coords& c) {
  nlohmann::json out = trace_rank_metadata(rank, c);
  for (const MeasuredEvent& e : events) {
    nlohmann::json args = nlohmann::json::object();
    if (e.micro_batch >= 0) args["micro_batch"] = e.micro_batch;
    if (e.chunk >= 0) args["chunk"] = e.chunk;
    if (e.bytes > 0) args["bytes"] = e.bytes;
    out.push_back(trace_complete_event(e.name, e.stream, e.start_s, e.dur_s, rank, std::move(args)));
  }
  return out;
}

}  // namespace loom::exec
