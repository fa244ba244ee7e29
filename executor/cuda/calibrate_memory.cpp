// `loom calibrate`'s memory-bound kernels by kind (sim/mem_kind.hpp): each kind's kernel on
// tensors of growing size, forward and backward, recorded as the bytes loom's cost model counts
// for that op on that tensor (mem_kind.hpp's formulas, times its backward scale) over the median
// time. The kernels are the executor's own where it has one (RMSNorm, SwiGLU, RoPE, the fused
// cross-entropy) and calibrate's where it has none (softmax, dropout, FP8 cast-transpose).
// Every call works on a slot of buffers rotated through a pool larger than L2, as the
// elementwise benchmark does, so that no size is timed from cache.
#include "executor/cuda/calibrate_memory.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <tuple>
#include <vector>

#include "executor/cuda/calibrate.cuh"
#include "executor/cuda/crossentropy.cuh"
#include "executor/cuda/rmsnorm.cuh"
#include "executor/cuda/rope.cuh"
#include "executor/cuda/swiglu.cuh"
#include "sim/mem_kind.hpp"

namespace loom::cuda {
namespace {

// Device buffers released together.
struct Pool {
  std::vector<void*> ptrs;
  Pool() = default;
  Pool(const Pool&) = delete;
  ~Pool() {
    for (void* p : ptrs) cudaFree(p);
  }
  template <class T>
  Expected<T*> alloc(int64_t n, const char* what) {
    void* p = nullptr;
    LOOM_TRY(cuda_status(cudaMalloc(&p, sizeof(T) * static_cast<size_t>(n)), what, {{"elements", n}}));
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
};

struct Kinds {
  const MemoryKindBench& in;
  HardwareProfile& prof;
  int64_t pool = 0;  // elements per rotated operand (2 bytes each): more than L2 holds
};

// Records one point: `bytes` as the cost model counts them, over the median time of `call(slot)`.
Status record(Kinds& k, MemKind kind, bool backward, double bytes, const std::function<Status(int64_t)>& call,
              int64_t slots) {
  auto t = k.in.median([&](int i) { return call(i % slots); });
  if (!t) return t.error();
  k.prof.memory_by_kind.push_back({kind, backward, bytes, bytes / *t});
  if (k.in.progress)
    std::fprintf(stderr, "%-13s %-8s %12.0f bytes  %9.2f us  %7.1f GB/s\n", mem_kind_name(kind),
                 backward ? "backward" : "forward", bytes, *t * 1e6, bytes / *t / 1e9);
  return ok_status();
}

// The tensor sizes (elements of the tensor the kind's formula names): 2^18 to 2^26, x4.
std::vector<int64_t> sizes(bool quick) {
  std::vector<int64_t> v;
  for (int64_t n = int64_t{1} << 18; n <= (int64_t{1} << (quick ? 22 : 26)); n *= 4) v.push_back(n);
  return v;
}

// RMSNorm over (N, 4096) rows, no residual: x in, y and the fp32 rstd out; backward adds the
// input gradient into dinp and the weight gradient through its fixed row splits.
Status bench_norm(Kinds& k) {
  constexpr int64_t C = 4096;
  Pool p;
  auto x = p.alloc<bf16>(k.pool, "norm x"), y = p.alloc<bf16>(k.pool, "norm y"), dy = p.alloc<bf16>(k.pool, "norm dy");
  auto w = p.alloc<bf16>(C, "norm weight");
  auto rstd = p.alloc<float>(k.pool / C, "norm rstd");
  auto dw = p.alloc<float>(C, "norm dweight");
  if (!x || !y || !dy || !w || !rstd || !dw) return Error{"calibrate: could not allocate the norm buffers"};
  LOOM_TRY(fill_random_bf16(*x, k.pool, 41, 1.0f, k.in.stream));
  LOOM_TRY(fill_random_bf16(*dy, k.pool, 42, 1.0f, k.in.stream));
  LOOM_TRY(fill_random_bf16(*w, C, 43, 1.0f, k.in.stream));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t N = n / C, slots = k.pool / n;
    auto scratch = p.alloc<float>(rmsnorm_scratch_floats(N, C), "norm scratch");
    if (!scratch) return scratch.error();
    LOOM_TRY(record(
        k, MemKind::norm, false, norm_bytes(static_cast<double>(n), 2),
        [&](int64_t s) {
          return rmsnorm_forward(nullptr, *y + s * n, *rstd + s * N, *x + s * n, nullptr, *w, N, C, 1e-5, k.in.stream);
        },
        slots));
    LOOM_TRY(record(
        k, MemKind::norm, true, kElementwiseBackwardScale * norm_bytes(static_cast<double>(n), 2),
        [&](int64_t s) {
          return rmsnorm_backward(*y + s * n, *dw, *scratch, *dy + s * n, *x + s * n, *w, *rstd + s * N, N, C,
                                  k.in.stream);
        },
        slots));
  }
  return ok_status();
}

// SwiGLU of (N, 2F) gate|up rows into (N, F), F = 4096; n counts the product's elements.
Status bench_activation(Kinds& k) {
  constexpr int64_t F = 4096;
  Pool p;
  auto gu = p.alloc<bf16>(2 * k.pool, "swiglu gate|up"), out = p.alloc<bf16>(k.pool, "swiglu out");
  auto dgu = p.alloc<bf16>(2 * k.pool, "swiglu dgate|up");
  if (!gu || !out || !dgu) return Error{"calibrate: could not allocate the swiglu buffers"};
  LOOM_TRY(fill_random_bf16(*gu, 2 * k.pool, 44, 2.0f, k.in.stream));
  LOOM_TRY(fill_random_bf16(*out, k.pool, 45, 1.0f, k.in.stream));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t N = n / F, slots = k.pool / n;
    LOOM_TRY(record(
        k, MemKind::activation, false, gated_unit_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return swiglu_forward(*out + s * n, *gu + 2 * s * n, N, F, k.in.stream); }, slots));
    LOOM_TRY(record(
        k, MemKind::activation, true, kElementwiseBackwardScale * gated_unit_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return swiglu_backward(*dgu + 2 * s * n, *out + s * n, *gu + 2 * s * n, N, F, k.in.stream); },
        slots));
  }
  return ok_status();
}

// RoPE in place on q and k of a fused (T, 32 + 2 x 8 heads, 128) projection (Llama's grouped
// query attention); n counts the q and k elements, T x 40 x 128.
Status bench_rotary(Kinds& k) {
  constexpr int64_t NH = 32, NKV = 8, D = 128, qk = (NH + NKV) * D, row = (NH + 2 * NKV) * D;
  Pool p;
  const int64_t tokens_pool = k.pool / row + 1;
  auto qkv = p.alloc<bf16>(tokens_pool * row, "rope qkv");
  if (!qkv) return qkv.error();
  LOOM_TRY(fill_random_bf16(*qkv, tokens_pool * row, 46, 1.0f, k.in.stream));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t T = std::max<int64_t>(1, n / qk), slots = std::max<int64_t>(1, tokens_pool / T);
    const double bytes = rotary_bytes(static_cast<double>(T * qk), 2);
    LOOM_TRY(record(
        k, MemKind::rotary, false, bytes,
        [&](int64_t s) { return rope_forward(*qkv + s * T * row, 1, T, NH, NKV, D, 500000.0, k.in.stream); }, slots));
    LOOM_TRY(record(
        k, MemKind::rotary, true, kElementwiseBackwardScale * bytes,
        [&](int64_t s) { return rope_backward(*qkv + s * T * row, 1, T, NH, NKV, D, 500000.0, k.in.stream); }, slots));
  }
  return ok_status();
}

// Row softmax over scores of 2048 columns (the unfused attention's (b x heads x s, s)).
Status bench_softmax(Kinds& k) {
  constexpr int64_t S = 2048;
  Pool p;
  auto x = p.alloc<bf16>(k.pool, "softmax x"), y = p.alloc<bf16>(k.pool, "softmax y");
  auto dy = p.alloc<bf16>(k.pool, "softmax dy"), dx = p.alloc<bf16>(k.pool, "softmax dx");
  if (!x || !y || !dy || !dx) return Error{"calibrate: could not allocate the softmax buffers"};
  LOOM_TRY(fill_random_bf16(*x, k.pool, 47, 4.0f, k.in.stream));
  LOOM_TRY(fill_random_bf16(*dy, k.pool, 48, 1.0f, k.in.stream));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t rows = n / S, slots = k.pool / n;
    LOOM_TRY(record(
        k, MemKind::softmax, false, softmax_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return softmax_rows(*y + s * n, *x + s * n, rows, S, k.in.stream); }, slots));
    LOOM_TRY(record(
        k, MemKind::softmax, true, kUnfusedAttentionBackwardScale * softmax_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return softmax_rows_backward(*dx + s * n, *y + s * n, *dy + s * n, rows, S, k.in.stream); },
        slots));
  }
  return ok_status();
}

// Dropout (p = 0.1) with its one-byte mask, and its backward.
Status bench_dropout(Kinds& k) {
  Pool p;
  auto x = p.alloc<bf16>(k.pool, "dropout x"), y = p.alloc<bf16>(k.pool, "dropout y");
  auto mask = p.alloc<uint8_t>(k.pool, "dropout mask");
  if (!x || !y || !mask) return Error{"calibrate: could not allocate the dropout buffers"};
  LOOM_TRY(fill_random_bf16(*x, k.pool, 49, 1.0f, k.in.stream));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t slots = k.pool / n;
    LOOM_TRY(record(
        k, MemKind::dropout, false, dropout_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return dropout_forward(*y + s * n, *mask + s * n, *x + s * n, n, 0.1f, 50 + s, k.in.stream); },
        slots));
    LOOM_TRY(record(
        k, MemKind::dropout, true, kElementwiseBackwardScale * dropout_bytes(static_cast<double>(n), 2),
        [&](int64_t s) { return dropout_backward(*x + s * n, *y + s * n, *mask + s * n, n, 0.1f, k.in.stream); },
        slots));
  }
  return ok_status();
}

// FP8 cast-transpose of (n / 4096, 4096) bf16 into E4M3 and its transpose, with the amax.
Status bench_cast(Kinds& k) {
  constexpr int64_t C = 4096;
  Pool p;
  auto x = p.alloc<bf16>(k.pool, "cast x");
  auto out = p.alloc<uint8_t>(k.pool, "cast out"), out_t = p.alloc<uint8_t>(k.pool, "cast out_t");
  auto amax = p.alloc<float>(1, "cast amax");
  if (!x || !out || !out_t || !amax) return Error{"calibrate: could not allocate the cast buffers"};
  LOOM_TRY(fill_random_bf16(*x, k.pool, 51, 1.0f, k.in.stream));
  LOOM_TRY(cuda_status(cudaMemsetAsync(*amax, 0, sizeof(float), k.in.stream), "memset", {}));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t rows = n / C, slots = k.pool / n;
    LOOM_TRY(record(
        k, MemKind::cast, false, fp8_cast_bytes(static_cast<double>(n)),
        [&](int64_t s) {
          return fp8_cast_transpose(*out + s * n, *out_t + s * n, *amax, *x + s * n, rows, C, 1.0f, k.in.stream);
        },
        slots));
  }
  return ok_status();
}

// The fused softmax + cross-entropy + gradient over (N, 32768) logits, in place.
Status bench_cross_entropy(Kinds& k) {
  constexpr int64_t V = 32768;
  Pool p;
  auto logits = p.alloc<bf16>(k.pool, "cross-entropy logits");
  auto losses = p.alloc<float>(k.pool / V, "cross-entropy losses");
  auto targets = p.alloc<int32_t>(k.pool / V, "cross-entropy targets");
  if (!logits || !losses || !targets) return Error{"calibrate: could not allocate the cross-entropy buffers"};
  LOOM_TRY(fill_random_bf16(*logits, k.pool, 52, 4.0f, k.in.stream));
  LOOM_TRY(cuda_status(cudaMemsetAsync(*targets, 0, sizeof(int32_t) * static_cast<size_t>(k.pool / V), k.in.stream),
                       "memset", {}));
  for (int64_t n : sizes(k.in.quick)) {
    const int64_t N = n / V, slots = k.pool / n;
    LOOM_TRY(record(
        k, MemKind::cross_entropy, false, fused_cross_entropy_bytes(static_cast<double>(n), 2),
        [&](int64_t s) {
          return crossentropy_forward_backward(*losses + s * N, *logits + s * n, *targets + s * N, 1.0f, N, V, V,
                                               k.in.stream);
        },
        slots));
  }
  return ok_status();
}

}  // namespace

Status bench_memory_kinds(const MemoryKindBench& in, HardwareProfile& prof) {
  Kinds k{in, prof, int64_t{1} << (in.quick ? 24 : 27)};
  for (auto bench :
       {bench_norm, bench_activation, bench_rotary, bench_softmax, bench_dropout, bench_cast, bench_cross_entropy})
    LOOM_TRY(bench(k));
  // The profile's table is sorted by (kind, pass, bytes) (sim/profile.hpp).
  std::sort(prof.memory_by_kind.begin(), prof.memory_by_kind.end(), [](const auto& a, const auto& b) {
    return std::tuple{static_cast<int>(a.kind), a.backward, a.bytes} <
           std::tuple{static_cast<int>(b.kind), b.backward, b.bytes};
  });
  return ok_status();
}

}  // namespace loom::cuda
