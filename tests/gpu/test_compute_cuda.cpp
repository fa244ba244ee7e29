// The paths `loom execute --device cuda` added for the parallel trainer, against the fp32 CPU
// reference: attention at head size 128 with grouped-query heads and at 8192 tokens, and the CUDA
// Compute backend (executor/cuda/compute_cuda.hpp) unit by unit against the CPU one on the same
// parameters. Tolerances are relative errors ||gpu - cpu|| / ||cpu|| (gpu_testing.hpp): bf16
// operands carry 2^-8 relative rounding each, so a product of two lands near 4e-3 and a chain of
// a layer (norm, GEMMs, attention, GEMMs, norm backward) within a few 1e-2.
#include <algorithm>
#include <cmath>
#include <vector>

#include "executor/compute.hpp"
#include "executor/cpu/attention.hpp"
#include "executor/cpu/gpt.hpp"
#include "executor/cuda/attention.cuh"
#include "executor/cuda/compute_cuda.hpp"
#include "executor/cuda/cuda_execute.hpp"
#include "executor/cuda/emulated_device_comm.hpp"
#include "executor/units.hpp"
#include "tests/gpu/gpu_testing.hpp"

using namespace loom;
using namespace loom::cuda;
using namespace loom::cuda::testing;
using bf = __nv_bfloat16;

namespace {

// The q, k, v of a (B, T, NH + 2 NKV, HS) projection output as the CPU reference's arrays.
struct Qkv {
  std::vector<float> q, k, v;
};
Qkv split_qkv(const std::vector<float>& qkv, int64_t BT, int64_t NH, int64_t NKV, int64_t HS) {
  const int64_t row = (NH + 2 * NKV) * HS;
  Qkv s{std::vector<float>(BT * NH * HS), std::vector<float>(BT * NKV * HS), std::vector<float>(BT * NKV * HS)};
  for (int64_t t = 0; t < BT; t++) {
    std::copy_n(qkv.begin() + t * row, NH * HS, s.q.begin() + t * NH * HS);
    std::copy_n(qkv.begin() + t * row + NH * HS, NKV * HS, s.k.begin() + t * NKV * HS);
    std::copy_n(qkv.begin() + t * row + (NH + NKV) * HS, NKV * HS, s.v.begin() + t * NKV * HS);
  }
  return s;
}

}  // namespace

TEST_CASE("fused attention at head size 128 with grouped-query heads matches the CPU reference",
          "[gpu][attention][hs128]") {
  // forward < 1e-2 and backward < 2e-2: the head-size-64 test's bounds (test_kernels.cpp); the
  // contraction is twice as long, each term still a bf16 product accumulated in fp32.
  const int64_t B = 2, T = 256, NH = 4, NKV = 2, HS = 128, Q = NH * HS, row = (NH + 2 * NKV) * HS;
  const auto qkv = round_bf16(random_floats(B * T * row, 40));
  const Qkv s = split_qkv(qkv, B * T, NH, NKV, HS);
  std::vector<float> out(B * T * Q), att(B * NH * T * T);
  cpu::FlopCounter flops;
  cpu::attention_forward(out.data(), att.data(), s.q.data(), s.k.data(), s.v.data(), B, T, NH, NKV, HS, flops);
  DeviceBuffer<bf> d_qkv(B * T * row), d_out(B * T * Q), d_dout(B * T * Q), d_dqkv(B * T * row);
  DeviceBuffer<float> d_lse(B * NH * T), d_delta(B * NH * T);
  d_qkv.upload(to_bf16(qkv));
  REQUIRE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, T, NH, NKV, HS, nullptr).ok());
  CHECK(rel_error(to_float(d_out.download()), out) < 1e-2);

  const auto dout = round_bf16(random_floats(B * T * Q, 41));
  std::vector<float> dq(B * T * Q, 0.0f), dk(B * T * NKV * HS, 0.0f), dv(B * T * NKV * HS, 0.0f);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), att.data(), s.q.data(), s.k.data(),
                          s.v.data(), B, T, NH, NKV, HS, flops);
  d_dout.upload(to_bf16(dout));
  REQUIRE(attention_backward(d_dqkv.get(), d_delta.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), B, T,
                             NH, NKV, HS, nullptr)
              .ok());
  const Qkv g = split_qkv(to_float(d_dqkv.download()), B * T, NH, NKV, HS);
  CHECK(rel_error(g.q, dq) < 2e-2);
  CHECK(rel_error(g.k, dk) < 2e-2);
  CHECK(rel_error(g.v, dv) < 2e-2);
  // head sizes the kernels do not have are refused by name
  CHECK_FALSE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, T, NH, NKV, 96, nullptr).ok());
}

TEST_CASE("fused attention at 8192 tokens: the last query block of each head against fp64", "[gpu][attention][hs128]") {
  // The longest rows (8192 keys) accumulate the most: the last 64 queries of each head checked
  // against a direct fp64 softmax over the same bf16 inputs, < 1e-2 as above. Backward runs at
  // this length too (its output checked finite; the values are the 256-token test's).
  const int64_t B = 1, T = 8192, NH = 2, NKV = 1, HS = 128, Q = NH * HS, row = (NH + 2 * NKV) * HS;
  const auto qkv = round_bf16(random_floats(B * T * row, 42, 0.5));
  DeviceBuffer<bf> d_qkv(B * T * row), d_out(B * T * Q), d_dqkv(B * T * row);
  DeviceBuffer<float> d_lse(B * NH * T), d_delta(B * NH * T);
  d_qkv.upload(to_bf16(qkv));
  REQUIRE(attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), B, T, NH, NKV, HS, nullptr).ok());
  const auto out = to_float(d_out.download());
  std::vector<float> got, want;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  for (int64_t h = 0; h < NH; h++) {
    for (int64_t t = T - 64; t < T; t++) {
      const float* q = &qkv[t * row + h * HS];
      std::vector<double> p(t + 1);
      double mx = -INFINITY, sum = 0;
      for (int64_t u = 0; u <= t; u++) {
        const float* k = &qkv[u * row + Q];  // the one kv head
        double dot = 0;
        for (int64_t i = 0; i < HS; i++) dot += static_cast<double>(q[i]) * k[i];
        p[u] = dot * scale;
        mx = std::max(mx, p[u]);
      }
      for (auto& x : p) sum += (x = std::exp(x - mx));
      for (int64_t i = 0; i < HS; i++) {
        double o = 0;
        for (int64_t u = 0; u <= t; u++) o += p[u] * qkv[u * row + Q + HS + i];
        want.push_back(static_cast<float>(o / sum));
        got.push_back(out[t * Q + h * HS + i]);
      }
    }
  }
  CHECK(rel_error(got, want) < 1e-2);
  DeviceBuffer<bf> d_dout(B * T * Q);
  d_dout.upload(to_bf16(round_bf16(random_floats(B * T * Q, 43))));
  REQUIRE(attention_backward(d_dqkv.get(), d_delta.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), B, T,
                             NH, NKV, HS, nullptr)
              .ok());
  const auto dqkv = to_float(d_dqkv.download());
  CHECK(std::all_of(dqkv.begin(), dqkv.end(), [](float x) { return std::isfinite(x); }));
}

namespace {

// One stage holding a whole one-layer model (embedding, a layer, final norm and head) on one
// backend, driven as the trainer drives it: forward, loss, backward of one micro-batch.
struct UnitRun {
  double loss = 0;
  std::vector<float> grads;
};

UnitRun run_units(exec::Compute& c, const exec::UnitLayout& layout, const std::vector<float>& params,
                  const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets, const exec::Dims& d,
                  exec::StashKind kind) {
  const int64_t total = layout.total;
  auto P = c.alloc(exec::Mem::weights, total);
  auto G = c.alloc(exec::Mem::grads, total);
  auto x0 = c.alloc(exec::Mem::activations, d.Ns * d.C);
  auto dx = c.alloc(exec::Mem::workspace, d.Ns * d.C);
  REQUIRE((P.ok() && G.ok() && x0.ok() && dx.ok()));
  REQUIRE(c.upload(P->data(), params.data(), total).ok());
  const exec::Unit& e = layout.units[0];
  const exec::Unit& l = layout.units[1];
  const exec::Unit& h = layout.units[2];
  auto st = c.layer_state(kind);
  auto hs = c.head_state();
  REQUIRE((st.ok() && hs.ok()));
  float* p = P->data();
  float* g = G->data();
  REQUIRE(c.embed_forward(p + e.offset, e.o, tokens.data(), x0->data()).ok());
  float* head_in = c.head_input(**hs);
  REQUIRE(c.layer_forward(p + l.offset, l.o, x0->data(), **st, head_in).ok());
  const float* head_p = p + h.offset + h.o.head;
  auto loss = c.head_forward(p + h.offset, h.o, head_p, head_in, targets.data(), **hs);
  REQUIRE(loss.ok());
  const double scale = 1.0 / static_cast<double>(d.N);
  REQUIRE(c.head_backward(p + h.offset, g + h.offset, h.o, head_p, g + h.offset + h.o.head, targets.data(), **hs, scale,
                          dx->data())
              .ok());
  REQUIRE(c.layer_backward(p + l.offset, g + l.offset, l.o, x0->data(), **st, dx->data(),
                           kind == exec::StashKind::no_attention_core)
              .ok());
  REQUIRE(c.embed_backward(g + e.offset, e.o, tokens.data(), dx->data()).ok());
  UnitRun r;
  r.loss = *loss;
  r.grads.resize(static_cast<size_t>(total));
  REQUIRE(c.download(r.grads.data(), g, total).ok());
  return r;
}

// A model's units on one rank (tp = dp = pp = 1) and the per-micro-batch shapes.
struct Setup {
  std::unique_ptr<cpu::Gpt> ref;
  exec::UnitLayout layout;
  exec::Dims d;
};
Setup make_setup(const ModelSpec& m, int64_t B, int64_t T) {
  Setup s;
  cpu::GptOptions go;
  auto ref = cpu::Gpt::create(m, go);
  REQUIRE(ref.ok());
  s.ref = std::make_unique<cpu::Gpt>(std::move(*ref));
  s.layout = exec::build_layout(s.ref->tensors(), {m.layers, 1, 1, 0, 1, 1, 0});
  exec::Dims& d = s.d;
  d.B = B, d.T = T, d.N = B * T, d.Ns = B * T, d.C = m.hidden, d.hd = m.head_dim();
  d.Hl = m.heads, d.Hkvl = m.kv_heads, d.Ql = d.Hl * d.hd, d.KVl = d.Hkvl * d.hd, d.Fl = m.ffn_hidden;
  d.V = m.vocab, d.Vr = m.vocab, d.gpt = m.family == Family::gpt, d.eps = m.norm_eps;
  d.rope_theta = cpu::default_rope_theta(m);
  return s;
}

void compare_backends(const ModelSpec& m, int64_t B, int64_t T, exec::StashKind kind) {
  Setup s = make_setup(m, B, T);
  const exec::Dims& d = s.d;
  REQUIRE(s.layout.units.size() == 3);
  std::vector<float> params(static_cast<size_t>(s.layout.total));
  for (const exec::Unit& u : s.layout.units)
    for (const auto& t : u.tensors)
      exec::for_each_element(t, 0, 1, [&](int64_t li, int64_t fi) {
        params[static_cast<size_t>(u.offset + li)] = s.ref->params()[static_cast<size_t>(fi)];
      });
  std::vector<int32_t> tokens(d.N), targets(d.N);
  cpu::Rng rng(cpu::mix(7, 3));
  for (int64_t i = 0; i < d.N; i++) {
    tokens[i] = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(m.vocab));
    targets[i] = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(m.vocab));
  }
  exec::Group tp;
  tp.kind = exec::GroupKind::tp;
  tp.ranks = {0};
  exec::Ledger lc, lg;
  cpu::FlopCounter fc, fg;
  auto host = exec::make_emulated_comm(0, 1);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  auto dev = exec::make_emulated_device_comm(0, 1, stream);
  auto cpu_c = exec::make_cpu_compute({*host, tp, d, lc, fc, true});
  auto gpu_c = exec::make_cuda_compute({*dev, tp, d, lg, fg, true}, {stream});
  REQUIRE((cpu_c.ok() && gpu_c.ok()));
  const UnitRun want = run_units(**cpu_c, s.layout, params, tokens, targets, d, kind);
  const UnitRun got = run_units(**gpu_c, s.layout, params, tokens, targets, d, kind);
  // the loss: a sum of N log-probabilities through one bf16 layer, < 1e-2 relative
  CHECK(std::abs(got.loss - want.loss) < 1e-2 * std::abs(want.loss));
  // each unit's gradient (fp32 accumulation of bf16 products through the whole backward) < 5e-2
  for (const exec::Unit& u : s.layout.units) {
    const auto b = got.grads.begin() + u.offset, w = want.grads.begin() + u.offset;
    INFO("unit " << static_cast<int>(u.kind));
    CHECK(rel_error(std::vector<float>(b, b + u.size), std::vector<float>(w, w + u.size)) < 5e-2);
  }
  // the same GEMMs and attention products counted, to the FLOP
  CHECK(fg.total_flops() == fc.total_flops());
  cudaStreamDestroy(stream);
}

ModelSpec llama_hs128() {
  ModelSpec m;
  m.name = "test-llama-hs128";
  m.family = Family::llama;
  m.layers = 1;
  m.hidden = 256;
  m.heads = 2;  // head size 128
  m.kv_heads = 1;  // GQA
  m.ffn_hidden = 512;
  m.vocab = 1000;  // not a multiple of 8: the padded head rows are masked
  m.seq_len = 128;
  m.tied_embeddings = false;
  return m;
}

}  // namespace

TEST_CASE("CUDA compute backend: a llama layer (head size 128, GQA, RoPE, SwiGLU, RMSNorm) against the CPU backend",
          "[gpu][compute]") {
  compare_backends(llama_hs128(), 2, 128, exec::StashKind::full);
  compare_backends(llama_hs128(), 2, 128, exec::StashKind::no_attention_core);  // selective recompute
}

TEST_CASE("CUDA compute backend: a GPT layer (head size 64, LayerNorm, GELU, biases) against the CPU backend",
          "[gpu][compute]") {
  ModelSpec m;
  m.name = "test-gpt";
  m.family = Family::gpt;
  m.layers = 1;
  m.hidden = 128;
  m.heads = 2;
  m.kv_heads = 2;
  m.ffn_hidden = 512;
  m.vocab = 500;
  m.seq_len = 128;
  m.tied_embeddings = false;
  compare_backends(m, 2, 128, exec::StashKind::full);
}

TEST_CASE("several ranks on one GPU are refused when their predicted peaks exceed its memory", "[gpu][limits]") {
  // 4 ranks of 30 GB on an 80 GB GPU: one line naming the flag and the rule, with the numbers.
  const auto st = check_ranks_fit(4, int64_t{30} << 30, int64_t{80} << 30, 0);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.rfind("mpirun -np: 4 ranks share GPU 0: ranks per GPU x the plan's predicted peak", 0) == 0);
  CHECK(check_ranks_fit(2, int64_t{30} << 30, int64_t{80} << 30, 0).ok());
}
