// Every op of executor/cpu: forward against a direct formula where one exists, backward against
// finite differences (grad_check.hpp says why double and why 1e-6).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "executor/cpu/ops.hpp"
#include "grad_check.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace loom::cpu;
using loom::cpu::testing::check_op_gradients;
using loom::cpu::testing::random_vector;
using Vec = std::vector<double>;

namespace {
Vec zeros(int64_t n) { return Vec(static_cast<size_t>(n), 0.0); }
}  // namespace

TEST_CASE("matmul forward equals the naive triple loop, remainder tiles included",
          "[ops][matmul]") {
  // 9 rows and 19 output columns exercise both the 4-row and the 16-column remainder paths.
  for (const bool with_bias : {true, false}) {
    const int64_t N = 9, C = 7, OC = 19;
    const Vec inp = random_vector(N * C, 1), w = random_vector(OC * C, 2), b = random_vector(OC, 3);
    Vec out = zeros(N * OC);
    FlopCounter flops;
    matmul_forward(out.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr, N, C, OC,
                   flops);
    for (int64_t n = 0; n < N; n++) {
      for (int64_t o = 0; o < OC; o++) {
        double ref = with_bias ? b[o] : 0.0;
        for (int64_t c = 0; c < C; c++) ref += inp[n * C + c] * w[o * C + c];
        // same summation order; only FMA contraction may differ, hence 1e-13 and not 0
        CHECK(out[n * OC + o] == Approx(ref).epsilon(1e-13).margin(1e-13));
      }
    }
    CHECK(flops.matmul_flops == 2 * N * OC * C);
  }
}

TEST_CASE("matmul backward matches finite differences", "[ops][matmul][grad]") {
  const int64_t N = 6, C = 5, OC = 18;
  Vec inp = random_vector(N * C, 11), w = random_vector(OC * C, 12), b = random_vector(OC, 13);
  Vec dinp = zeros(N * C), dw = zeros(OC * C), db = zeros(OC), out = zeros(N * OC);
  FlopCounter flops;
  check_op_gradients(
      {{"inp", &inp, &dinp}, {"weight", &w, &dw}, {"bias", &b, &db}}, out,
      [&] { matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC, flops); },
      [&](const Vec& dout) {
        matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, C,
                        OC, flops);
      });
}

TEST_CASE("matmul counts 2*M*N*K per product it computes", "[ops][matmul][flops]") {
  const int64_t N = 3, C = 4, OC = 5;
  const Vec inp = random_vector(N * C, 1), w = random_vector(OC * C, 2),
            dout = random_vector(N * OC, 3);
  Vec dinp = zeros(N * C), dw = zeros(OC * C);
  FlopCounter flops;
  matmul_backward(dinp.data(), dw.data(), static_cast<double*>(nullptr), dout.data(), inp.data(),
                  w.data(), N, C, OC, flops);
  CHECK(flops.matmul_flops == 2 * (2 * 3 * 4 * 5));
  matmul_backward(static_cast<double*>(nullptr), dw.data(), static_cast<double*>(nullptr),
                  dout.data(), inp.data(), w.data(), N, C, OC, flops);
  CHECK(flops.matmul_flops == 3 * (2 * 3 * 4 * 5));
  CHECK(flops.attention_flops == 0);
}

TEST_CASE("matmul and attention give the same bits for any thread count", "[ops][determinism]") {
#if defined(_OPENMP)
  // Shapes above the parallel threshold, so the threaded paths really run.
  const int64_t N = 64, C = 80, OC = 96;
  std::vector<float> w(static_cast<size_t>(OC * C)), out1(static_cast<size_t>(N * OC)),
      out2(out1.size()), dw1(w.size(), 0.f), dw2(w.size(), 0.f);
  for (size_t i = 0; i < w.size(); i++) w[i] = static_cast<float>(std::sin(0.37 * i));
  std::vector<float> inpf(static_cast<size_t>(N * C));
  for (size_t i = 0; i < inpf.size(); i++) inpf[i] = static_cast<float>(std::cos(0.11 * i));
  FlopCounter flops;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  matmul_forward(out1.data(), inpf.data(), w.data(), static_cast<const float*>(nullptr), N, C, OC,
                 flops);
  matmul_backward(static_cast<float*>(nullptr), dw1.data(), static_cast<float*>(nullptr),
                  out1.data(), inpf.data(), w.data(), N, C, OC, flops);
  omp_set_num_threads(4);
  matmul_forward(out2.data(), inpf.data(), w.data(), static_cast<const float*>(nullptr), N, C, OC,
                 flops);
  matmul_backward(static_cast<float*>(nullptr), dw2.data(), static_cast<float*>(nullptr),
                  out2.data(), inpf.data(), w.data(), N, C, OC, flops);
  CHECK(out1 == out2);
  CHECK(dw1 == dw2);

  const int64_t B = 2, T = 32, H = 4, Hkv = 2, d = 16;
  std::vector<float> q(static_cast<size_t>(B * T * H * d)),
      kv(static_cast<size_t>(B * T * Hkv * d));
  for (size_t i = 0; i < q.size(); i++) q[i] = static_cast<float>(std::sin(0.3 * i));
  for (size_t i = 0; i < kv.size(); i++) kv[i] = static_cast<float>(std::cos(0.7 * i));
  std::vector<float> o1(q.size()), o2(q.size()), att1(static_cast<size_t>(B * H * T * T)),
      att2(att1.size()), dk1(kv.size(), 0.f), dk2(kv.size(), 0.f), dq(q.size(), 0.f),
      dv(kv.size(), 0.f);
  omp_set_num_threads(1);
  attention_forward(o1.data(), att1.data(), q.data(), kv.data(), kv.data(), B, T, H, Hkv, d, flops);
  attention_backward(dq.data(), dk1.data(), dv.data(), q.data(), att1.data(), q.data(), kv.data(),
                     kv.data(), B, T, H, Hkv, d, flops);
  omp_set_num_threads(4);
  attention_forward(o2.data(), att2.data(), q.data(), kv.data(), kv.data(), B, T, H, Hkv, d, flops);
  attention_backward(dq.data(), dk2.data(), dv.data(), q.data(), att2.data(), q.data(), kv.data(),
                     kv.data(), B, T, H, Hkv, d, flops);
  omp_set_num_threads(saved);
  CHECK(o1 == o2);
  CHECK(dk1 == dk2);
#else
  SUCCEED("built without OpenMP: one thread only");
#endif
}

TEST_CASE("layernorm forward normalizes and backward matches finite differences",
          "[ops][layernorm][grad]") {
  const int64_t N = 5, C = 7;
  Vec inp = random_vector(N * C, 21), w = random_vector(C, 22), b = random_vector(C, 23);
  Vec out = zeros(N * C), mean = zeros(N), rstd = zeros(N);
  Vec dinp = zeros(N * C), dw = zeros(C), db = zeros(C);
  layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C,
                    1e-5);
  for (int64_t n = 0; n < N; n++) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < C; i++) m += inp[n * C + i] / C;
    for (int64_t i = 0; i < C; i++) v += (inp[n * C + i] - m) * (inp[n * C + i] - m) / C;
    CHECK(mean[n] == Approx(m).epsilon(1e-12));
    CHECK(rstd[n] == Approx(1 / std::sqrt(v + 1e-5)).epsilon(1e-12));
  }
  check_op_gradients(
      {{"inp", &inp, &dinp}, {"weight", &w, &dw}, {"bias", &b, &db}}, out,
      [&] {
        layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                          C, 1e-5);
      },
      [&](const Vec& dout) {
        layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
      });
}

TEST_CASE("rmsnorm backward matches finite differences", "[ops][rmsnorm][grad]") {
  const int64_t N = 4, C = 6;
  Vec inp = random_vector(N * C, 31), w = random_vector(C, 32);
  Vec out = zeros(N * C), rstd = zeros(N), dinp = zeros(N * C), dw = zeros(C);
  rmsnorm_forward(out.data(), rstd.data(), inp.data(), w.data(), N, C, 1e-5);
  double ss = 0;
  for (int64_t i = 0; i < C; i++) ss += inp[i] * inp[i];
  CHECK(rstd[0] == Approx(1 / std::sqrt(ss / C + 1e-5)).epsilon(1e-12));
  check_op_gradients(
      {{"inp", &inp, &dinp}, {"weight", &w, &dw}}, out,
      [&] { rmsnorm_forward(out.data(), rstd.data(), inp.data(), w.data(), N, C, 1e-5); },
      [&](const Vec& dout) {
        rmsnorm_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), rstd.data(), N,
                         C);
      });
}

TEST_CASE("gelu is GPT-2's tanh approximation and its backward matches", "[ops][gelu][grad]") {
  // 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.841191990607...
  const double one = 1.0;
  double y = 0;
  gelu_forward(&y, &one, 1);
  CHECK(y == Approx(0.8411919906082768).epsilon(1e-14));
  const int64_t n = 23;
  Vec inp = random_vector(n, 41, 2.0), out = zeros(n), dinp = zeros(n);
  check_op_gradients(
      {{"inp", &inp, &dinp}}, out, [&] { gelu_forward(out.data(), inp.data(), n); },
      [&](const Vec& dout) { gelu_backward(dinp.data(), inp.data(), dout.data(), n); });
}

TEST_CASE("swiglu is silu(gate) * up and its backward matches", "[ops][swiglu][grad]") {
  const double g = 1.5, u = -2.0;
  double y = 0;
  swiglu_forward(&y, &g, &u, 1);
  CHECK(y == Approx(1.5 / (1 + std::exp(-1.5)) * -2.0).epsilon(1e-14));
  const int64_t n = 19;
  Vec gate = random_vector(n, 51, 2.0), up = random_vector(n, 52), out = zeros(n);
  Vec dgate = zeros(n), dup = zeros(n);
  check_op_gradients(
      {{"gate", &gate, &dgate}, {"up", &up, &dup}}, out,
      [&] { swiglu_forward(out.data(), gate.data(), up.data(), n); },
      [&](const Vec& dout) {
        swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), n);
      });
}

TEST_CASE("rope rotates pairs (i, i + d/2) by pos * theta^(-2i/d)", "[ops][rope]") {
  // d = 4: pair (0, 2) turns by t * 1, pair (1, 3) by t * theta^(-1/2) = t / 100 for theta 1e4.
  const int64_t B = 1, T = 3, H = 1, d = 4;
  const Vec inp = {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4};
  Vec out = zeros(B * T * H * d);
  rope_forward(out.data(), inp.data(), B, T, H, d, 10000.0);
  for (int64_t t = 0; t < T; t++) {
    const double a0 = t * 1.0, a1 = t / 100.0;
    CHECK(out[t * 4 + 0] == Approx(1 * std::cos(a0) - 3 * std::sin(a0)).margin(1e-14));
    CHECK(out[t * 4 + 2] == Approx(3 * std::cos(a0) + 1 * std::sin(a0)).margin(1e-14));
    CHECK(out[t * 4 + 1] == Approx(2 * std::cos(a1) - 4 * std::sin(a1)).margin(1e-14));
    CHECK(out[t * 4 + 3] == Approx(4 * std::cos(a1) + 2 * std::sin(a1)).margin(1e-14));
  }
  // position offset: token 0 at pos0 = 2 turns as token 2 at pos0 = 0
  Vec shifted = zeros(4);
  rope_forward(shifted.data(), inp.data(), 1, 1, 1, d, 10000.0, 2);
  for (int64_t i = 0; i < 4; i++) CHECK(shifted[i] == Approx(out[8 + i]).margin(1e-14));
}

TEST_CASE("rope backward matches finite differences", "[ops][rope][grad]") {
  const int64_t B = 2, T = 5, H = 3, d = 6;
  for (const double theta : {kRopeThetaDefault, kRopeThetaLlama3}) {
    Vec inp = random_vector(B * T * H * d, 61), out = zeros(B * T * H * d),
        dinp = zeros(B * T * H * d);
    check_op_gradients(
        {{"inp", &inp, &dinp}}, out,
        [&] { rope_forward(out.data(), inp.data(), B, T, H, d, theta); },
        [&](const Vec& dout) { rope_backward(dinp.data(), dout.data(), B, T, H, d, theta); });
  }
}

TEST_CASE("attention backward matches finite differences, MHA and GQA", "[ops][attention][grad]") {
  const int64_t B = 2, T = 5, d = 3;
  for (const auto& heads : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {4, 1}}) {
    const int64_t H = heads.first, Hkv = heads.second;  // plain copies: lambdas capture them
    Vec q = random_vector(B * T * H * d, 71), k = random_vector(B * T * Hkv * d, 72),
        v = random_vector(B * T * Hkv * d, 73);
    Vec out = zeros(B * T * H * d), att = zeros(B * H * T * T);
    Vec dq = zeros(q.size()), dk = zeros(k.size()), dv = zeros(v.size());
    FlopCounter flops;
    check_op_gradients(
        {{"q", &q, &dq}, {"k", &k, &dk}, {"v", &v, &dv}}, out,
        [&] {
          attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, d,
                            flops);
        },
        [&](const Vec& dout) {
          attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), att.data(), q.data(),
                             k.data(), v.data(), B, T, H, Hkv, d, flops);
        });
    // probabilities: rows sum to 1, causal (nothing above the diagonal)
    for (int64_t row = 0; row < B * H * T; row++) {
      const int64_t t = row % T;
      double s = 0;
      for (int64_t t2 = 0; t2 < T; t2++) {
        s += att[row * T + t2];
        if (t2 > t) CHECK(att[row * T + t2] == 0.0);
      }
      CHECK(s == Approx(1.0).epsilon(1e-14));
    }
  }
}

TEST_CASE("GQA equals MHA with each kv head repeated for its group", "[ops][attention]") {
  const int64_t B = 1, T = 4, H = 4, Hkv = 2, d = 2, group = H / Hkv;
  const Vec q = random_vector(B * T * H * d, 81), k = random_vector(B * T * Hkv * d, 82),
            v = random_vector(B * T * Hkv * d, 83);
  Vec k_rep = zeros(B * T * H * d), v_rep = zeros(B * T * H * d);
  for (int64_t t = 0; t < T; t++) {
    for (int64_t h = 0; h < H; h++) {
      for (int64_t i = 0; i < d; i++) {
        k_rep[(t * H + h) * d + i] = k[(t * Hkv + h / group) * d + i];
        v_rep[(t * H + h) * d + i] = v[(t * Hkv + h / group) * d + i];
      }
    }
  }
  Vec out_gqa = zeros(B * T * H * d), out_mha = zeros(B * T * H * d), att = zeros(B * H * T * T);
  FlopCounter flops;
  attention_forward(out_gqa.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, d,
                    flops);
  attention_forward(out_mha.data(), att.data(), q.data(), k_rep.data(), v_rep.data(), B, T, H, H, d,
                    flops);
  CHECK(out_gqa == out_mha);
  // dense-equivalent count: forward 2 products of 2*T*T*d per (b, h), twice
  CHECK(flops.attention_flops == 2 * (2 * (2 * B * H * T * T * d)));
}

TEST_CASE("cross-entropy masks the padded vocabulary; backward matches",
          "[ops][crossentropy][grad]") {
  const int64_t N = 4, V = 5, Vp = 8;
  Vec logits = random_vector(N * Vp, 91, 2.0);
  const std::vector<int32_t> targets = {0, 4, 2, 4};
  Vec losses = zeros(N), probs = zeros(N * Vp), dlogits = zeros(N * Vp);
  crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V, Vp);
  for (int64_t n = 0; n < N; n++) {
    double z = 0;
    for (int64_t i = 0; i < V; i++) z += std::exp(logits[n * Vp + i]);
    CHECK(losses[n] == Approx(std::log(z) - logits[n * Vp + targets[n]]).epsilon(1e-13));
    for (int64_t i = V; i < Vp; i++) CHECK(probs[n * Vp + i] == 0.0);
  }
  check_op_gradients(
      {{"logits", &logits, &dlogits}}, losses,
      [&] {
        crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V, Vp);
      },
      [&](const Vec& dlosses) {
        crossentropy_backward(dlogits.data(), dlosses.data(), probs.data(), targets.data(), N, V,
                              Vp);
      });
  // the padded columns were left as the check pre-filled them: zero gradient
  for (int64_t n = 0; n < N; n++) {
    for (int64_t i = V; i < Vp; i++) CHECK(dlogits[n * Vp + i] == 0.25);
  }
}

TEST_CASE("encoder backward matches finite differences, with and without positions",
          "[ops][encoder][grad]") {
  const int64_t B = 2, T = 3, C = 4, V = 5;
  const std::vector<int32_t> tokens = {1, 3, 1, 4, 1, 0};  // token 1 three times
  Vec wte = random_vector(V * C, 101), wpe = random_vector(T * C, 102), out = zeros(B * T * C);
  Vec dwte = zeros(V * C), dwpe = zeros(T * C);
  check_op_gradients(
      {{"wte", &wte, &dwte}, {"wpe", &wpe, &dwpe}}, out,
      [&] { encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C); },
      [&](const Vec& dout) {
        encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
      });
  check_op_gradients(
      {{"wte", &wte, &dwte}}, out,
      [&] {
        encoder_forward(out.data(), tokens.data(), wte.data(), static_cast<const double*>(nullptr),
                        B, T, C);
      },
      [&](const Vec& dout) {
        encoder_backward(dwte.data(), static_cast<double*>(nullptr), dout.data(), tokens.data(), B,
                         T, C);
      });
  CHECK(out[0] == wte[1 * C + 0]);
}

TEST_CASE("residual backward passes the gradient to both branches", "[ops][residual][grad]") {
  const int64_t n = 7;
  Vec a = random_vector(n, 111), b = random_vector(n, 112), out = zeros(n);
  Vec da = zeros(n), db = zeros(n);
  check_op_gradients(
      {{"a", &a, &da}, {"b", &b, &db}}, out,
      [&] { residual_forward(out.data(), a.data(), b.data(), n); },
      [&](const Vec& dout) { residual_backward(da.data(), db.data(), dout.data(), n); });
}
