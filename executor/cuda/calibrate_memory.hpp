// `loom calibrate`'s memory-bound kernels by kind (calibrate_memory.cpp) into a profile's
// "memory_by_kind" curves (sim/profile.hpp).
#pragma once
#include <functional>

#include "executor/cuda/common.cuh"
#include "sim/profile.hpp"

namespace loom::cuda {

struct MemoryKindBench {
  bool quick = false;    // sizes to 2^22 elements and a smaller pool (tests)
  bool progress = true;  // one line per point on stderr
  cudaStream_t stream = nullptr;
  // The median seconds of one call of f(i) (i counts the calls), as calibrate's Timer takes it.
  std::function<Expected<double>(const std::function<Status(int)>&)> median;
};

// Appends each kind's forward and backward points to prof.memory_by_kind, sorted.
Status bench_memory_kinds(const MemoryKindBench& in, HardwareProfile& prof);

}  // namespace loom::cuda
