// Timings of the kernels at the shapes of the measured plans (hidden tag: `loom_gpu_tests
// "[.bench]"`, run by gpu_test.sh): attention forward and backward, and the largest GEMMs, in
// TFLOP/s (causal attention counts the half of the T x T products it computes: forward 2, backward
// 5 products of 2*B*NH*T*T/2*64, FlashAttention-2's convention).
#include <catch2/catch.hpp>

#include <cstdio>
#include <functional>

#include "executor/cuda/attention.cuh"
#include "executor/cuda/matmul.cuh"
#include "gpu_testing.hpp"

using namespace loom::cuda;
using namespace loom::cuda::testing;
using bf = __nv_bfloat16;

namespace {
double time_s(const std::function<void()>& f, int reps = 20) {
  for (int i = 0; i < 3; i++) f();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int i = 0; i < reps; i++) f();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / 1e3 / reps;
}
}  // namespace

TEST_CASE("kernel timings at the measured shapes", "[.bench]") {
  struct Shape {
    const char* name;
    int64_t B, T, NH;
  };
  for (const Shape& s : {Shape{"124M", 32, 1024, 12}, Shape{"1558M", 8, 1024, 25}}) {
    const int64_t C = s.NH * 64, N = s.B * s.T;
    DeviceBuffer<bf> qkv(N * 3 * C), out(N * C), dout(N * C), dqkv(N * 3 * C);
    DeviceBuffer<float> lse(N * s.NH), delta(N * s.NH);
    qkv.upload(to_bf16(random_floats(N * 3 * C, 1)));
    dout.upload(to_bf16(random_floats(N * C, 2)));
    const double f = 2.0 * s.B * s.NH * s.T * s.T / 2 * 64;  // one causal product
    const double tf = time_s([&] { (void)attention_forward(out.get(), lse.get(), qkv.get(), s.B, s.T, s.NH, nullptr); });
    const double tb = time_s([&] {
      (void)attention_backward(dqkv.get(), delta.get(), dout.get(), qkv.get(), out.get(), lse.get(), s.B, s.T, s.NH, nullptr);
    });
    std::printf("bench %-6s attention fwd %.3f ms (%.0f TFLOP/s)  bwd %.3f ms (%.0f TFLOP/s, 5-product count)\n",
                s.name, tf * 1e3, 2 * f / tf / 1e12, tb * 1e3, 5 * f / tb / 1e12);
    auto g = Gemm::create();
    REQUIRE(g.ok());
    const int64_t F = 4 * C;
    DeviceBuffer<bf> x(N * C), w(F * C), y(N * F), pre(N * F), b(F);
    x.upload(to_bf16(random_floats(N * C, 3)));
    w.upload(to_bf16(random_floats(F * C, 4, 0.02)));
    b.upload(to_bf16(random_floats(F, 5)));
    const double gflop = 2.0 * N * C * F;
    const double t1 = time_s([&] { (void)matmul_forward(**g, y.get(), pre.get(), x.get(), w.get(), b.get(), N, C, F, nullptr); });
    const double t2 = time_s([&] { (void)matmul_forward(**g, y.get(), nullptr, x.get(), w.get(), nullptr, N, C, F, nullptr); });
    std::printf("bench %-6s fc GEMM %lldx%lldx%lld: +bias+GELU %.0f TFLOP/s, plain %.0f TFLOP/s\n", s.name,
                static_cast<long long>(N), static_cast<long long>(F), static_cast<long long>(C),
                gflop / t1 / 1e12, gflop / t2 / 1e12);
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

// Grouped-query attention at Llama 3 8B's heads (32 q heads sharing 8 kv heads, head size 64 is
// the kernel's: hidden 2048 here), against multi-head attention with the same 32 q heads: the
// forward and dQ do the same work; dK/dV runs 4x fewer thread blocks, each walking 4 heads.
TEST_CASE("grouped-query attention timings", "[.bench]") {
  const int64_t B = 4, T = 2048, NH = 32;
  for (const int64_t NKV : {NH, int64_t{8}}) {
    const int64_t C = NH * 64, N = B * T, row = (NH + 2 * NKV) * 64;
    DeviceBuffer<bf> qkv(N * row), out(N * C), dout(N * C), dqkv(N * row);
    DeviceBuffer<float> lse(N * NH), delta(N * NH);
    qkv.upload(to_bf16(random_floats(N * row, 1)));
    dout.upload(to_bf16(random_floats(N * C, 2)));
    const double f = 2.0 * B * NH * T * T / 2 * 64;  // one causal product
    const double tf = time_s([&] { (void)attention_forward(out.get(), lse.get(), qkv.get(), B, T, NH, NKV, nullptr); });
    const double tb = time_s([&] {
      (void)attention_backward(dqkv.get(), delta.get(), dout.get(), qkv.get(), out.get(), lse.get(), B, T, NH, NKV, nullptr);
    });
    std::printf("bench B=%lld T=%lld NH=%lld NKV=%-2lld attention fwd %.3f ms (%.0f TFLOP/s)  bwd %.3f ms (%.0f TFLOP/s)\n",
                static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(NH),
                static_cast<long long>(NKV), tf * 1e3, 2 * f / tf / 1e12, tb * 1e3, 5 * f / tb / 1e12);
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}
