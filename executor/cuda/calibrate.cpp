// The driver of `loom calibrate` (executor/cuda/calibrate.cuh): times each microbenchmark with
// CUDA events around a batch of back-to-back launches (batch sized to about 1 ms), takes the
// median of the batches, and writes the profile (sim/profile.hpp). Inputs are random (never
// zeros); the elementwise benchmark rotates through buffers larger than L2.
#include "executor/cuda/calibrate.cuh"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "executor/cuda/adamw.cuh"
#include "executor/cuda/attention.cuh"
#include "executor/cuda/calibrate_memory.hpp"
#include "executor/cuda/grad_norm.cuh"
#include "executor/cuda/matmul.cuh"
#include "sim/json_reader.hpp"
#include "sim/profile.hpp"

namespace loom::cuda {
namespace {

struct Timer {
  cudaStream_t stream;
  cudaEvent_t a = nullptr, b = nullptr;
  explicit Timer(cudaStream_t s) : stream(s) {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  // Median seconds of one call of `f`: one untimed warm-up, an estimate, then `batches` timed
  // batches of k calls each (k so that a batch lasts about `batch_s`).
  Expected<double> median(const std::function<Status(int)>& f, int batches = 7, double batch_s = 1e-3) {
    LOOM_TRY(f(0));
    LOOM_TRY(time_batch(f, 1, 1));
    const double est = last_;
    const int k = static_cast<int>(std::clamp(batch_s / std::max(est, 1e-7), 1.0, 200.0));
    std::vector<double> t;
    for (int i = 0; i < batches; i++) {
      LOOM_TRY(time_batch(f, k, 2 + i * k));
      t.push_back(last_ / k);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }

 private:
  double last_ = 0;
  Status time_batch(const std::function<Status(int)>& f, int k, int first) {
    LOOM_TRY(cuda_status(cudaEventRecord(a, stream), "event", {}));
    for (int i = 0; i < k; i++) LOOM_TRY(f(first + i));
    LOOM_TRY(cuda_status(cudaEventRecord(b, stream), "event", {}));
    LOOM_TRY(cuda_status(cudaEventSynchronize(b), "event sync", {}));
    float ms = 0;
    LOOM_TRY(cuda_status(cudaEventElapsedTime(&ms, a, b), "event time", {}));
    last_ = ms * 1e-3;
    return ok_status();
  }
};

template <class T>
struct DevBuf {
  T* p = nullptr;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  Status alloc(int64_t n, const char* what) {
    return cuda_status(cudaMalloc(&p, sizeof(T) * static_cast<size_t>(n)), what, {{"elements", n}});
  }
  void release() {
    if (p) cudaFree(p);
    p = nullptr;
  }
};

int64_t free_bytes() {
  size_t f = 0, t = 0;
  cudaMemGetInfo(&f, &t);
  return static_cast<int64_t>(f);
}

// What one calibration run works with: the options, the profile being filled, the stream, the
// timer and the device's properties.
struct Bench {
  const CalibrateOptions& o;
  HardwareProfile& prof;
  cudaStream_t stream;
  Timer& timer;
};

// cudaMalloc's rounding unit: the free-memory drop of a 1-byte allocation.
Status measure_malloc_granularity(HardwareProfile& prof) {
  const int64_t f = free_bytes();
  void* p = nullptr;
  LOOM_TRY(cuda_status(cudaMalloc(&p, 1), "cudaMalloc(1)", {}));
  prof.memory.malloc_granularity_bytes = f - free_bytes();
  cudaFree(p);
  return ok_status();
}

// ---- launch overhead: empty kernels back to back
Status bench_launch(Bench& b) {
  auto t = b.timer.median([&](int) { return empty_kernel(b.stream); }, 9, 2e-3);
  if (!t) return t.error();
  b.prof.kernel_launch_s = *t;
  if (b.o.progress) std::fprintf(stderr, "launch: %.2f us per empty kernel\n", *t * 1e6);
  return ok_status();
}

// ---- GEMMs: the executor's calls over tokens x layer and logits shapes
constexpr int64_t kGemmVocab = 50304;  // GPT-2's vocabulary padded to 128, as the executor runs it

struct GemmBuffers {
  DevBuf<bf16> x, y, w, bias, aux;
  DevBuf<float> dw, dbias, scratch;
};

Status alloc_gemm_buffers(GemmBuffers& g, const std::vector<int64_t>& tokens, int64_t maxH, cudaStream_t stream) {
  const int64_t V = kGemmVocab, maxT = tokens.back();
  const int64_t big = maxT * std::max(V, 4 * maxH);
  LOOM_TRY(g.x.alloc(big, "gemm x"));
  LOOM_TRY(g.y.alloc(big, "gemm y"));
  LOOM_TRY(g.w.alloc(V * maxH, "gemm w"));
  LOOM_TRY(g.bias.alloc(V, "gemm bias"));
  LOOM_TRY(g.aux.alloc(maxT * 4 * maxH, "gemm aux"));
  LOOM_TRY(g.dw.alloc(V * maxH, "gemm dw"));
  LOOM_TRY(g.dbias.alloc(V, "gemm dbias"));
  int64_t sc = 0;
  for (int64_t T : tokens)
    for (int64_t oc : {V, 4 * maxH, 3 * maxH}) sc = std::max(sc, bias_scratch_floats(T, oc));
  LOOM_TRY(g.scratch.alloc(sc, "gemm scratch"));
  LOOM_TRY(fill_random_bf16(g.x.p, big, 1, 1.0f, stream));
  LOOM_TRY(fill_random_bf16(g.y.p, big, 2, 1.0f, stream));
  LOOM_TRY(fill_random_bf16(g.w.p, V * maxH, 3, 0.05f, stream));
  LOOM_TRY(fill_random_bf16(g.bias.p, V, 4, 0.1f, stream));
  LOOM_TRY(fill_random_bf16(g.aux.p, maxT * 4 * maxH, 5, 1.0f, stream));
  LOOM_TRY(fill_random_f32(g.dw.p, V * maxH, 6, 0.01f, stream));
  return cuda_status(cudaMemsetAsync(g.dbias.p, 0, sizeof(float) * V, stream), "memset", {});
}

// Times one GEMM shape (plain shapes once each; variants: "fwd_bias", ...) into the profile.
struct GemmTimer {
  Bench& b;
  std::set<std::tuple<int64_t, int64_t, int64_t, bool>> seen;  // a shape once per output kind
  std::vector<ProfileGemm>* table = nullptr;  // where plain shapes go (default: the bf16 table)
  // accumulate_fp32: a weight gradient, D fp32 += A B (the model prices its fp32 output).
  Status operator()(const char* kind, int64_t m, int64_t n, int64_t k, const std::function<Status(int)>& f,
                    bool accumulate_fp32 = false) {
    const bool plain = kind[0] == '\0';
    if (plain && !seen.insert({m, n, k, accumulate_fp32}).second) return ok_status();
    auto t = b.timer.median(f);
    if (!t) return t.error();
    (plain ? (table ? *table : b.prof.gemm) : b.prof.gemm_variants).push_back({kind, m, n, k, plain && accumulate_fp32, *t});
    if (b.o.progress)
      std::fprintf(stderr, "gemm %-16s %6lld x %6lld x %6lld  %9.1f us  %6.1f TFLOP/s\n",
                   plain ? (table ? "fp8" : "plain") : kind,
                   static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), *t * 1e6,
                   2.0 * m * n * k / *t / 1e12);
    return ok_status();
  }
};

struct Lin {
  int64_t in, out;
  bool bias, gelu_out, gelu_in;
};

// One linear layer's GEMMs on T tokens: forward, input gradient, weight gradient, and the
// epilogue variants the executor uses.
Status bench_linear(GemmTimer& add, Gemm& gemm, GemmBuffers& g, const Lin& l, int64_t T, cudaStream_t stream) {
  const int64_t C = l.in, OC = l.out;
  // forward: out (T, OC) = in (T, C) W^T: GEMM (M, N, K) = (T, OC, C)
  LOOM_TRY(add("", T, OC, C, [&](int) { return matmul_forward(gemm, g.y.p, nullptr, g.x.p, g.w.p, nullptr, T, C, OC, stream); }));
  // input gradient: din (T, C) = dout (T, OC) W: (T, C, OC)
  LOOM_TRY(add("", T, C, OC, [&](int) { return matmul_backward_input(gemm, g.y.p, g.x.p, g.w.p, nullptr, T, C, OC, stream); }));
  // weight gradient: dW (OC, C) += dout^T in, fp32: (OC, C, T)
  LOOM_TRY(add(
      "", OC, C, T,
      [&](int) { return matmul_backward_weight(gemm, g.dw.p, nullptr, g.scratch.p, g.x.p, g.y.p, T, C, OC, stream); },
      true));
  if (l.bias) {
    LOOM_TRY(add(l.gelu_out ? "fwd_bias_gelu" : "fwd_bias", T, OC, C, [&](int) {
      return matmul_forward(gemm, g.y.p, l.gelu_out ? g.aux.p : nullptr, g.x.p, g.w.p, g.bias.p, T, C, OC, stream);
    }));
    LOOM_TRY(add("bwd_weight_bias", OC, C, T, [&](int) {
      return matmul_backward_weight(gemm, g.dw.p, g.dbias.p, g.scratch.p, g.x.p, g.y.p, T, C, OC, stream);
    }));
  }
  if (l.gelu_in)
    LOOM_TRY(add("bwd_input_dgelu", T, C, OC, [&](int) {
      return matmul_backward_input(gemm, g.y.p, g.x.p, g.w.p, g.aux.p, T, C, OC, stream);
    }));
  return ok_status();
}

Status bench_gemm(Bench& b, Gemm& gemm) {
  const std::vector<int64_t> tokens = b.o.quick ? std::vector<int64_t>{512, 4096}
                                                : std::vector<int64_t>{256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
  const std::vector<int64_t> hiddens = b.o.quick ? std::vector<int64_t>{768} : std::vector<int64_t>{768, 1024, 1280, 1600};
  GemmBuffers g;
  LOOM_TRY(alloc_gemm_buffers(g, tokens, hiddens.back(), b.stream));
  GemmTimer add{b, {}};
  for (int64_t h : hiddens)
    for (int64_t T : tokens) {
      const std::vector<Lin> lins{{h, 3 * h, true, false, false}, {h, h, true, false, false},
                                  {h, 4 * h, true, true, false},  {4 * h, h, true, false, true},
                                  {h, kGemmVocab, false, false, false}};
      for (const Lin& l : lins) LOOM_TRY(bench_linear(add, gemm, g, l, T, b.stream));
    }
  return ok_status();
}

// ---- GEMMs of the layers the planner prices beyond GPT-2's: tensor-parallel slices of
// Llama-sized layers (hidden 2048-16384 at tp 1 and 8; GQA's QKV of 1.25 hidden, SwiGLU's
// gate|up of 2 x 3.5 hidden, the down and output projections) at 2048 and 16384 tokens, and
// logits over vocabularies of 32000-256000, each as forward, input gradient and fp32 weight
// gradient, so that the GEMM model (sim/gemm_model.hpp) is fitted over the shapes it prices.
// A GEMM of more than kMaxSweepFlops is left out: such shapes are in the model's large-shape
// regime already, and the sweep stays within its minute.
constexpr double kMaxSweepFlops = 3e13;

struct SweepShape {
  int64_t T, C, OC;
};

// The linear layers' shapes.
std::vector<SweepShape> layer_sweep() {
  std::vector<SweepShape> v;
  for (int64_t h : {2048, 4096, 8192, 16384})
    for (int64_t tp : {1, 8})
      for (int64_t T : {2048, 16384}) {
        const int64_t ffn = h * 7 / 2;
        for (auto [C, OC] : {std::pair{h, h * 5 / 4 / tp}, {h / tp, h}, {h, 2 * ffn / tp}, {ffn / tp, h}})
          if (2.0 * T * C * OC <= kMaxSweepFlops) v.push_back({T, C, OC});
      }
  return v;
}

Status bench_planner_gemms(Bench& b, Gemm& gemm) {
  std::vector<SweepShape> shapes = layer_sweep();
  for (int64_t V : {32000, 128256, 256000})  // the logits
    for (int64_t tp : {1, 8}) shapes.push_back({8192, 4096, V / tp});
  int64_t in = 0, out = 0, w = 0;
  for (const auto& s : shapes)
    in = std::max(in, s.T * s.C), out = std::max(out, s.T * s.OC), w = std::max(w, s.C * s.OC);
  DevBuf<bf16> x, y, wt;
  DevBuf<float> dw;
  LOOM_TRY(x.alloc(in, "sweep x"));
  LOOM_TRY(y.alloc(std::max(in, out), "sweep y"));
  LOOM_TRY(wt.alloc(w, "sweep w"));
  LOOM_TRY(dw.alloc(w, "sweep dw"));
  LOOM_TRY(fill_random_bf16(x.p, in, 11, 1.0f, b.stream));
  LOOM_TRY(fill_random_bf16(y.p, std::max(in, out), 12, 1.0f, b.stream));
  LOOM_TRY(fill_random_bf16(wt.p, w, 13, 0.05f, b.stream));
  LOOM_TRY(fill_random_f32(dw.p, w, 14, 0.01f, b.stream));
  GemmTimer add{b, {}};
  for (const auto& g : b.prof.gemm) add.seen.insert({g.m, g.n, g.k, g.accumulate_fp32});  // once in the profile
  for (const auto& [T, C, OC] : shapes) {
    LOOM_TRY(add("", T, OC, C, [&](int) { return matmul_forward(gemm, y.p, nullptr, x.p, wt.p, nullptr, T, C, OC, b.stream); }));
    LOOM_TRY(add("", T, C, OC, [&](int) { return matmul_backward_input(gemm, x.p, y.p, wt.p, nullptr, T, C, OC, b.stream); }));
    LOOM_TRY(add(
        "", OC, C, T,
        [&](int) { return matmul_backward_weight(gemm, dw.p, nullptr, nullptr, y.p, x.p, T, C, OC, b.stream); }, true));
  }
  return ok_status();
}

// ---- FP8 GEMMs: the linear layers of the planner's sweep (not the logits: Transformer Engine
// and Megatron-LM keep the output layer in bf16) as Transformer Engine runs them in FP8, each
// operand K-major (cuBLASLt's only FP8 layout; TE keeps FP8 transposes for it): the forward
// E4M3 x E4M3 with fast accumulation, the input gradient E4M3 weights x E5M2 output gradient,
// the weight gradient E4M3 inputs x E5M2 output gradient added into fp32, both with fp32
// promotion (TE's defaults); per-tensor scales of 1. Recorded with the bf16 table's (M, N, K)
// convention: forward (T, OC, C), input gradient (T, C, OC), weight gradient (OC, C, T).
bool has_fp8_tensor_cores() {
  int dev = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major * 10 + minor >= 89;
}

Status bench_fp8_gemms(Bench& b, Gemm& gemm) {
  std::vector<SweepShape> shapes = layer_sweep();
  std::erase_if(shapes, [](const SweepShape& s) { return s.T % 16 != 0 || s.C % 16 != 0 || s.OC % 16 != 0; });
  int64_t in = 0, out = 0, w = 0;
  for (const auto& s : shapes)
    in = std::max(in, s.T * s.C), out = std::max(out, s.T * s.OC), w = std::max(w, s.C * s.OC);
  DevBuf<uint8_t> x, dy, wt;
  DevBuf<bf16> y;
  DevBuf<float> dw, scales;
  LOOM_TRY(x.alloc(in, "fp8 x"));
  LOOM_TRY(dy.alloc(out, "fp8 dy"));
  LOOM_TRY(wt.alloc(w, "fp8 w"));
  LOOM_TRY(y.alloc(std::max(in, out), "fp8 y"));
  LOOM_TRY(dw.alloc(w, "fp8 dw"));
  LOOM_TRY(scales.alloc(2, "fp8 scales"));
  LOOM_TRY(fill_random_fp8(x.p, in, 41, 1.0f, false, b.stream));
  LOOM_TRY(fill_random_fp8(dy.p, out, 42, 1.0f, true, b.stream));
  LOOM_TRY(fill_random_fp8(wt.p, w, 43, 0.5f, false, b.stream));
  LOOM_TRY(fill_random_f32(dw.p, w, 44, 0.01f, b.stream));
  const float ones[2] = {1.0f, 1.0f};
  LOOM_TRY(cuda_status(cudaMemcpy(scales.p, ones, sizeof(ones), cudaMemcpyHostToDevice), "fp8 scales", {}));
  GemmTimer add{b, {}, &b.prof.gemm_fp8};
  const float* sc = scales.p;
  for (const auto& [T, C, OC] : shapes) {
    LOOM_TRY(add("", T, OC, C, [&](int) { return matmul_fp8(gemm, y.p, false, wt.p, false, x.p, false, sc, OC, T, C, true, b.stream); }));
    LOOM_TRY(add("", T, C, OC, [&](int) { return matmul_fp8(gemm, y.p, false, wt.p, false, dy.p, true, sc, C, T, OC, false, b.stream); }));
    LOOM_TRY(add(
        "", OC, C, T, [&](int) { return matmul_fp8(gemm, dw.p, true, x.p, false, dy.p, true, sc, C, OC, T, false, b.stream); },
        true));
  }
  return ok_status();
}

// ---- attention: the executor's kernel, causal. GPT's head size 64 with as many K/V heads as
// query heads over GPT-2's shapes, and Llama's head size 128 with grouped-query attention (8
// query heads per K/V pair of 2, i.e. Llama 3's 4:1 ratio) from 1k to 128k tokens, the lengths
// context parallelism leaves a rank. Recorded by (bh = batch x query heads, seq, head size).
struct AttentionPoint {
  int64_t B, NH, NKV, HS, T;
};

std::vector<AttentionPoint> attention_sweep(bool quick) {
  std::vector<AttentionPoint> v;
  const std::vector<std::pair<int64_t, int64_t>> bnh =
      quick ? std::vector<std::pair<int64_t, int64_t>>{{1, 12}, {4, 12}}
            : std::vector<std::pair<int64_t, int64_t>>{{1, 12}, {1, 25}, {4, 12}, {4, 25}, {16, 12}, {16, 25}, {32, 25}};
  const std::vector<int64_t> seqs = quick ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{256, 512, 1024, 2048};
  for (int64_t T : seqs)
    for (auto [B, NH] : bnh) v.push_back({B, NH, NH, 64, T});
  if (quick) return v;
  for (int64_t T : {1024, 2048, 4096, 8192})
    for (auto [B, NH] : {std::pair<int64_t, int64_t>{1, 8}, {1, 32}, {4, 32}}) v.push_back({B, NH, NH / 4, 128, T});
  for (int64_t T : {16384, 32768, 65536, 131072}) v.push_back({1, 8, 2, 128, T});
  return v;
}

Status bench_attention(Bench& b) {
  const std::vector<AttentionPoint> pts = attention_sweep(b.o.quick);
  int64_t max_qkv = 0, max_out = 0, max_rows = 0;
  for (const auto& p : pts) {
    max_qkv = std::max(max_qkv, p.B * p.T * (p.NH + 2 * p.NKV) * p.HS);
    max_out = std::max(max_out, p.B * p.T * p.NH * p.HS);
    max_rows = std::max(max_rows, p.B * p.NH * p.T);
  }
  DevBuf<bf16> qkv, out, dout, dqkv;
  DevBuf<float> lse, delta;
  LOOM_TRY(qkv.alloc(max_qkv, "attention qkv"));
  LOOM_TRY(out.alloc(max_out, "attention out"));
  LOOM_TRY(dout.alloc(max_out, "attention dout"));
  LOOM_TRY(dqkv.alloc(max_qkv, "attention dqkv"));
  LOOM_TRY(lse.alloc(max_rows, "attention lse"));
  LOOM_TRY(delta.alloc(max_rows, "attention delta"));
  LOOM_TRY(fill_random_bf16(qkv.p, max_qkv, 11, 1.0f, b.stream));
  LOOM_TRY(fill_random_bf16(dout.p, max_out, 12, 1.0f, b.stream));
  for (const auto& [B, NH, NKV, HS, T] : pts) {
    auto tf = b.timer.median([&](int) { return attention_forward(out.p, lse.p, qkv.p, B, T, NH, NKV, HS, b.stream); });
    if (!tf) return tf.error();
    auto tb = b.timer.median([&](int) {
      return attention_backward(dqkv.p, delta.p, dout.p, qkv.p, out.p, lse.p, B, T, NH, NKV, HS, b.stream);
    });
    if (!tb) return tb.error();
    b.prof.attention.push_back({B * NH, T, HS, *tf, *tb});
    if (b.o.progress) {
      const double fl = 2.0 * B * NH * T * T * HS;  // causal forward: 2 products, half the square
      std::fprintf(stderr, "attention bh %4lld seq %6lld hs %3lld kv %2lld  fwd %9.1f us (%5.1f TFLOP/s)  bwd %9.1f us\n",
                   static_cast<long long>(B * NH), static_cast<long long>(T), static_cast<long long>(HS),
                   static_cast<long long>(NKV), *tf * 1e6, fl / *tf / 1e12, *tb * 1e6);
    }
  }
  // The profile's table is sorted by (seq, head size, bh) (sim/profile.hpp).
  std::sort(b.prof.attention.begin(), b.prof.attention.end(), [](const auto& x, const auto& y) {
    return std::tie(x.seq, x.head_dim, x.bh) < std::tie(y.seq, y.head_dim, y.bh);
  });
  return ok_status();
}

// ---- memory-bound: out = a + b (bf16), buffers rotated through a pool larger than L2
Status bench_memory_bound(Bench& b) {
  const int64_t pool = int64_t{1} << (b.o.quick ? 26 : 28);  // elements per operand
  DevBuf<bf16> x, y, z;
  LOOM_TRY(x.alloc(pool, "pool a"));
  LOOM_TRY(y.alloc(pool, "pool b"));
  LOOM_TRY(z.alloc(pool, "pool c"));
  LOOM_TRY(fill_random_bf16(x.p, pool, 21, 1.0f, b.stream));
  LOOM_TRY(fill_random_bf16(y.p, pool, 22, 1.0f, b.stream));
  for (int64_t n = int64_t{1} << 14; n <= pool; n *= 4) {
    const int64_t slots = pool / n;
    auto t = b.timer.median([&](int i) {
      const int64_t off = (i % slots) * n;
      return add_bf16(z.p + off, x.p + off, y.p + off, n, b.stream);
    });
    if (!t) return t.error();
    const double bytes = 3.0 * 2.0 * static_cast<double>(n);
    b.prof.memory_bound.push_back({bytes, bytes / *t});
    if (b.o.progress) std::fprintf(stderr, "elementwise %12.0f bytes  %8.2f us  %7.1f GB/s\n", bytes, *t * 1e6, bytes / *t / 1e9);
  }
  return ok_status();
}

// ---- optimizer: the executor's gradient norm and AdamW over P parameters
Status bench_optimizer(Bench& b, int64_t P) {
  DevBuf<bf16> params;
  DevBuf<float> master, grads, m, v, scratch;
  DevBuf<AdamWChunk> chunks;
  LOOM_TRY(params.alloc(P, "params"));
  LOOM_TRY(master.alloc(P, "master"));
  LOOM_TRY(grads.alloc(P, "grads"));
  LOOM_TRY(m.alloc(P, "m"));
  LOOM_TRY(v.alloc(P, "v"));
  LOOM_TRY(scratch.alloc(kGradNormBlocks + 4, "scratch"));
  LOOM_TRY(fill_random_f32(master.p, P, 31, 0.02f, b.stream));
  LOOM_TRY(fill_random_f32(grads.p, P, 32, 0.001f, b.stream));
  LOOM_TRY(cuda_status(cudaMemsetAsync(m.p, 0, sizeof(float) * P, b.stream), "memset", {}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(v.p, 0, sizeof(float) * P, b.stream), "memset", {}));
  const std::vector<AdamWChunk> host = adamw_chunks({{0, P, true}}, 1.0f);
  LOOM_TRY(chunks.alloc(static_cast<int64_t>(host.size()), "chunks"));
  LOOM_TRY(cuda_status(cudaMemcpy(chunks.p, host.data(), sizeof(AdamWChunk) * host.size(), cudaMemcpyHostToDevice),
                       "chunk table", {}));
  AdamWHyper hyper;
  hyper.weight_decay = 0.1f;
  float* out2 = scratch.p + kGradNormBlocks;
  auto tn = b.timer.median([&](int) { return grad_norm(out2, scratch.p, grads.p, P, 1.0f, b.stream); }, 5, 0);
  if (!tn) return tn.error();
  auto ta = b.timer.median([&](int i) {
    return adamw_update(params.p, master.p, grads.p, m.p, v.p, chunks.p, static_cast<int64_t>(host.size()), out2 + 1,
                        hyper, i + 1, b.stream);
  }, 5, 0);
  if (!ta) return ta.error();
  b.prof.optimizer = {P, *ta, *tn, 34};  // AdamW reads grads, master, m, v (16), writes master, m, v, grads (16) and bf16 (2)
  if (b.o.progress)
    std::fprintf(stderr, "optimizer P=%lld  adamw %.3f ms (%.0f GB/s at 34 B/param)  grad norm %.3f ms\n",
                 static_cast<long long>(P), *ta * 1e3, 34.0 * P / *ta / 1e9, *tn * 1e3);
  return ok_status();
}

std::string profile_source(const cudaDeviceProp& prop) {
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  return std::string("loom calibrate (executor/cuda/calibrate.cpp) on ") + prop.name + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, driver API " + std::to_string(driver) + ", runtime " +
         std::to_string(runtime) + ", " + date +
         ". Microbenchmarks only (CUDA events, median of 7 batches of back-to-back launches, random inputs); "
         "no coefficient is fitted to an end-to-end step. gemm: the executor's cuBLASLt calls without "
         "bias/GELU epilogues (forward (T, OC, C), input gradient (T, C, OC), fp32 weight gradient "
         "(OC, C, T)) over GPT-2's layers and, beyond them, Llama-sized tensor-parallel slices and "
         "vocabularies (bench_planner_gemms); attention: the executor's causal kernel, head size 64 (heads as "
         "K/V heads) and 128 (grouped-query, 4 query heads per K/V head), 256 to 131072 tokens; gemm_fp8: the linear "
         "layers of that sweep as FP8 GEMMs, K-major "
         "operands, E4M3 (forward, fast accumulation) or E5M2 output gradients times E4M3, unit per-tensor "
         "scales (bench_fp8_gemms); GEMM inputs are not rotated (small shapes may run from "
         "L2). memory_by_kind: the executor's RMSNorm, SwiGLU, RoPE and fused cross-entropy and calibrate's row "
         "softmax, dropout and FP8 cast-transpose on tensors of 2^18 to 2^26 elements rotated through 256 MiB "
         "pools, bytes as loom's cost model counts the op (sim/mem_kind.hpp). memory: "
         "cudaMemGetInfo deltas (context against cudaMemGetInfo's total, after cudaFree(0)).";
}

// The benchmarks in order, on one stream, after the cuBLASLt handle's memory is measured.
Status run_benchmarks(const CalibrateOptions& o, HardwareProfile& prof, cudaStream_t stream) {
  const int64_t before_handle = free_bytes();
  auto gemm_or = Gemm::create();
  if (!gemm_or) return gemm_or.error();
  std::unique_ptr<Gemm> gemm = std::move(*gemm_or);
  prof.memory.workspace_bytes = static_cast<int64_t>(Gemm::kWorkspaceBytes);
  prof.memory.cublaslt_handle_bytes = before_handle - free_bytes() - prof.memory.workspace_bytes;
  LOOM_TRY(measure_malloc_granularity(prof));
  const int64_t before_kernels = free_bytes();
  Timer timer(stream);
  Bench b{o, prof, stream, timer};
  LOOM_TRY(bench_launch(b));
  LOOM_TRY(bench_gemm(b, *gemm));
  if (!o.quick) LOOM_TRY(bench_planner_gemms(b, *gemm));
  if (!o.quick && has_fp8_tensor_cores())
    LOOM_TRY(bench_fp8_gemms(b, *gemm));
  else if (o.progress)
    std::fprintf(stderr, "fp8 gemm: not measured (%s)\n", o.quick ? "--quick" : "no FP8 tensor cores: compute capability < 8.9");
  LOOM_TRY(bench_attention(b));
  LOOM_TRY(bench_memory_bound(b));
  MemoryKindBench kinds{o.quick, o.progress, stream,
                        [&timer](const std::function<Status(int)>& f) { return timer.median(f); }};
  LOOM_TRY(bench_memory_kinds(kinds, prof));
  for (int64_t P : o.quick ? std::vector<int64_t>{int64_t{1} << 24} : std::vector<int64_t>{124475904, 1557611200})
    LOOM_TRY(bench_optimizer(b, P));
  LOOM_TRY(cuda_status(cudaStreamSynchronize(stream), "sync", {}));
  // Every buffer is freed: what is still missing since before the first kernel is the kernels'
  // lazily loaded modules (and cuBLASLt's per-shape state).
  prof.memory.kernel_modules_bytes = std::max<int64_t>(0, before_kernels - free_bytes());
  return ok_status();
}

Expected<HardwareProfile> calibrate(const CalibrateOptions& o) {
  HardwareProfile prof;
  prof.name = o.name;
  LOOM_TRY(cuda_status(cudaSetDevice(o.device), "cudaSetDevice", {{"device", o.device}}));
  LOOM_TRY(cuda_status(cudaFree(nullptr), "CUDA context", {}));
  size_t f0 = 0, total = 0;
  LOOM_TRY(cuda_status(cudaMemGetInfo(&f0, &total), "cudaMemGetInfo", {}));
  cudaDeviceProp prop{};
  LOOM_TRY(cuda_status(cudaGetDeviceProperties(&prop, o.device), "device properties", {}));
  prof.device = prop.name;
  prof.memory.cuda_context_bytes = static_cast<int64_t>(total - f0);
  cudaStream_t stream = nullptr;
  LOOM_TRY(cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream", {}));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } sg{stream};
  LOOM_TRY(run_benchmarks(o, prof, stream));
  prof.source = profile_source(prop);
  if (o.progress)
    std::fprintf(stderr, "memory: context %.1f MiB, cuBLASLt handle %.1f MiB, kernel modules %.1f MiB, malloc unit %.1f MiB\n",
                 prof.memory.cuda_context_bytes / 1048576.0, prof.memory.cublaslt_handle_bytes / 1048576.0,
                 prof.memory.kernel_modules_bytes / 1048576.0, prof.memory.malloc_granularity_bytes / 1048576.0);
  return prof;
}

}  // namespace

int calibrate_command(const CalibrateOptions& o) {
  auto prof = calibrate(o);
  if (!prof) {
    std::fprintf(stderr, "loom: calibrate: %s\n", prof.error().message.c_str());
    return 3;
  }
  const std::string text = to_json(*prof).dump(1) + "\n";
  if (o.out.empty()) {
    std::fputs(text.c_str(), stdout);
    return 0;
  }
  if (auto st = write_text_file_atomic(o.out, text); !st) {
    std::fprintf(stderr, "loom: %s\n", st.error().message.c_str());
    return 2;
  }
  std::printf(
      "wrote %s: %zu GEMM shapes (+%zu variants, %zu FP8), %zu attention points, %zu bandwidth points "
      "(+%zu by kind)\n",
      o.out.c_str(), prof->gemm.size(), prof->gemm_variants.size(), prof->gemm_fp8.size(), prof->attention.size(),
      prof->memory_bound.size(), prof->memory_by_kind.size());
  return 0;
}

}  // namespace loom::cuda
