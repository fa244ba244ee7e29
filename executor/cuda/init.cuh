// Parameter initialization on the device, bit-compatible with the CPU reference model
// (executor/cpu/gpt.cpp, init_params): tensor i of the CPU layout draws element j from
// Rng(mix(seed, i)).normal() number j. splitmix64 makes draw n of a stream a pure function of n,
// so every element is computed independently; the result equals the CPU's fp32 value except
// where device and host libm round log/cos differently in the last double bit.
#pragma once
#include <cstdint>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

// dst (count) fp32: std > 0: std * normal number [first, first + count) of stream `stream_seed`
// (= cpu::mix(seed, tensor index)); std == 0: zeros; std < 0: ones.
Status init_tensor(float* dst, int64_t count, uint64_t stream_seed, int64_t first, double std,
                   cudaStream_t stream);

}  // namespace loom::cuda
