// AdamW and global gradient-norm clipping against their defining formulas.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "executor/cpu/adamw.hpp"
#include "executor/cpu/grad_norm.hpp"

using namespace loom::cpu;

TEST_CASE("AdamW step 1 moves each weight by lr * sign(g) plus decoupled decay", "[optim][adamw]") {
  // Step 1 with bias correction: m_hat = g, v_hat = g^2, so the Adam part is g / (|g| + eps).
  AdamWConfig cfg;
  cfg.lr = 0.1;
  cfg.weight_decay = 0.5;
  cfg.eps = 1e-8;
  std::vector<double> p = {1.0, -2.0, 0.5}, g = {0.3, -0.01, 0.0}, m(3, 0.0), v(3, 0.0);
  adamw_step(p.data(), g.data(), m.data(), v.data(), 3, 1, cfg);
  CHECK(p[0] == Approx(1.0 - 0.1 * (0.3 / (0.3 + 1e-8) + 0.5 * 1.0)).epsilon(1e-14));
  CHECK(p[1] == Approx(-2.0 - 0.1 * (-0.01 / (0.01 + 1e-8) + 0.5 * -2.0)).epsilon(1e-14));
  CHECK(p[2] == Approx(0.5 - 0.1 * 0.5 * 0.5).epsilon(1e-14));  // g = 0: decay only
  CHECK(m[0] == Approx(0.1 * 0.3).epsilon(1e-14));
  CHECK(v[0] == Approx(0.05 * 0.09).epsilon(1e-14));
}

TEST_CASE("AdamW over three steps equals the written-out recurrence", "[optim][adamw]") {
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  cfg.beta1 = 0.8;
  cfg.beta2 = 0.9;
  cfg.eps = 1e-6;
  cfg.weight_decay = 0.1;
  const double grads[3] = {0.5, -0.25, 0.125};
  double p = 0.7, m = 0, v = 0;
  double ref_p = 0.7, ref_m = 0, ref_v = 0;
  for (int64_t t = 1; t <= 3; t++) {
    adamw_step(&p, &grads[t - 1], &m, &v, 1, t, cfg);
    ref_m = 0.8 * ref_m + 0.2 * grads[t - 1];
    ref_v = 0.9 * ref_v + 0.1 * grads[t - 1] * grads[t - 1];
    const double m_hat = ref_m / (1 - std::pow(0.8, t)), v_hat = ref_v / (1 - std::pow(0.9, t));
    ref_p -= 1e-2 * (m_hat / (std::sqrt(v_hat) + 1e-6) + 0.1 * ref_p);
    CHECK(p == Approx(ref_p).epsilon(1e-14));
  }
}

TEST_CASE("global grad norm and clipping follow clip_grad_norm_", "[optim][clip]") {
  std::vector<float> g = {3.f, 4.f};
  CHECK(grad_norm_squared(g.data(), 2) == 25.0);
  const double norm = clip_grad_norm(g.data(), 2, 1.0);
  CHECK(norm == 5.0);
  CHECK(g[0] == Approx(3.0 / (5.0 + 1e-6)).epsilon(1e-7));  // fp32 result: 1e-7 relative
  CHECK(g[1] == Approx(4.0 / (5.0 + 1e-6)).epsilon(1e-7));
  std::vector<float> small = {0.3f, 0.4f};
  CHECK(clip_grad_norm(small.data(), 2, 1.0) == Approx(0.5).epsilon(1e-7));
  CHECK(small[0] == 0.3f);  // below max_norm: untouched
  CHECK(clip_scale(10.0, 1.0) == Approx(0.1).epsilon(1e-6));
  CHECK(clip_scale(0.5, 1.0) == 1.0);
}

TEST_CASE("grad norm over many chunks sums every element once", "[optim][clip]") {
  // 3 chunks and a bit: every element 1 or 2 (exact in double), so the sum is exact.
  const int64_t n = 3 * (1 << 14) + 5;
  std::vector<double> g(static_cast<size_t>(n), 1.0);
  for (int64_t i = 0; i < n; i += 2) g[static_cast<size_t>(i)] = 2.0;
  const int64_t twos = (n + 1) / 2, ones = n - twos;
  CHECK(grad_norm_squared(g.data(), n) == static_cast<double>(4 * twos + ones));
}
