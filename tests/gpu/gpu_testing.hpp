// Helpers of the GPU tests: device buffers, bf16 round trips, seeded random inputs, and the
// relative error ||out - ref|| / ||ref|| every comparison uses (METHOD.md: bf16 operands land
// between 1e-3 and 1e-2; NaN never passes).
#pragma once
#include <catch2/catch.hpp>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "executor/cpu/rng.hpp"

namespace loom::cuda::testing {

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    REQUIRE(cudaMalloc(&p_, sizeof(T) * static_cast<size_t>(n)) == cudaSuccess);
    // poison: every element a kernel should write is checked to have been written
    REQUIRE(cudaMemset(p_, 0xff, sizeof(T) * static_cast<size_t>(n)) == cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  void upload(const std::vector<T>& v) {
    REQUIRE(static_cast<int64_t>(v.size()) == n_);
    REQUIRE(cudaMemcpy(p_, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> v(static_cast<size_t>(n_));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(v.data(), p_, sizeof(T) * v.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
};

inline std::vector<float> random_floats(int64_t n, uint64_t seed, double scale = 1.0) {
  cpu::Rng rng(cpu::mix(seed, 99));
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __float2bfloat16(v[i]);
  return out;
}

inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __bfloat162float(v[i]);
  return out;
}

// The values a bf16 tensor really holds: references are computed from these, so the error
// measured is the kernel's arithmetic and output rounding, not the input rounding.
inline std::vector<float> round_bf16(const std::vector<float>& v) { return to_float(to_bf16(v)); }

// ||out - ref|| / ||ref||; +inf if anything is not finite.
inline double rel_error(const std::vector<float>& out, const std::vector<float>& ref) {
  REQUIRE(out.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); i++) {
    if (!std::isfinite(out[i])) return INFINITY;
    const double d = static_cast<double>(out[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace loom::cuda::testing
