// Where a step's time goes on the GPU: a CUDA event recorded in stream order before every
// kernel (its op category: "gemm", "attention", "norm", ...) and at every phase change ("F",
// "B", "R" for a micro-batch, "optimizer", "end"). An op lasts from its mark to the next mark of
// either kind, a phase to the next phase mark, so nothing is timed twice and the ops of a phase
// add up to it. The events are read after the stream synchronizes; they cost one
// cudaEventRecord per kernel, so the executor records them on one extra step after the timed
// ones (executor/cuda/cuda_executor.cpp).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/expected.hpp"

namespace loom::cuda {

struct MarkSpan {
  std::string name;   // "F mb3 c0", "optimizer" for phases; the category for ops
  bool phase = false;
  double start_s = 0, dur_s = 0;  // from the first mark of the step
  int64_t micro_batch = -1;
};

class StepMarks {
 public:
  StepMarks() = default;
  ~StepMarks();
  StepMarks(const StepMarks&) = delete;
  StepMarks& operator=(const StepMarks&) = delete;

  void clear() { marks_.clear(); }
  void set_micro_batch(int64_t micro_batch) { micro_batch_ = micro_batch; }
  // kind: "F", "B", "R" (named with the micro-batch as the simulator names them), "optimizer",
  // "end" (closes the last phase and op).
  Status phase(const char* kind, cudaStream_t stream) { return record(kind, true, stream); }
  Status op(const char* category, cudaStream_t stream) { return record(category, false, stream); }
  // After the stream has synchronized.
  Expected<std::vector<MarkSpan>> spans() const;

 private:
  struct Mark {
    std::string name;
    bool phase;
    int64_t micro_batch;
  };
  Status record(const char* name, bool phase, cudaStream_t stream);
  std::vector<cudaEvent_t> events_;  // created on demand, reused by later steps
  std::vector<Mark> marks_;
  int64_t micro_batch_ = -1;
};

}  // namespace loom::cuda
