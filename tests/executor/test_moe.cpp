// The MoE block of the CPU reference (executor/cpu/moe.hpp): the router's choice, gradients of the
// block and of a whole MoE model against finite differences (in double, grad_check.hpp), and its
// GEMM FLOPs by hand.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "executor/cpu/gpt.hpp"
#include "executor/cpu/moe.hpp"
#include "executor/cpu/rng.hpp"
#include "executor/cpu/synthetic_data.hpp"
#include "grad_check.hpp"

using namespace loom::cpu;
using loom::Family;
using loom::ModelSpec;
using loom::cpu::testing::check_op_gradients;
using loom::cpu::testing::FdInput;
using loom::cpu::testing::random_vector;

namespace {

ModelSpec tiny_moe(Family f, int64_t shared) {
  ModelSpec s;
  s.name = "tiny-moe";
  s.family = f;
  s.layers = 2;
  s.hidden = 16;
  s.heads = 4;
  s.kv_heads = f == Family::llama ? 2 : 4;
  s.ffn_hidden = 32;
  s.vocab = 37;
  s.seq_len = 8;
  s.tied_embeddings = false;
  s.experts = 4;
  s.experts_per_token = 2;
  s.shared_experts = shared;
  s.expert_ffn_hidden = 8;
  return s;
}

struct Block {
  MoeDims d;
  std::vector<double> x, router, fc, up, proj, sfc, sup, sproj;
  std::vector<double> dx, drouter, dfc, dup, dproj, dsfc, dsup, dsproj;
  std::vector<double> out;
  MoeState<double> st;
  Block(bool swiglu, int64_t Fs) {
    d.rows = 6;
    d.C = 8;
    d.E = 4;
    d.k = 2;
    d.Fe = 5;
    d.Fs = Fs;
    d.swiglu = swiglu;
    const int64_t n = d.rows, C = d.C, E = d.E, F = d.Fe;
    x = random_vector(n * C, 1);
    router = random_vector(E * C, 2, 0.5);
    fc = random_vector(E * F * C, 3, 0.3);
    up = random_vector(swiglu ? E * F * C : 0, 4, 0.3);
    proj = random_vector(E * C * F, 5, 0.3);
    sfc = random_vector(Fs * C, 6, 0.3);
    sup = random_vector(swiglu ? Fs * C : 0, 7, 0.3);
    sproj = random_vector(C * Fs, 8, 0.3);
    for (auto* p : {&dx, &drouter, &dfc, &dup, &dproj, &dsfc, &dsup, &dsproj}) p->clear();
    dx.resize(x.size());
    drouter.resize(router.size());
    dfc.resize(fc.size());
    dup.resize(up.size());
    dproj.resize(proj.size());
    dsfc.resize(sfc.size());
    dsup.resize(sup.size());
    dsproj.resize(sproj.size());
    out.resize(static_cast<size_t>(n * C));
  }
  static double* ptr(std::vector<double>& v) { return v.empty() ? nullptr : v.data(); }
  MoeTensors<double> w() { return {ptr(router), ptr(fc), ptr(up), ptr(proj), ptr(sfc), ptr(sup), ptr(sproj)}; }
  MoeTensors<double> g() { return {ptr(drouter), ptr(dfc), ptr(dup), ptr(dproj), ptr(dsfc), ptr(dsup), ptr(dsproj)}; }
};

void check_block(bool swiglu, int64_t Fs, int64_t capacity = 0) {
  Block b(swiglu, Fs);
  b.d.capacity = capacity;
  LocalExchange ex;
  FlopCounter flops;
  std::vector<FdInput> inputs = {{"x", &b.x, &b.dx},
                                 {"router", &b.router, &b.drouter},
                                 {"fc", &b.fc, &b.dfc},
                                 {"proj", &b.proj, &b.dproj}};
  if (swiglu) inputs.push_back({"up", &b.up, &b.dup});
  if (Fs > 0) {
    inputs.push_back({"shared fc", &b.sfc, &b.dsfc});
    inputs.push_back({"shared proj", &b.sproj, &b.dsproj});
    if (swiglu) inputs.push_back({"shared up", &b.sup, &b.dsup});
  }
  check_op_gradients(
      inputs, b.out, [&] { REQUIRE(moe_forward(b.out.data(), b.x.data(), b.w(), b.d, b.st, ex, flops).ok()); },
      [&](const std::vector<double>& dout) {
        REQUIRE(moe_backward(b.dx.data(), b.g(), dout.data(), b.x.data(), b.w(), b.d, b.st, ex, flops).ok());
      });
}

}  // namespace

TEST_CASE("the router takes the k largest logits, the lower expert on ties, softmax over them", "[moe]") {
  // Two tokens over 4 experts: the second ties experts 1 and 3 at 2.0 below expert 0.
  const std::vector<double> logits = {0.5, 1.0, -1.0, 3.0,  //
                                      4.0, 2.0, 0.0, 2.0};
  std::vector<int32_t> top(4);
  std::vector<double> prob(4);
  moe_route(top.data(), prob.data(), logits.data(), 2, 4, 2);
  CHECK(top == std::vector<int32_t>{3, 1, 0, 1});
  // softmax over (3, 1): 1 / (1 + e^-2) and e^-2 / (1 + e^-2)
  CHECK(prob[0] == Approx(1 / (1 + std::exp(-2.0))).epsilon(1e-15));
  CHECK(prob[1] == Approx(std::exp(-2.0) / (1 + std::exp(-2.0))).epsilon(1e-15));
  CHECK(prob[2] == Approx(prob[0]).epsilon(1e-15));
  CHECK(prob[0] + prob[1] == Approx(1.0).epsilon(1e-15));
}

TEST_CASE("MoE block gradients match finite differences: SwiGLU experts with shared experts", "[moe][grad]") {
  check_block(true, 6);
}

TEST_CASE("MoE block gradients match finite differences: GELU experts, no shared experts", "[moe][grad]") {
  check_block(false, 0);
}

TEST_CASE("MoE block gradients match finite differences with a capacity that drops rows", "[moe][grad]") {
  // 6 rows x top-2 over 4 experts: 3 rows per expert on average, capacity 2 drops some.
  check_block(true, 0, 2);
}

TEST_CASE("a capacity pads every expert to it and drops the rows past it, in token order", "[moe]") {
  Block full(true, 0), capped(true, 0);
  capped.d.capacity = 2;
  LocalExchange ex;
  FlopCounter f1, f2;
  REQUIRE(moe_forward(full.out.data(), full.x.data(), full.w(), full.d, full.st, ex, f1).ok());
  REQUIRE(moe_forward(capped.out.data(), capped.x.data(), capped.w(), capped.d, capped.st, ex, f2).ok());
  CHECK(capped.st.routed_rows == 4 * 2);  // E x capacity, padding included
  // Recount by hand: each (token, slot) keeps its expert's output while the expert has room.
  std::vector<int32_t> top(12);
  std::vector<double> prob(12);
  moe_route(top.data(), prob.data(), full.st.logits.data(), 6, 4, 2);
  std::vector<int> taken(4, 0);
  std::vector<bool> kept(12);
  for (size_t i = 0; i < 12; ++i) kept[i] = taken[static_cast<size_t>(top[i])]++ < 2;
  REQUIRE(std::count(kept.begin(), kept.end(), false) > 0);  // the case drops something
  // Without drops the outputs are equal; a token with a dropped slot differs by exactly that slot.
  for (int64_t t = 0; t < 6; ++t) {
    const bool all_kept = kept[static_cast<size_t>(2 * t)] && kept[static_cast<size_t>(2 * t + 1)];
    double diff = 0;
    for (int64_t c = 0; c < 8; ++c) diff = std::max(diff, std::abs(full.out[static_cast<size_t>(t * 8 + c)] - capped.out[static_cast<size_t>(t * 8 + c)]));
    INFO("token " << t);
    if (all_kept) CHECK(diff < 1e-15);
    else CHECK(diff > 1e-6);
  }
  // GEMMs at capacity: router 2 n C E and 3 expert GEMMs of 2 C Fe on E x capacity rows.
  CHECK(f2.matmul_flops == 2 * 6 * 8 * 4 + 4 * 2 * 3 * 2 * 8 * 5);
}

TEST_CASE("capacity: ceil(factor x rows x k / E); factor E / k keeps every row", "[moe]") {
  CHECK(capacity_rows(1.25, 64, 2, 8) == 20);  // Switch's example shape: 1.25 x 16
  CHECK(capacity_rows(2.0, 64, 2, 4) == 64);   // E / k: every row fits
  CHECK(capacity_rows(1.0, 5, 2, 4) == 3);     // ceil(2.5)
}

TEST_CASE("MoE block FLOPs: router, k experts per token and shared experts, by hand", "[moe][flops]") {
  Block b(true, 6);
  LocalExchange ex;
  FlopCounter fwd, bwd;
  REQUIRE(moe_forward(b.out.data(), b.x.data(), b.w(), b.d, b.st, ex, fwd).ok());
  // router 2 n C E; each of the n k routed rows 3 GEMMs of 2 C Fe; shared 3 GEMMs of 2 n C Fs.
  const int64_t n = 6, C = 8, E = 4, k = 2, Fe = 5, Fs = 6;
  const int64_t forward = 2 * n * C * E + n * k * 3 * 2 * C * Fe + 3 * 2 * n * C * Fs;
  CHECK(fwd.matmul_flops == forward);
  CHECK(b.st.routed_rows == n * k);  // no capacity: each expert exactly its load
  REQUIRE(moe_backward(b.dx.data(), b.g(), b.out.data(), b.x.data(), b.w(), b.d, b.st, ex, bwd).ok());
  CHECK(bwd.matmul_flops == 2 * forward);
}

TEST_CASE("MoE model gradients match finite differences (llama with shared experts, gpt)", "[moe][grad]") {
  for (Family f : {Family::llama, Family::gpt}) {
    ModelSpec spec = tiny_moe(f, f == Family::llama ? 1 : 0);
    spec.dense_layers = f == Family::gpt ? 1 : 0;  // gpt: layer 0 dense, layer 1 MoE
    auto made = GptModel<double>::create(spec);
    REQUIRE(made.ok());
    GptModel<double> model = std::move(made).value();
    const int64_t B = 2, T = spec.seq_len;
    std::vector<int32_t> in(static_cast<size_t>(B * T)), tg(static_cast<size_t>(B * T));
    synthetic_batch(in.data(), tg.data(), SyntheticStream{spec.vocab, 3, 0}, 0, B, T);
    FlopCounter flops;
    model.zero_grad();
    REQUIRE(model.forward(in.data(), tg.data(), B, T, flops).ok());
    REQUIRE(model.backward(flops).ok());
    const std::vector<double> analytic = model.grads();
    int moe_tensors = 0;
    Rng rng(17);
    for (const TensorInfo& t : model.tensors()) {
      if (t.name.find("mlp.router") != std::string::npos || t.name.find("mlp.experts") != std::string::npos ||
          t.name.find("mlp.shared") != std::string::npos)
        ++moe_tensors;
      std::vector<int64_t> picks = {0, t.numel - 1};
      for (int i = 0; i < 4; i++) picks.push_back(static_cast<int64_t>(rng.next_u64() % t.numel));
      double worst = 0;
      for (int64_t i : picks) {
        double& w = model.params()[t.offset + i];
        const double orig = w;
        w = orig + 1e-5;
        const double lp = model.forward(in.data(), tg.data(), B, T, flops).value();
        w = orig - 1e-5;
        const double lm = model.forward(in.data(), tg.data(), B, T, flops).value();
        w = orig;
        const double numeric = (lp - lm) / 2e-5;
        worst = std::max(worst, std::abs(analytic[t.offset + i] - numeric) / (1e-9 + 1e-6 * std::abs(numeric)));
      }
      INFO(t.name);
      CHECK(worst <= 1.0);
    }
    // llama: 2 MoE layers x (router, gate, up, down, shared gate, up, down); gpt: 1 x (router, fc, proj)
    CHECK(moe_tensors == (f == Family::llama ? 14 : 3));
  }
}

TEST_CASE("MoE layers follow DeepSeek's rule: dense_layers first, then every moe_layer_interval-th", "[moe]") {
  ModelSpec m = tiny_moe(Family::llama, 0);
  m.layers = 6;
  m.dense_layers = 1;
  m.moe_layer_interval = 2;
  std::vector<bool> got;
  for (int64_t l = 0; l < m.layers; ++l) got.push_back(moe_layer(m, l));
  CHECK(got == std::vector<bool>{false, false, true, false, true, false});
  m.experts = 0;
  CHECK_FALSE(moe_layer(m, 2));
}

TEST_CASE("bad MoE fields are refused with the field named", "[moe]") {
  ModelSpec m = tiny_moe(Family::llama, 0);
  m.experts_per_token = 5;
  auto r = GptModel<float>::create(m);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("experts_per_token") != std::string::npos);
}
