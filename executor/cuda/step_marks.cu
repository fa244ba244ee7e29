#include "executor/cuda/step_marks.cuh"

#include "executor/cuda/common.cuh"
#include "sim/trace_names.hpp"

namespace loom::cuda {

StepMarks::~StepMarks() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

Status StepMarks::record(const char* name, bool phase, cudaStream_t stream) {
  if (marks_.size() == events_.size()) {
    cudaEvent_t e = nullptr;
    LOOM_TRY(cuda_status(cudaEventCreate(&e), "step mark event", {{"marks", static_cast<int64_t>(marks_.size())}}));
    events_.push_back(e);
  }
  std::string full = name;
  const std::string kind = name;
  if (phase && (kind == "F" || kind == "B" || kind == "R")) {
    full = kind == "F"   ? trace_names::forward(micro_batch_, 0)
           : kind == "B" ? trace_names::backward(micro_batch_, 0)
                         : trace_names::recompute(micro_batch_, 0);
  }
  LOOM_TRY(cuda_status(cudaEventRecord(events_[marks_.size()], stream), "step mark", {}));
  marks_.push_back({std::move(full), phase, micro_batch_});
  return ok_status();
}

Expected<std::vector<MarkSpan>> StepMarks::spans() const {
  std::vector<MarkSpan> out;
  if (marks_.empty()) return out;
  std::vector<double> t(marks_.size(), 0.0);
  for (size_t i = 1; i < marks_.size(); i++) {
    float ms = 0;
    LOOM_TRY(cuda_status(cudaEventElapsedTime(&ms, events_[0], events_[i]), "step mark time", {}));
    t[i] = ms / 1e3;
  }
  for (size_t i = 0; i + 1 < marks_.size(); i++) {
    const Mark& m = marks_[i];
    size_t next = i + 1;  // ops end at the next mark; phases at the next phase mark
    if (m.phase)
      while (next + 1 < marks_.size() && !marks_[next].phase) next++;
    if (m.phase && m.name == "end") continue;
    out.push_back({m.name, m.phase, t[i], t[next] - t[i], m.micro_batch});
  }
  return out;
}

}  // namespace loom::cuda
