// Finite-difference gradient checks for the CPU reference, run in double precision.
//
// Why double: the ops are templates, and the double instantiation is the same code as the fp32
// model. In double a central difference with step h = 1e-5 has truncation error h^2/6 * |f'''|
// (~2e-11 for the O(1) third derivatives of these ops) and rounding error ~ eps * |L| / h
// (2.2e-16 * 10 / 1e-5 ~ 2e-10), so analytic and numeric gradients agree to ~1e-9. The checks
// allow |analytic - numeric| <= kAtol + kRtol * |numeric| with kAtol = kRtol = 1e-6: a thousand
// times the expected error, and a thousand times below the smallest error a wrong backward term
// would give (in fp32 the same check would need ~1e-2 and could miss a term of relative size
// 1e-3).
#pragma once
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "executor/cpu/rng.hpp"

namespace loom::cpu::testing {

constexpr double kFdStep = 1e-5;
constexpr double kAtol = 1e-6;
constexpr double kRtol = 1e-6;

struct FdInput {
  std::string name;
  std::vector<double>* x;   // the input perturbed
  std::vector<double>* dx;  // where backward adds d loss / d x
};

inline std::vector<double> random_vector(int64_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = scale * rng.normal();
  return v;
}

// forward() recomputes `out` from the inputs; backward(dout) adds d(sum dout*out)/d input into
// every FdInput::dx. The loss is L = sum_i w_i out_i with random w, so every output element
// enters with a different weight. Each dx is pre-filled with kPrefill before backward, which
// also checks that backward accumulates (+=) rather than overwrites.
inline void check_op_gradients(const std::vector<FdInput>& inputs, const std::vector<double>& out,
                               const std::function<void()>& forward,
                               const std::function<void(const std::vector<double>&)>& backward,
                               uint64_t seed = 99) {
  constexpr double kPrefill = 0.25;
  forward();
  const std::vector<double> w = random_vector(static_cast<int64_t>(out.size()), seed);
  for (const FdInput& in : inputs) std::fill(in.dx->begin(), in.dx->end(), kPrefill);
  backward(w);
  const auto loss = [&] {
    forward();
    double s = 0;
    for (size_t i = 0; i < out.size(); i++) s += w[i] * out[i];
    return s;
  };
  for (const FdInput& in : inputs) {
    double worst = 0;  // error in units of the tolerance
    size_t worst_j = 0;
    double worst_analytic = 0, worst_numeric = 0;
    for (size_t j = 0; j < in.x->size(); j++) {
      const double orig = (*in.x)[j];
      (*in.x)[j] = orig + kFdStep;
      const double lp = loss();
      (*in.x)[j] = orig - kFdStep;
      const double lm = loss();
      (*in.x)[j] = orig;
      const double numeric = (lp - lm) / (2 * kFdStep);
      const double analytic = (*in.dx)[j] - kPrefill;
      const double err = std::abs(analytic - numeric) / (kAtol + kRtol * std::abs(numeric));
      if (err > worst || std::isnan(err)) {
        worst = std::isnan(err) ? INFINITY : err;
        worst_j = j;
        worst_analytic = analytic;
        worst_numeric = numeric;
      }
    }
    INFO("input " << in.name << "[" << worst_j << "]: analytic " << worst_analytic << ", numeric "
                  << worst_numeric);
    CHECK(worst <= 1.0);
  }
  forward();
}

}  // namespace loom::cpu::testing
