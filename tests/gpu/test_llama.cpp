// The llama family on the CUDA backend: its kernels (RMSNorm, RoPE, SwiGLU, grouped-query
// attention) against the fp32 CPU reference ops (executor/cpu), and the whole model against
// cpu::Gpt, as test_kernels.cpp and test_model.cpp do for GPT-2. References are computed from the
// bf16 values the GPU really reads (round_bf16). Bounds (relative L2 error), as test_kernels.cpp:
//   bf16 output of an fp32 result: 2^-9 relative per element at most, ~1.1e-3 in L2: 5e-3.
//   attention: probabilities (and dS) rounded to bf16 before the second product: 1e-2 forward,
//     2e-2 backward (each kv head's gradient sums G q heads' bf16-rounded terms, no worse).
//   fp32 outputs (norm weight gradients): summation order and rstd's rounding only: 1e-4.
// The memory and validation cases need no GPU (host arithmetic only).
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "executor/cpu/gpt.hpp"
#include "executor/cpu/grad_norm.hpp"
#include "executor/cpu/ops.hpp"
#include "executor/cpu/synthetic_data.hpp"
#include "executor/cuda/attention.cuh"
#include "executor/cuda/cuda_executor.hpp"
#include "executor/cuda/gpt.cuh"
#include "executor/cuda/rmsnorm.cuh"
#include "executor/cuda/rope.cuh"
#include "executor/cuda/swiglu.cuh"
#include "gpu_testing.hpp"
#include "model_testing.hpp"
#include "sim/model_math.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom::cuda;
using namespace loom::cuda::testing;
using bf = __nv_bfloat16;

namespace {
constexpr double kBf16Out = 5e-3;

// (B, T, H + 2 Hkv, d) rows split into q (B, T, H, d), k, v (B, T, Hkv, d), and back.
struct Qkv {
  std::vector<float> q, k, v;
};
Qkv split_qkv(const std::vector<float>& qkv, int64_t BT, int64_t H, int64_t Hkv, int64_t d) {
  const int64_t Q = H * d, KV = Hkv * d, row = Q + 2 * KV;
  Qkv out{std::vector<float>(BT * Q), std::vector<float>(BT * KV), std::vector<float>(BT * KV)};
  for (int64_t r = 0; r < BT; r++) {
    for (int64_t c = 0; c < Q; c++) out.q[r * Q + c] = qkv[r * row + c];
    for (int64_t c = 0; c < KV; c++) {
      out.k[r * KV + c] = qkv[r * row + Q + c];
      out.v[r * KV + c] = qkv[r * row + Q + KV + c];
    }
  }
  return out;
}

// A small Llama-3-style model: GQA (2 q heads per kv head), SwiGLU, untied head, RoPE base of
// Llama 3 (models/llama3-8b.json), head size 64 as the CUDA attention needs.
loom::ModelSpec tiny_llama() {
  loom::ModelSpec s = tiny_gpt();  // 2 layers, ffn 512, vocab 250 padded to 256, seq 128
  s.name = "tiny-llama";
  s.family = loom::Family::llama;
  s.hidden = 256;
  s.heads = 4;
  s.kv_heads = 2;
  s.tied_embeddings = false;
  s.rope_theta = 500000;
  s.norm_eps = 1e-5;
  return s;
}

}  // namespace

TEST_CASE("rmsnorm forward (fused residual) and backward", "[gpu][rmsnorm]") {
  const int64_t N = 300, C = 264;  // C a multiple of 8 but not of 256: the tail of a warp's row
  const auto a = round_bf16(random_floats(N * C, 60)), b = round_bf16(random_floats(N * C, 61));
  const auto w = round_bf16(random_floats(C, 62));
  std::vector<float> x(N * C);
  for (int64_t i = 0; i < N * C; i++) x[i] = a[i] + b[i];
  x = round_bf16(x);  // the residual as stored
  std::vector<float> out(N * C), rstd(N);
  loom::cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);

  DeviceBuffer<bf> d_a(N * C), d_b(N * C), d_w(C), d_res(N * C), d_out(N * C), d_out2(N * C);
  DeviceBuffer<float> d_rstd(N), d_rstd2(N);
  d_a.upload(to_bf16(a));
  d_b.upload(to_bf16(b));
  d_w.upload(to_bf16(w));
  REQUIRE(rmsnorm_forward(d_res.get(), d_out.get(), d_rstd.get(), d_a.get(), d_b.get(), d_w.get(), N, C, 1e-5, nullptr).ok());
  CHECK(rel_error(to_float(d_res.download()), x) == 0.0);  // the same bf16 rounding of a + b
  CHECK(rel_error(to_float(d_out.download()), out) < kBf16Out);
  CHECK(rel_error(d_rstd.download(), rstd) < 1e-5);  // fp32: summation order and rsqrtf
  // unfused (b == nullptr): normalizes a as is; the stored residual gives the same bits
  REQUIRE(rmsnorm_forward(nullptr, d_out2.get(), d_rstd2.get(), d_res.get(), nullptr, d_w.get(), N, C, 1e-5, nullptr).ok());
  CHECK(rel_error(to_float(d_out2.download()), to_float(d_out.download())) == 0.0);

  const auto dout = round_bf16(random_floats(N * C, 63));
  const auto dinp0 = round_bf16(random_floats(N * C, 64));  // the residual gradient added into
  std::vector<float> dinp = dinp0, dw(C, 0.5f);
  loom::cpu::rmsnorm_backward(dinp.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  DeviceBuffer<bf> d_dout(N * C), d_dinp(N * C);
  DeviceBuffer<float> d_dw(C), scratch(rmsnorm_scratch_floats(N, C));
  d_dout.upload(to_bf16(dout));
  d_dinp.upload(to_bf16(dinp0));
  d_dw.upload(std::vector<float>(C, 0.5f));
  REQUIRE(rmsnorm_backward(d_dinp.get(), d_dw.get(), scratch.get(), d_dout.get(), d_res.get(), d_w.get(),
                           d_rstd.get(), N, C, nullptr).ok());
  CHECK(rel_error(to_float(d_dinp.download()), dinp) < kBf16Out);
  CHECK(rel_error(d_dw.download(), dw) < 1e-4);  // fp32, inputs identical; 1e-4 for rstd rounding

  const auto s = rmsnorm_forward(nullptr, d_out.get(), d_rstd.get(), d_a.get(), nullptr, d_w.get(), N, 12, 1e-5, nullptr);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("rmsnorm_forward (N=300, C=12)") != std::string::npos);
}

TEST_CASE("rope rotates q and k in place inside the fused qkv buffer, as the CPU reference",
          "[gpu][rope]") {
  const int64_t B = 2, T = 96, H = 4, Hkv = 2, d = 64, row = (H + 2 * Hkv) * d;
  const double theta = 500000;  // Llama 3's base: the low frequencies matter
  const auto qkv = round_bf16(random_floats(B * T * row, 70));
  const Qkv in = split_qkv(qkv, B * T, H, Hkv, d);
  std::vector<float> q_ref(in.q.size()), k_ref(in.k.size());
  loom::cpu::rope_forward(q_ref.data(), in.q.data(), B, T, H, d, theta);
  loom::cpu::rope_forward(k_ref.data(), in.k.data(), B, T, Hkv, d, theta);

  DeviceBuffer<bf> d_qkv(B * T * row);
  d_qkv.upload(to_bf16(qkv));
  REQUIRE(rope_forward(d_qkv.get(), B, T, H, Hkv, d, theta, nullptr).ok());
  const Qkv got = split_qkv(to_float(d_qkv.download()), B * T, H, Hkv, d);
  CHECK(rel_error(got.q, q_ref) < kBf16Out);
  CHECK(rel_error(got.k, k_ref) < kBf16Out);
  CHECK(rel_error(got.v, in.v) == 0.0);  // v is not rotated

  // backward: the inverse rotation of the q and k gradients, in place; v's gradient untouched
  const auto dqkv = round_bf16(random_floats(B * T * row, 71));
  const Qkv din = split_qkv(dqkv, B * T, H, Hkv, d);
  std::vector<float> dq_ref(din.q.size(), 0.0f), dk_ref(din.k.size(), 0.0f);
  loom::cpu::rope_backward(dq_ref.data(), din.q.data(), B, T, H, d, theta);
  loom::cpu::rope_backward(dk_ref.data(), din.k.data(), B, T, Hkv, d, theta);
  d_qkv.upload(to_bf16(dqkv));
  REQUIRE(rope_backward(d_qkv.get(), B, T, H, Hkv, d, theta, nullptr).ok());
  const Qkv dgot = split_qkv(to_float(d_qkv.download()), B * T, H, Hkv, d);
  CHECK(rel_error(dgot.q, dq_ref) < kBf16Out);
  CHECK(rel_error(dgot.k, dk_ref) < kBf16Out);
  CHECK(rel_error(dgot.v, din.v) == 0.0);

  CHECK_FALSE(rope_forward(d_qkv.get(), B, T, H, Hkv, 63, theta, nullptr).ok());  // odd head size
  CHECK_FALSE(rope_forward(d_qkv.get(), B, T, H, Hkv, d, 0.0, nullptr).ok());    // no base
}

TEST_CASE("swiglu forward and backward over the fused gate|up buffer, in place too", "[gpu][swiglu]") {
  const int64_t N = 200, F = 264;
  const auto gateup = round_bf16(random_floats(N * 2 * F, 80, 2.0));  // both sides of silu's bend
  std::vector<float> gate(N * F), up(N * F);
  for (int64_t n = 0; n < N; n++) {
    for (int64_t j = 0; j < F; j++) {
      gate[n * F + j] = gateup[n * 2 * F + j];
      up[n * F + j] = gateup[n * 2 * F + F + j];
    }
  }
  std::vector<float> out(N * F);
  loom::cpu::swiglu_forward(out.data(), gate.data(), up.data(), N * F);
  DeviceBuffer<bf> d_gateup(N * 2 * F), d_out(N * F), d_dgateup(N * 2 * F), d_dout(N * F);
  d_gateup.upload(to_bf16(gateup));
  REQUIRE(swiglu_forward(d_out.get(), d_gateup.get(), N, F, nullptr).ok());
  CHECK(rel_error(to_float(d_out.download()), out) < kBf16Out);

  const auto dout = round_bf16(random_floats(N * F, 81));
  std::vector<float> dgate(N * F, 0.0f), dup(N * F, 0.0f);
  loom::cpu::swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), N * F);
  d_dout.upload(to_bf16(dout));
  REQUIRE(swiglu_backward(d_dgateup.get(), d_dout.get(), d_gateup.get(), N, F, nullptr).ok());
  const auto g = to_float(d_dgateup.download());
  std::vector<float> g_gate(N * F), g_up(N * F);
  for (int64_t n = 0; n < N; n++) {
    for (int64_t j = 0; j < F; j++) {
      g_gate[n * F + j] = g[n * 2 * F + j];
      g_up[n * F + j] = g[n * 2 * F + F + j];
    }
  }
  CHECK(rel_error(g_gate, dgate) < kBf16Out);
  CHECK(rel_error(g_up, dup) < kBf16Out);
  // in place over gate|up (how cuda::Gpt calls it): the same arithmetic, the same bits
  REQUIRE(swiglu_backward(d_gateup.get(), d_dout.get(), d_gateup.get(), N, F, nullptr).ok());
  CHECK(rel_error(to_float(d_gateup.download()), g) == 0.0);

  CHECK_FALSE(swiglu_forward(d_out.get(), d_gateup.get(), N, 12, nullptr).ok());
}

TEST_CASE("grouped-query attention forward and backward match the CPU reference", "[gpu][attention]") {
  for (const int64_t Hkv : {int64_t{2}, int64_t{1}}) {  // groups of 2 q heads; multi-query
    const int64_t B = 2, T = 192, H = 4, HS = 64, row = (H + 2 * Hkv) * HS, C = H * HS;
    INFO("kv heads " << Hkv);
    const auto qkv = round_bf16(random_floats(B * T * row, 90 + Hkv));
    const Qkv in = split_qkv(qkv, B * T, H, Hkv, HS);
    std::vector<float> out(B * T * C), att(B * H * T * T);
    loom::cpu::FlopCounter flops;
    loom::cpu::attention_forward(out.data(), att.data(), in.q.data(), in.k.data(), in.v.data(), B, T, H, Hkv, HS, flops);

    DeviceBuffer<bf> d_qkv(B * T * row), d_out(B * T * C);
    DeviceBuffer<float> d_lse(B * H * T), d_delta(B * H * T);
    d_qkv.upload(to_bf16(qkv));
    REQUIRE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, T, H, Hkv, nullptr).ok());
    CHECK(rel_error(to_float(d_out.download()), out) < 1e-2);

    const auto dout = round_bf16(random_floats(B * T * C, 95 + Hkv));
    std::vector<float> dq(in.q.size(), 0.0f), dk(in.k.size(), 0.0f), dv(in.v.size(), 0.0f);
    loom::cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), att.data(), in.q.data(),
                                  in.k.data(), in.v.data(), B, T, H, Hkv, HS, flops);
    DeviceBuffer<bf> d_dout(B * T * C), d_dqkv(B * T * row);
    d_dout.upload(to_bf16(dout));
    REQUIRE(attention_backward(d_dqkv.get(), d_delta.get(), d_dout.get(), d_qkv.get(), d_out.get(),
                               d_lse.get(), B, T, H, Hkv, nullptr).ok());
    const auto dqkv = to_float(d_dqkv.download());  // poisoned first: every element written
    const Qkv got = split_qkv(dqkv, B * T, H, Hkv, HS);
    CHECK(rel_error(got.q, dq) < 2e-2);
    CHECK(rel_error(got.k, dk) < 2e-2);
    CHECK(rel_error(got.v, dv) < 2e-2);
  }
  DeviceBuffer<bf> d_qkv(2 * 64 * 7 * 64), d_out(2 * 64 * 4 * 64);
  DeviceBuffer<float> d_lse(2 * 4 * 64);
  const auto s = attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), 2, 64, 4, 3, nullptr);
  REQUIRE_FALSE(s.ok());  // 3 kv heads cannot share 4 q heads
  CHECK(s.error().message.find("NKV >= 1 dividing NH") != std::string::npos);
}

TEST_CASE("memory_needed of a llama model, exact, with and without full recompute", "[gpu][memory]") {
  const loom::ModelSpec spec = tiny_llama();  // C 256, H 4, Hkv 2, F 512, Vp 256, L 2
  const int64_t B = 4, T = 128, N = B * T;
  auto none = Gpt::memory_needed(spec, B, T);
  auto full = Gpt::memory_needed(spec, B, T, loom::Recompute::full);
  REQUIRE(none.ok());
  REQUIRE(full.ok());
  // Parameters, each tensor padded to 128 elements (all already are): wte and lm_head 256 x 256,
  // per layer norm1 256, qkv (4 + 2*2)*64 x 256, o 256 x 256, norm2 256, gate_up 1024 x 256,
  // down 256 x 512, and norm_f 256: P = 2*65536 + 2*590336 + 256 = 1312000.
  const int64_t P = 1312000;
  CHECK(none->weights == 2 * P);
  CHECK(none->grads == 4 * P);
  CHECK(none->optimizer == 12 * P);
  // Activations (every buffer a multiple of 256 bytes here): per layer ln1, atty, res2, ln2,
  // res3 (N C bf16 each), qkv N*512, gate|up N*1024, silu(gate)*up N*512 (bf16), rstd x2 (fp32 N),
  // lse (fp32 N*4); once: the embedding output and the final norm (N C + rstd), the projection
  // output, the backward scratch dres, dln, datty (N C each), dqkv (N*512), dfch (N*512) and
  // delta (fp32 N*4).
  const int64_t layer = 2 * N * (5 * 256 + 512 + 1024 + 512) + 4 * N * (2 + 4);
  const int64_t once = 2 * N * 256 + (2 * N * 256 + 4 * N) + 2 * N * 256 + 3 * 2 * N * 256 +
                       2 * N * (512 + 512) + 4 * N * 4;
  CHECK(layer == 3420160);
  CHECK(none->activations == 2 * layer + once);
  CHECK(none->activations == 9472000);
  // Full recompute: one layer's worth shared, plus each layer's output (N C bf16).
  CHECK(full->activations == layer + 2 * N * 256 + once);
  CHECK(none->activations - full->activations == (spec.layers - 1) * (layer - 2 * N * 256));
  CHECK(none->logits == 2 * N * 256 + 4 * N);  // bf16 logits (their gradient in place), fp32 losses
  CHECK(full->logits == none->logits);
  // Workspace: cuBLASLt's 32 MiB, norm-weight partial sums (16 row splits x 256 fp32), 4 scalars
  // (one 256-byte unit) and the AdamW chunk table (25 chunks of 24 bytes, 768 bytes).
  CHECK(none->workspace == (int64_t{32} << 20) + 16 * 256 * 4 + 256 + 768);
  CHECK(full->workspace == none->workspace);
}

TEST_CASE("validate_for_cuda_model accepts llama models the kernels run, rejects the rest with the rule",
          "[gpu][validate]") {
  // The zoo's Llama 3 models have 128-wide heads, which the attention kernel does not take ...
  auto llama8b = loom::load_model("llama3-8b", "--model", nullptr);
  REQUIRE(llama8b.ok());
  auto s = validate_for_cuda_model(*llama8b, 1, 8192);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("model.hidden: hidden / heads must be 64") != std::string::npos);
  // ... the same model cut into 64-wide heads (64 q heads sharing 16 kv heads) runs
  loom::ModelSpec narrow = *llama8b;
  narrow.heads = 64;
  narrow.kv_heads = 16;
  CHECK(validate_for_cuda_model(narrow, 1, 8192).ok());
  CHECK(Gpt::memory_needed(narrow, 1, 8192, loom::Recompute::full).ok());

  loom::ModelSpec m = tiny_llama();
  m.kv_heads = 3;
  s = validate_for_cuda_model(m, 1, 128);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("model.kv_heads: must divide heads") != std::string::npos);
  m = tiny_llama();
  m.rope_theta = 0;
  s = validate_for_cuda_model(m, 1, 128);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("model.rope_theta") != std::string::npos);
  m = tiny_llama();
  m.family = loom::Family::gpt;  // GQA is the llama family's on this backend
  s = validate_for_cuda_model(m, 1, 128);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("model.kv_heads: must equal heads for the gpt family") != std::string::npos);
  m = tiny_llama();
  s = validate_for_cuda_model(m, 1, 96);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("train.seq") != std::string::npos);
}

TEST_CASE("the CUDA llama trains like the CPU reference model, and full recompute changes nothing",
          "[gpu][model][llama]") {
  const loom::ModelSpec spec = tiny_llama();
  const int64_t B = 4, T = 128;
  const uint64_t seed = 1337;
  auto cpu_or = loom::cpu::Gpt::create(spec, {seed, 0, padded_vocab(spec.vocab)});
  REQUIRE(cpu_or.ok());
  loom::cpu::Gpt& cpu = cpu_or.value();
  auto gpu_or = Gpt::create(spec, B, T, seed, nullptr);
  REQUIRE(gpu_or.ok());
  Gpt& gpu = *gpu_or.value();
  auto rc_or = Gpt::create(spec, B, T, seed, nullptr, loom::Recompute::full);
  REQUIRE(rc_or.ok());
  Gpt& rc = *rc_or.value();
  CHECK(gpu.num_params() == cpu.num_params());
  CHECK(gpu.rope_theta() == cpu.rope_theta());  // both cpu::default_rope_theta(spec)
  CHECK(rc.memory().activations < gpu.memory().activations);

  check_same_init(gpu, cpu);

  const loom::cpu::SyntheticStream data{spec.vocab, 7, T / 2};
  std::vector<int32_t> tokens(2 * B * T);
  DeviceBuffer<int32_t> d_tokens(2 * B * T);
  loom::cpu::AdamWConfig cpu_adam{1e-3, 0.9, 0.95, 1e-8, 0.1};
  AdamWHyper gpu_adam;
  gpu_adam.lr = 1e-3f;
  gpu_adam.weight_decay = 0.1f;
  loom::cpu::FlopCounter flops;
  std::vector<double> gpu_losses;
  for (int64_t step = 1; step <= 6; step++) {
    loom::cpu::synthetic_batch(tokens.data(), tokens.data() + B * T, data, (step - 1) * B, B, T);
    d_tokens.upload(tokens);
    auto cpu_loss = cpu.forward(tokens.data(), tokens.data() + B * T, B, T, flops);
    REQUIRE(cpu_loss.ok());
    REQUIRE(cpu.backward(flops).ok());
    REQUIRE(gpu.forward_backward(d_tokens.get(), d_tokens.get() + B * T, 1.0f).ok());
    REQUIRE(rc.forward_backward(d_tokens.get(), d_tokens.get() + B * T, 1.0f).ok());
    if (step == 1) {  // gradients of the first step, before any update
      check_first_grads(gpu, cpu);
      // full recompute rebuilds the same activations with the same kernels: only the embedding
      // gradient's fp32 atomics (encoder.cuh) may add in another order
      const auto g_rc = download(rc.grads(), rc.num_param_elements());
      CHECK(rel_error(g_rc, download(gpu.grads(), gpu.num_param_elements())) < 1e-6);
    }
    const double cpu_norm = loom::cpu::clip_grad_norm(cpu.grads().data(), static_cast<int64_t>(cpu.grads().size()), 1.0);
    cpu.update(cpu_adam, step);
    cpu.zero_grad();
    REQUIRE(gpu.update(gpu_adam, 1.0f, step).ok());
    REQUIRE(rc.update(gpu_adam, 1.0f, step).ok());
    auto loss_norm = gpu.take_loss_and_norm();
    REQUIRE(loss_norm.ok());
    auto rc_loss_norm = rc.take_loss_and_norm();
    REQUIRE(rc_loss_norm.ok());
    gpu_losses.push_back(loss_norm->first);
    INFO("step " << step << " cpu loss " << *cpu_loss << " gpu loss " << loss_norm->first << " recompute loss "
                 << rc_loss_norm->first << " cpu norm " << cpu_norm << " gpu norm " << loss_norm->second);
    check_step(loss_norm->first, *cpu_loss, loss_norm->second, cpu_norm);
    // the recompute model's weights drift from the other's only by the atomics' last bits
    CHECK(std::abs(rc_loss_norm->first - loss_norm->first) < 1e-4 * loss_norm->first);
  }
  CHECK(gpu_losses.back() < gpu_losses.front());  // it learns
}

TEST_CASE("the gpt family's buffers are unchanged by llama support: recorded H100 runs' bytes",
          "[gpu][memory]") {
  // traces/h100/gpt2-124m-b8-s1024/measured.json and gpt2-1.5b-b1-s1024/measured.json, written by
  // run_cuda from Gpt::memory_needed before the llama family existed.
  struct Recorded {
    const char* model;
    int64_t B, T, weights, grads, optimizer, activations, logits, workspace;
  };
  for (const Recorded& r : {Recorded{"gpt2-124m", 8, 1024, 248951808, 497903616, 1493710848, 2586247168,
                                     824213504, 34143488},
                            Recorded{"gpt2-1.5b", 1, 1024, 3115416064, 6230832128, 18692496384, 2564993024,
                                     103026688, 34547456}}) {
    INFO(r.model);
    auto spec = loom::load_model(r.model, "--model", nullptr);
    REQUIRE(spec.ok());
    auto m = Gpt::memory_needed(*spec, r.B, r.T);
    REQUIRE(m.ok());
    CHECK(m->weights == r.weights);
    CHECK(m->grads == r.grads);
    CHECK(m->optimizer == r.optimizer);
    CHECK(m->activations == r.activations);
    CHECK(m->logits == r.logits);
    CHECK(m->workspace == r.workspace);
  }
}

TEST_CASE("full recompute on the gpt family: the same loss and gradients with less memory",
          "[gpu][model][recompute]") {
  const loom::ModelSpec spec = tiny_gpt();  // test_model.cpp's
  const int64_t B = 4, T = 128;
  auto a_or = Gpt::create(spec, B, T, 1337, nullptr);
  auto b_or = Gpt::create(spec, B, T, 1337, nullptr, loom::Recompute::full);
  REQUIRE(a_or.ok());
  REQUIRE(b_or.ok());
  Gpt& a = *a_or.value();
  Gpt& b = *b_or.value();
  CHECK(b.recompute_full());
  CHECK(b.memory().activations < a.memory().activations);
  const loom::cpu::SyntheticStream data{spec.vocab, 7, T / 2};
  std::vector<int32_t> tokens(2 * B * T);
  loom::cpu::synthetic_batch(tokens.data(), tokens.data() + B * T, data, 0, B, T);
  DeviceBuffer<int32_t> d_tokens(2 * B * T);
  d_tokens.upload(tokens);
  for (int micro = 0; micro < 2; micro++) {  // two accumulated micro-batches
    REQUIRE(a.forward_backward(d_tokens.get(), d_tokens.get() + B * T, 0.5f).ok());
    REQUIRE(b.forward_backward(d_tokens.get(), d_tokens.get() + B * T, 0.5f).ok());
  }
  // the same kernels on the same bits: only the embedding gradient's fp32 atomics may differ
  CHECK(rel_error(download(b.grads(), b.num_param_elements()), download(a.grads(), a.num_param_elements())) < 1e-6);
  REQUIRE(a.update(AdamWHyper{}, 1.0f, 1).ok());
  REQUIRE(b.update(AdamWHyper{}, 1.0f, 1).ok());
  auto la = a.take_loss_and_norm(), lb = b.take_loss_and_norm();
  REQUIRE(la.ok());
  REQUIRE(lb.ok());
  // forward is the same computation in both; 1e-6 only in case cuBLASLt picks a GEMM whose
  // split-K reduction order is not fixed (its reproducibility promise is per handle and stream)
  CHECK(std::abs(la->first - lb->first) <= 1e-6 * std::abs(la->first));
}

TEST_CASE("execute runs a llama plan with full recompute, reporting the recompute's memory and FLOPs",
          "[gpu][executor][llama]") {
  auto cluster = loom::load_cluster("h100-sxm", "--cluster");
  REQUIRE(cluster.ok());
  loom::Plan plan;
  plan.model = tiny_llama();
  plan.cluster = *cluster;
  REQUIRE(loom::size_cluster(plan.cluster, 1, "test").ok());
  plan.train.seq = 128;
  plan.train.global_batch = 4;
  plan.parallel.micro_batch = 2;  // two micro-batches per step
  plan.parallel.recompute = loom::Recompute::full;
  CudaOptions opt;
  opt.steps = 3;
  opt.warmup_steps = 1;
  opt.progress = false;
  auto r = run_cuda(plan, opt);
  INFO((r.ok() ? std::string() : r.error().message));
  REQUIRE(r.ok());
  auto need = Gpt::memory_needed(plan.model, 2, 128, loom::Recompute::full);
  REQUIRE(need.ok());
  CHECK(r->measured.memory.activations == need->activations);
  CHECK(r->measured.flops_hardware == loom::hardware_flops(plan.model, 4, 128, loom::Recompute::full, loom::AttentionFlops::full));
  REQUIRE(r->losses.size() == 3);
  for (double l : r->losses) CHECK(std::isfinite(l));
}

TEST_CASE("the profiled step: phases in the simulator's names, kernels adding up to them",
          "[gpu][executor][trace]") {
  auto cluster = loom::load_cluster("h100-sxm", "--cluster");
  REQUIRE(cluster.ok());
  loom::Plan plan;
  plan.model = tiny_llama();
  plan.cluster = *cluster;
  REQUIRE(loom::size_cluster(plan.cluster, 1, "test").ok());
  plan.train.seq = 128;
  plan.train.global_batch = 4;
  plan.parallel.micro_batch = 2;  // two micro-batches
  plan.parallel.recompute = loom::Recompute::full;
  CudaOptions opt;
  opt.steps = 2;
  opt.warmup_steps = 0;
  opt.progress = false;
  auto r = run_cuda(plan, opt);
  INFO((r.ok() ? std::string() : r.error().message));
  REQUIRE(r.ok());
  CHECK(r->step_times_s.size() == 2);  // the profiled step is not one of the timed ones
  std::map<std::string, double> phases;
  double kernels = 0, phase_total = 0;
  for (const auto& s : r->profile) {
    CHECK(s.dur_s >= 0);
    if (s.phase) {
      phases[s.name] += s.dur_s;
      phase_total += s.dur_s;
    } else {
      kernels += s.dur_s;
    }
  }
  for (const char* name : {"F mb0 c0", "B mb0 c0", "R mb0 c0", "F mb1 c0", "B mb1 c0", "R mb1 c0", "optimizer"}) {
    INFO(name);
    CHECK(phases.count(name) == 1);
  }
  CHECK(phases.size() == 7);
  // every kernel lies inside a phase: the categories add up to the phases' time (less the
  // event resolution between a phase's mark and its first kernel's)
  CHECK(kernels == Approx(phase_total).epsilon(0.02));
  for (const char* op : {"gemm", "attention", "norm", "rope", "swiglu", "embedding", "cross_entropy", "adamw"}) {
    INFO(op);
    CHECK(r->op_time_s.count(op) == 1);
  }
  const auto& m = r->measured;
  REQUIRE(m.stages.size() == 1);
  CHECK(m.time.compute_s > 0);
  CHECK(m.stages[0].recompute_s > 0);
  const auto trace = measured_trace_json(*r);
  int complete = 0;
  for (const auto& e : trace["traceEvents"])
    if (e["ph"] == "X") complete++;
  CHECK(complete == static_cast<int>(r->profile.size()));
}
