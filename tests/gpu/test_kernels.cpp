// Every CUDA op of executor/cuda against the fp32 CPU reference (executor/cpu), on random inputs.
// References are computed from the bf16 values the GPU really reads (round_bf16), so each bound
// covers only the kernel's own rounding. Bounds (relative L2 error):
//   bf16 output of an fp32-accumulated result: rounding to 8 mantissa bits leaves at most 2^-9
//     relative per element, about 2^-9/sqrt(3) = 1.1e-3 in the L2 norm: bound 5e-3.
//   attention: the probabilities (and dS in backward) are rounded to bf16 before they enter the
//     second product, a second rounding of the same size: bound 1e-2 forward, 2e-2 backward.
//   fp32 outputs (losses, AdamW, norms): only summation order and fast-math exp differ: 1e-4
//     or tighter, as stated beside each.
#include <cuda_fp8.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <string>
#include <vector>

#include "executor/cpu/ops.hpp"
#include "executor/cuda/adamw.cuh"
#include "executor/cuda/attention.cuh"
#include "executor/cuda/calibrate.cuh"
#include "executor/cuda/crossentropy.cuh"
#include "executor/cuda/encoder.cuh"
#include "executor/cuda/grad_norm.cuh"
#include "executor/cuda/layernorm.cuh"
#include "executor/cuda/matmul.cuh"
#include "sim/profile.hpp"
#include "gpu_testing.hpp"

using namespace loom::cuda;
using namespace loom::cuda::testing;
using bf = __nv_bfloat16;

namespace {
constexpr double kBf16Out = 5e-3;

std::unique_ptr<Gemm> make_gemm() {
  auto g = Gemm::create();
  REQUIRE(g.ok());
  return std::move(g.value());
}
}  // namespace

TEST_CASE("matmul forward: bias and GELU epilogues match the CPU reference", "[gpu][matmul]") {
  const int64_t N = 256, C = 192, OC = 320;
  auto gemm = make_gemm();
  const auto inp = round_bf16(random_floats(N * C, 1)), w = round_bf16(random_floats(OC * C, 2, 0.1)),
             b = round_bf16(random_floats(OC, 3));
  DeviceBuffer<bf> d_inp(N * C), d_w(OC * C), d_b(OC), d_out(N * OC), d_pre(N * OC);
  d_inp.upload(to_bf16(inp));
  d_w.upload(to_bf16(w));
  d_b.upload(to_bf16(b));
  std::vector<float> ref(N * OC);
  loom::cpu::FlopCounter flops;
  loom::cpu::matmul_forward(ref.data(), inp.data(), w.data(), b.data(), N, C, OC, flops);

  REQUIRE(matmul_forward(*gemm, d_out.get(), nullptr, d_inp.get(), d_w.get(), d_b.get(), N, C, OC, nullptr).ok());
  CHECK(rel_error(to_float(d_out.download()), ref) < kBf16Out);

  REQUIRE(matmul_forward(*gemm, d_out.get(), d_pre.get(), d_inp.get(), d_w.get(), d_b.get(), N, C, OC, nullptr).ok());
  std::vector<float> ref_gelu(N * OC);
  loom::cpu::gelu_forward(ref_gelu.data(), ref.data(), N * OC);
  CHECK(rel_error(to_float(d_pre.download()), ref) < kBf16Out);
  CHECK(rel_error(to_float(d_out.download()), ref_gelu) < kBf16Out);
}

TEST_CASE("matmul backward: input (with fused GELU derivative), weight and bias gradients",
          "[gpu][matmul]") {
  const int64_t N = 384, C = 128, OC = 256;
  auto gemm = make_gemm();
  const auto inp = round_bf16(random_floats(N * C, 4)), w = round_bf16(random_floats(OC * C, 5, 0.1)),
             dout = round_bf16(random_floats(N * OC, 6)), pre = round_bf16(random_floats(N * C, 7));
  const auto dw0 = random_floats(OC * C, 8), db0 = random_floats(OC, 9);  // accumulated into
  DeviceBuffer<bf> d_inp(N * C), d_w(OC * C), d_dout(N * OC), d_pre(N * C), d_dinp(N * C);
  DeviceBuffer<float> d_dw(OC * C), d_db(OC), scratch(bias_scratch_floats(N, OC));
  d_inp.upload(to_bf16(inp));
  d_w.upload(to_bf16(w));
  d_dout.upload(to_bf16(dout));
  d_pre.upload(to_bf16(pre));
  d_dw.upload(dw0);
  d_db.upload(db0);

  std::vector<float> dinp(N * C, 0.0f), dw = dw0, db = db0;
  loom::cpu::FlopCounter flops;
  loom::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, C, OC, flops);

  REQUIRE(matmul_backward_input(*gemm, d_dinp.get(), d_dout.get(), d_w.get(), nullptr, N, C, OC, nullptr).ok());
  CHECK(rel_error(to_float(d_dinp.download()), dinp) < kBf16Out);
  REQUIRE(matmul_backward_weight(*gemm, d_dw.get(), d_db.get(), scratch.get(), d_dout.get(), d_inp.get(), N, C, OC, nullptr).ok());
  CHECK(rel_error(d_dw.download(), dw) < 1e-5);  // fp32 output: summation order only
  CHECK(rel_error(d_db.download(), db) < 1e-5);

  // DGELU: the gradient of pre where the layer's input was gelu(pre)
  std::vector<float> dpre(N * C, 0.0f);
  loom::cpu::gelu_backward(dpre.data(), pre.data(), dinp.data(), N * C);
  REQUIRE(matmul_backward_input(*gemm, d_dinp.get(), d_dout.get(), d_w.get(), d_pre.get(), N, C, OC, nullptr).ok());
  CHECK(rel_error(to_float(d_dinp.download()), dpre) < kBf16Out);
}

TEST_CASE("matmul refuses shapes the tensor cores cannot take, naming op and shapes", "[gpu][matmul]") {
  auto gemm = make_gemm();
  const auto s = matmul_forward(*gemm, nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 16, nullptr);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("matmul_forward (N=4, C=12, OC=16)") != std::string::npos);
}

// FP8 GEMMs (loom calibrate's gemm_fp8 sweep): references from the FP8 values the GPU really
// reads, so the bound covers the accumulation and the output rounding only: bf16 out 5e-3 with
// fp32 promotion; fast accumulation (the tensor cores' own partial sums, about 2^-13 relative
// each on Hopper) 1e-2; fp32 accumulated into, summation order only.
TEST_CASE("matmul_fp8: E4M3 and E5M2 operands, per-tensor scales, bf16 or fp32 accumulated output", "[gpu][matmul]") {
  int dev = 0, major = 0, minor = 0;
  REQUIRE(cudaGetDevice(&dev) == cudaSuccess);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (major * 10 + minor < 89) {
    WARN("no FP8 tensor cores (compute capability " << major << "." << minor << "): matmul_fp8 not run");
    return;
  }
  const int64_t m = 192, n = 256, k = 320;
  auto gemm = make_gemm();
  const auto fa = random_floats(k * m, 21), fb = random_floats(k * n, 22, 0.5);
  std::vector<__nv_fp8_e4m3> a(fa.begin(), fa.end());
  std::vector<__nv_fp8_e5m2> b(fb.begin(), fb.end());
  const std::vector<float> scales{2.0f, 0.25f}, d0 = random_floats(m * n, 23);
  // D (m, n) column-major = scale_a scale_b A^T B, A (k, m) and B (k, n) column-major
  std::vector<float> ref(m * n);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      double acc = 0;
      for (int64_t x = 0; x < k; x++) acc += double(float(a[i * k + x])) * double(float(b[j * k + x]));
      ref[j * m + i] = static_cast<float>(acc * scales[0] * scales[1]);
    }
  DeviceBuffer<__nv_fp8_e4m3> d_a(k * m);
  DeviceBuffer<__nv_fp8_e5m2> d_b(k * n);
  DeviceBuffer<float> d_scales(2), d_acc(m * n);
  DeviceBuffer<bf> d_out(m * n);
  d_a.upload(a);
  d_b.upload(b);
  d_scales.upload(scales);
  for (bool fast : {false, true}) {
    REQUIRE(matmul_fp8(*gemm, d_out.get(), false, d_a.get(), false, d_b.get(), true, d_scales.get(), m, n, k, fast,
                       nullptr).ok());
    CHECK(rel_error(to_float(d_out.download()), ref) < (fast ? 1e-2 : kBf16Out));
  }
  d_acc.upload(d0);
  REQUIRE(matmul_fp8(*gemm, d_acc.get(), true, d_a.get(), false, d_b.get(), true, d_scales.get(), m, n, k, false,
                     nullptr).ok());
  std::vector<float> ref_acc = ref;
  for (size_t i = 0; i < ref_acc.size(); i++) ref_acc[i] += d0[i];
  CHECK(rel_error(d_acc.download(), ref_acc) < 1e-5);

  const auto both = matmul_fp8(*gemm, d_out.get(), false, d_b.get(), true, d_b.get(), true, d_scales.get(), 256, 256,
                               320, false, nullptr);
  REQUIRE_FALSE(both.ok());
  CHECK(both.error().message.find("no E5M2 x E5M2") != std::string::npos);
  const auto odd = matmul_fp8(*gemm, d_out.get(), false, d_a.get(), false, d_b.get(), true, d_scales.get(), 200, 256,
                              320, false, nullptr);
  REQUIRE_FALSE(odd.ok());
  CHECK(odd.error().message.find("matmul_fp8 (m=200, n=256, k=320)") != std::string::npos);
}

TEST_CASE("layernorm forward (fused residual) and backward", "[gpu][layernorm]") {
  const int64_t N = 300, C = 200;
  const auto a = round_bf16(random_floats(N * C, 10)), b = round_bf16(random_floats(N * C, 11));
  const auto w = round_bf16(random_floats(C, 12)), bias = round_bf16(random_floats(C, 13));
  std::vector<float> x(N * C);
  for (int64_t i = 0; i < N * C; i++) x[i] = a[i] + b[i];
  x = round_bf16(x);  // the residual as stored
  std::vector<float> out(N * C), mean(N), rstd(N);
  loom::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), N, C, 1e-5);

  DeviceBuffer<bf> d_a(N * C), d_b(N * C), d_w(C), d_bias(C), d_res(N * C), d_out(N * C);
  DeviceBuffer<float> d_mean(N), d_rstd(N);
  d_a.upload(to_bf16(a));
  d_b.upload(to_bf16(b));
  d_w.upload(to_bf16(w));
  d_bias.upload(to_bf16(bias));
  REQUIRE(layernorm_forward(d_res.get(), d_out.get(), d_mean.get(), d_rstd.get(), d_a.get(), d_b.get(),
                            d_w.get(), d_bias.get(), N, C, 1e-5, nullptr).ok());
  CHECK(rel_error(to_float(d_res.download()), x) == 0.0);  // the same bf16 rounding of a + b
  CHECK(rel_error(to_float(d_out.download()), out) < kBf16Out);
  CHECK(rel_error(d_mean.download(), mean) < 1e-5);
  CHECK(rel_error(d_rstd.download(), rstd) < 1e-5);

  const auto dout = round_bf16(random_floats(N * C, 14));
  const auto dinp0 = round_bf16(random_floats(N * C, 15));  // the residual gradient added into
  std::vector<float> dinp = dinp0, dw(C, 0.5f), db(C, -0.25f);
  loom::cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                                mean.data(), rstd.data(), N, C);
  DeviceBuffer<bf> d_dout(N * C), d_dinp(N * C);
  DeviceBuffer<float> d_dw(C), d_db(C), scratch(layernorm_scratch_floats(N, C));
  d_dout.upload(to_bf16(dout));
  d_dinp.upload(to_bf16(dinp0));
  d_dw.upload(std::vector<float>(C, 0.5f));
  d_db.upload(std::vector<float>(C, -0.25f));
  REQUIRE(layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), scratch.get(), d_dout.get(), d_res.get(),
                             d_w.get(), d_mean.get(), d_rstd.get(), N, C, nullptr).ok());
  CHECK(rel_error(to_float(d_dinp.download()), dinp) < kBf16Out);
  CHECK(rel_error(d_dw.download(), dw) < 1e-4);  // fp32, inputs identical; 1e-4 for mean/rstd rounding
  CHECK(rel_error(d_db.download(), db) < 1e-5);
}

TEST_CASE("fused causal attention forward and backward match the unfused CPU reference",
          "[gpu][attention]") {
  const int64_t B = 2, T = 192, NH = 3, HS = 64, C = NH * HS;
  const auto qkv = round_bf16(random_floats(B * T * 3 * C, 20));
  std::vector<float> q(B * T * C), k(B * T * C), v(B * T * C);
  for (int64_t bt = 0; bt < B * T; bt++) {
    for (int64_t c = 0; c < C; c++) {
      q[bt * C + c] = qkv[bt * 3 * C + c];
      k[bt * C + c] = qkv[bt * 3 * C + C + c];
      v[bt * C + c] = qkv[bt * 3 * C + 2 * C + c];
    }
  }
  std::vector<float> out(B * T * C), att(B * NH * T * T);
  loom::cpu::FlopCounter flops;
  loom::cpu::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, NH, NH, HS, flops);

  DeviceBuffer<bf> d_qkv(B * T * 3 * C), d_out(B * T * C);
  DeviceBuffer<float> d_lse(B * NH * T), d_delta(B * NH * T);
  d_qkv.upload(to_bf16(qkv));
  REQUIRE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, T, NH, nullptr).ok());
  const auto gpu_out = to_float(d_out.download());
  CHECK(rel_error(gpu_out, out) < 1e-2);

  const auto dout = round_bf16(random_floats(B * T * C, 21));
  std::vector<float> dq(B * T * C, 0.0f), dk(B * T * C, 0.0f), dv(B * T * C, 0.0f);
  loom::cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), att.data(), q.data(),
                                k.data(), v.data(), B, T, NH, NH, HS, flops);
  DeviceBuffer<bf> d_dout(B * T * C), d_dqkv(B * T * 3 * C);
  d_dout.upload(to_bf16(dout));
  REQUIRE(attention_backward(d_dqkv.get(), d_delta.get(), d_dout.get(), d_qkv.get(), d_out.get(),
                             d_lse.get(), B, T, NH, nullptr).ok());
  const auto dqkv = to_float(d_dqkv.download());
  std::vector<float> gq(B * T * C), gk(B * T * C), gv(B * T * C);
  for (int64_t bt = 0; bt < B * T; bt++) {
    for (int64_t c = 0; c < C; c++) {
      gq[bt * C + c] = dqkv[bt * 3 * C + c];
      gk[bt * C + c] = dqkv[bt * 3 * C + C + c];
      gv[bt * C + c] = dqkv[bt * 3 * C + 2 * C + c];
    }
  }
  CHECK(rel_error(gq, dq) < 2e-2);
  CHECK(rel_error(gk, dk) < 2e-2);
  CHECK(rel_error(gv, dv) < 2e-2);

  CHECK_FALSE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, 100, NH, nullptr).ok());
}

TEST_CASE("fused softmax cross-entropy: losses and in-place gradient, padded vocabulary masked",
          "[gpu][crossentropy]") {
  const int64_t N = 64, V = 1000, Vp = 1024;
  const auto logits = round_bf16(random_floats(N * Vp, 30, 3.0));
  std::vector<int32_t> targets(N);
  for (int64_t i = 0; i < N; i++) targets[i] = static_cast<int32_t>((i * 7919) % V);
  std::vector<float> losses(N), probs(N * Vp), dlogits(N * Vp, 0.0f), dlosses(N, 1.0f / N);
  loom::cpu::crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V, Vp);
  loom::cpu::crossentropy_backward(dlogits.data(), dlosses.data(), probs.data(), targets.data(), N, V, Vp);

  DeviceBuffer<bf> d_logits(N * Vp);
  DeviceBuffer<float> d_losses(N), d_sum(1);
  DeviceBuffer<int32_t> d_targets(N);
  d_logits.upload(to_bf16(logits));
  d_targets.upload(targets);
  REQUIRE(cudaMemset(d_sum.get(), 0, sizeof(float)) == cudaSuccess);
  REQUIRE(crossentropy_forward_backward(d_losses.get(), d_logits.get(), d_targets.get(), 1.0f / N, N, V, Vp, nullptr).ok());
  CHECK(rel_error(d_losses.download(), losses) < 1e-4);  // fp32; __expf's few-ulp error
  const auto g = to_float(d_logits.download());
  CHECK(rel_error(g, dlogits) < kBf16Out);
  for (int64_t n = 0; n < N; n++) {
    for (int64_t c = V; c < Vp; c++) REQUIRE(g[n * Vp + c] == 0.0f);
  }
  REQUIRE(accumulate_loss(d_sum.get(), d_losses.get(), N, 1.0f / N, nullptr).ok());
  double mean = 0;
  for (float l : losses) mean += l / N;
  CHECK(d_sum.download()[0] == Approx(mean).epsilon(1e-5));
}

TEST_CASE("embedding forward and backward", "[gpu][encoder]") {
  const int64_t B = 3, T = 64, C = 96, V = 50;
  const auto wte = round_bf16(random_floats(V * C, 40)), wpe = round_bf16(random_floats(T * C, 41));
  std::vector<int32_t> tokens(B * T);
  for (int64_t i = 0; i < B * T; i++) tokens[i] = static_cast<int32_t>((i * 31) % V);
  std::vector<float> out(B * T * C);
  loom::cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  DeviceBuffer<bf> d_wte(V * C), d_wpe(T * C), d_out(B * T * C);
  DeviceBuffer<int32_t> d_tok(B * T);
  d_wte.upload(to_bf16(wte));
  d_wpe.upload(to_bf16(wpe));
  d_tok.upload(tokens);
  REQUIRE(encoder_forward(d_out.get(), d_tok.get(), d_wte.get(), d_wpe.get(), B, T, C, nullptr).ok());
  CHECK(rel_error(to_float(d_out.download()), out) < kBf16Out);

  const auto dout = round_bf16(random_floats(B * T * C, 42));
  std::vector<float> dwte(V * C, 0.0f), dwpe(T * C, 0.0f);
  loom::cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  DeviceBuffer<bf> d_dout(B * T * C);
  DeviceBuffer<float> d_dwte(V * C), d_dwpe(T * C);
  d_dout.upload(to_bf16(dout));
  REQUIRE(cudaMemset(d_dwte.get(), 0, sizeof(float) * V * C) == cudaSuccess);
  REQUIRE(cudaMemset(d_dwpe.get(), 0, sizeof(float) * T * C) == cudaSuccess);
  REQUIRE(encoder_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tok.get(), B, T, C, nullptr).ok());
  CHECK(rel_error(d_dwte.download(), dwte) < 1e-6);  // fp32 sums of a few terms
  CHECK(rel_error(d_dwpe.download(), dwpe) < 1e-6);
}

TEST_CASE("AdamW over a chunk table and the gradient norm match the CPU reference", "[gpu][adamw]") {
  const int64_t n = 70000;  // two tensors, the first over one chunk
  auto params = random_floats(n, 50), grads = random_floats(n, 51, 0.01);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  const std::vector<TensorRange> tensors{{0, 66000, true}, {66048, n - 66048, false}};
  const auto chunks = adamw_chunks(tensors, 0.1f);
  AdamWHyper h;
  h.weight_decay = 0.1f;

  DeviceBuffer<float> d_p(n), d_g(n), d_m(n), d_v(n), d_norm(2), scratch(kGradNormBlocks);
  DeviceBuffer<bf> d_pb(n);
  DeviceBuffer<AdamWChunk> d_chunks(static_cast<int64_t>(chunks.size()));
  d_p.upload(params);
  d_m.upload(m);
  d_v.upload(v);
  d_chunks.upload(chunks);
  std::vector<float> ref_p = params;
  for (int64_t step = 1; step <= 3; step++) {
    d_g.upload(grads);
    REQUIRE(grad_norm(d_norm.get(), scratch.get(), d_g.get(), n, 0.0f, nullptr).ok());
    const double norm = std::sqrt(loom::cpu::grad_norm_squared(grads.data(), n));
    const auto dn = d_norm.download();
    CHECK(dn[0] == Approx(norm).epsilon(1e-5));  // fp32 partial sums of 70000 squares
    CHECK(dn[1] == 1.0f);
    REQUIRE(adamw_update(d_pb.get(), d_p.get(), d_g.get(), d_m.get(), d_v.get(), d_chunks.get(),
                         static_cast<int64_t>(chunks.size()), nullptr, h, step, nullptr).ok());
    for (const TensorRange& t : tensors) {
      loom::cpu::AdamWConfig c{3e-4, 0.9, 0.95, 1e-8, t.decay ? 0.1 : 0.0};
      loom::cpu::adamw_step(ref_p.data() + t.offset, grads.data() + t.offset, m.data() + t.offset,
                            v.data() + t.offset, t.numel, step, c);
    }
    grads = random_floats(n, 52 + step, 0.01);
  }
  const auto gp = d_p.download();
  // Only the updates differ (fp32 sqrt/division rounding), so compare the change in params.
  std::vector<float> dp_gpu(n), dp_ref(n);
  for (int64_t i = 0; i < n; i++) {
    dp_gpu[i] = gp[i] - params[i];
    dp_ref[i] = ref_p[i] - params[i];
  }
  // the gap [66000, 66048) is in no tensor: untouched
  for (int64_t i = 66000; i < 66048; i++) dp_ref[i] = 0.0f;
  CHECK(rel_error(dp_gpu, dp_ref) < 1e-3);  // differences of nearby fp32 numbers lose ~3 digits
  const auto g_after = d_g.download();
  CHECK(g_after[0] == 0.0f);  // gradients left at zero for the next accumulation
  CHECK(__bfloat162float(d_pb.download()[5]) == Approx(gp[5]).epsilon(1e-2));

  // clipping: coefficient max_norm / (norm + 1e-6)
  d_g.upload(grads);
  REQUIRE(grad_norm(d_norm.get(), scratch.get(), d_g.get(), n, 0.5f, nullptr).ok());
  const auto dn = d_norm.download();
  const double norm = std::sqrt(loom::cpu::grad_norm_squared(grads.data(), n));
  CHECK(dn[1] == Approx(loom::cpu::clip_scale(norm, 0.5)).epsilon(1e-5));
}

// Calibrate's own memory-bound kernels (executor/cuda/calibrate_kernels.cu), which time the
// kinds the executor has no kernel for (sim/mem_kind.hpp): they must do the work they stand for.
TEST_CASE("calibrate's softmax, dropout and FP8 cast-transpose kernels compute what they time", "[gpu][calibrate]") {
  const int64_t rows = 37, cols = 264;
  const auto x = round_bf16(random_floats(rows * cols, 61, 4.0)), dy = round_bf16(random_floats(rows * cols, 62));
  std::vector<float> y(rows * cols), dx(rows * cols);
  for (int64_t r = 0; r < rows; r++) {
    double mx = -1e30, sum = 0, dot = 0;
    for (int64_t c = 0; c < cols; c++) mx = std::max(mx, double(x[r * cols + c]));
    for (int64_t c = 0; c < cols; c++) sum += std::exp(double(x[r * cols + c]) - mx);
    for (int64_t c = 0; c < cols; c++) y[r * cols + c] = float(std::exp(double(x[r * cols + c]) - mx) / sum);
    const auto yb = round_bf16(std::vector<float>(y.begin() + r * cols, y.begin() + (r + 1) * cols));
    for (int64_t c = 0; c < cols; c++) dot += double(yb[c]) * dy[r * cols + c];
    for (int64_t c = 0; c < cols; c++) dx[r * cols + c] = float(yb[c] * (dy[r * cols + c] - dot));
  }
  DeviceBuffer<bf> d_x(rows * cols), d_y(rows * cols), d_dy(rows * cols), d_dx(rows * cols);
  d_x.upload(to_bf16(x));
  d_dy.upload(to_bf16(dy));
  REQUIRE(loom::cuda::softmax_rows(d_y.get(), d_x.get(), rows, cols, nullptr).ok());
  CHECK(rel_error(to_float(d_y.download()), y) < kBf16Out);
  REQUIRE(loom::cuda::softmax_rows_backward(d_dx.get(), d_y.get(), d_dy.get(), rows, cols, nullptr).ok());
  CHECK(rel_error(to_float(d_dx.download()), dx) < 1e-2);
  CHECK_FALSE(loom::cuda::softmax_rows(d_y.get(), d_x.get(), rows, 100, nullptr).ok());

  // Dropout p = 0.25: every output is 0 or x / 0.75, as the mask says; about a quarter dropped;
  // the backward passes the gradient through the same mask.
  const int64_t n = rows * cols;
  DeviceBuffer<uint8_t> d_mask(n);
  REQUIRE(loom::cuda::dropout_forward(d_y.get(), d_mask.get(), d_x.get(), n, 0.25f, 7, nullptr).ok());
  const auto yo = to_float(d_y.download());
  const auto mask = d_mask.download();
  int64_t dropped = 0;
  for (int64_t i = 0; i < n; i++) {
    REQUIRE(mask[i] <= 1);
    dropped += mask[i] == 0;
    CHECK(yo[i] == Approx(mask[i] ? x[i] / 0.75f : 0.0f).epsilon(1e-2).margin(1e-6));
  }
  CHECK(std::abs(double(dropped) / double(n) - 0.25) < 0.03);
  REQUIRE(loom::cuda::dropout_backward(d_dx.get(), d_dy.get(), d_mask.get(), n, 0.25f, nullptr).ok());
  const auto dxo = to_float(d_dx.download());
  for (int64_t i = 0; i < n; i++) CHECK(dxo[i] == Approx(mask[i] ? dy[i] / 0.75f : 0.0f).epsilon(1e-2).margin(1e-6));

  // FP8 cast-transpose: E4M3 of x * 0.5, as is and transposed, and the amax of |x|.
  DeviceBuffer<__nv_fp8_e4m3> d_q(n), d_qt(n);
  DeviceBuffer<float> d_amax(1);
  d_amax.upload(std::vector<float>{0.0f});
  REQUIRE(
      loom::cuda::fp8_cast_transpose(d_q.get(), d_qt.get(), d_amax.get(), d_x.get(), rows, cols, 0.5f, nullptr).ok());
  const auto q = d_q.download(), qt = d_qt.download();
  float amax = 0;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      const float want = float(__nv_fp8_e4m3(x[r * cols + c] * 0.5f));
      CHECK(float(q[r * cols + c]) == want);
      CHECK(float(qt[c * rows + r]) == want);
      amax = std::max(amax, std::abs(x[r * cols + c]));
    }
  CHECK(d_amax.download()[0] == amax);
}

// `loom calibrate --quick` end to end: the profile it writes reads back strictly (sorted tables,
// known kinds), with a curve for every memory-bound kind it measures, forward and backward.
TEST_CASE("calibrate --quick writes a profile that reads back, with every memory-bound kind", "[gpu][calibrate]") {
  const std::string out = "loom_gpu_test_quick_profile.json";
  loom::cuda::CalibrateOptions o;
  o.out = out;
  o.name = "gpu-test";
  o.quick = true;
  o.progress = false;
  REQUIRE(loom::cuda::calibrate_command(o) == 0);
  auto prof = loom::load_profile(out);
  std::remove(out.c_str());
  REQUIRE(prof);
  const loom::HardwareProfile& p = **prof;
  using loom::MemKind;
  for (MemKind k : {MemKind::norm, MemKind::activation, MemKind::rotary, MemKind::softmax, MemKind::dropout,
                    MemKind::cast, MemKind::cross_entropy}) {
    INFO(loom::mem_kind_name(k));
    CHECK(p.has_kind(k));
    CHECK(p.kind_bandwidth(k, false, 1e8) > 1e10);  // above 10 GB/s at 100 MB on any GPU
    CHECK(p.kind_bandwidth(k, true, 1e8) > 1e10);
  }
}
