#include "sim/gemm_model.hpp"

#include <boost/math/tools/minima.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <bit>
#include <cstdint>
#include <limits>

namespace loom {

namespace {

// What a GEMM's operands are: bytes per output and input element, and the peak they run at.
// A count as int64 for GemmChoice, capped where a double holds more than int64 can.
int64_t saturate(double x) { return x >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(x); }

struct Operands {
  double out_bytes, in_bytes, peak_flops;
};

constexpr int kCoefficients = 4;

double& coefficient(GemmCoefficients& c, int i) {
  switch (i) {
    case 0: return c.mainloop_efficiency;
    case 1: return c.tile_overhead_s;
    case 2: return c.memory_efficiency;
    default: return c.launch_s;
  }
}

// The range each coefficient is searched over (a fraction, seconds, a fraction, seconds).
constexpr std::array<std::pair<double, double>, kCoefficients> kRanges = {
    {{0.2, 1.0}, {1e-9, 1e-4}, {0.2, 1.0}, {1e-7, 1e-4}}};

double mean_sq_log_error(const GemmModel& g, const std::vector<GemmSample>& v) {
  double sum = 0;
  for (const auto& x : v) {
    const double e = std::log(g.seconds_at(x.m, x.n, x.k, x.out_bytes, x.in_bytes, g.hw.peak_flops) / x.seconds);
    sum += e * e;
  }
  return sum / static_cast<double>(v.size());
}

Status check_samples(const std::vector<GemmSample>& v, const GemmHardware& hw) {
  if (hw.peak_flops <= 0 || hw.sm_count <= 0 || hw.hbm_bytes_per_s <= 0)
    return Error{"gemm model: the GPU's peak_flops (of the GEMMs' input type), sm_count and hbm_bytes_per_s are needed"};
  if (v.size() < 8)
    return Error{"gemm model: at least 8 measured GEMMs are needed (got " + std::to_string(v.size()) + ")"};
  for (size_t i = 0; i < v.size(); ++i) {
    const auto& x = v[i];
    if (!(x.m >= 1 && x.n >= 1 && x.k >= 1 && x.seconds > 0 && x.out_bytes > 0))
      return Error{"gemm/" + std::to_string(i) + ": needs m, n, k >= 1 and seconds > 0"};
    if (x.in_bytes != v.front().in_bytes)
      return Error{"gemm/" + std::to_string(i) + ": input bytes " + std::to_string(static_cast<int>(x.in_bytes)) +
                   " differ from the first sample's " + std::to_string(static_cast<int>(v.front().in_bytes)) +
                   " (one model per input type)"};
  }
  return ok_status();
}

}  // namespace

// The header's formula for every (tile, split-K), with what does not depend on the choice
// hoisted: the planner prices millions of GEMMs, so the loop is integer tile counts and one
// multiply-add per candidate.
GemmChoice gemm_choice(const GemmModel& g, double M, double N, double K, double out_bytes, double in_bytes,
                       double peak_flops) {
  const Operands o{out_bytes, in_bytes, peak_flops > 0 ? peak_flops : g.hw.peak_flops};
  const int64_t sms = g.hw.sm_count;
  const double step_flops_s = 2.0 * kGemmKStep / (o.peak_flops / static_cast<double>(sms) * g.c.mainloop_efficiency);
  const double byte_s = 1 / (g.hw.hbm_bytes_per_s * g.c.memory_efficiency);
  const double bytes = o.in_bytes * (M * K + K * N) + o.out_bytes * M * N;
  const double partial_bytes = 8.0 * M * N;  // per split-K part: fp32 written, then read by the reduction
  // Counts in double: exact for the integers a real shape gives (below 2^53), and no int64
  // overflow for the largest dimensions a profile may hold (2^40).
  const double k_steps = std::ceil(K / kGemmKStep), sm_d = static_cast<double>(sms);
  GemmChoice best;
  best.seconds = std::numeric_limits<double>::infinity();
  for (const auto& [tm, tn] : kGemmTiles) {
    const double tiles = std::ceil(M / static_cast<double>(tm)) * std::ceil(N / static_cast<double>(tn));
    const double tile_step_s = static_cast<double>(tm * tn) * step_flops_s;
    for (const int64_t s : kGemmSplitK) {
      if (s > 1 && K < static_cast<double>(2 * kGemmKStep * s)) break;  // each part keeps two K steps
      const double parts = static_cast<double>(s);
      const double waves = std::ceil(tiles * parts / sm_d);
      const double steps = std::ceil(k_steps / parts);
      const double compute_s = waves * (g.c.tile_overhead_s + steps * tile_step_s);
      const double memory_s = (bytes + (s > 1 ? partial_bytes * parts : 0.0)) * byte_s;
      const double t = g.c.launch_s + std::max(compute_s, memory_s);
      if (t < best.seconds) best = {tm, tn, s, saturate(tiles * parts), saturate(waves), t};
    }
  }
  return best;
}

double GemmModel::seconds(double M, double N, double K, double out_bytes) const {
  return gemm_choice(*this, M, N, K, out_bytes, in_bytes).seconds;
}

double GemmModel::seconds_at(double M, double N, double K, double out_bytes, double in_bytes, double peak) const {
  return gemm_choice(*this, M, N, K, out_bytes, in_bytes, peak).seconds;
}

// The inputs' bits mixed by multiply and shift (std::hash<double> hashes bytes, too slow here).
size_t GemmMemo::KeyHash::operator()(const Key& k) const {
  uint64_t h = reinterpret_cast<uintptr_t>(k.model);
  for (double v : {k.m, k.n, k.k, k.out_bytes, k.in_bytes, k.peak_flops}) {
    h = (h ^ std::bit_cast<uint64_t>(v)) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  }
  return static_cast<size_t>(h);
}

double GemmMemo::seconds(const GemmModel& g, double M, double N, double K, double out_bytes, double in_bytes,
                         double peak_flops) {
  // A bound on what one thread keeps (a search sees a few thousand shapes).
  if (times_.size() >= (size_t{1} << 16)) times_.clear();
  const Key key{&g, M, N, K, out_bytes, in_bytes, peak_flops};
  if (auto it = times_.find(key); it != times_.end()) return it->second;
  const double t = g.seconds_at(M, N, K, out_bytes, in_bytes, peak_flops);
  times_.emplace(key, t);
  return t;
}

Expected<GemmModel> fit_gemm_model(const std::vector<GemmSample>& samples, const GemmHardware& hw) {
  if (auto s = check_samples(samples, hw); !s) return s.error();
  GemmModel g;
  g.hw = hw;
  g.in_bytes = samples.front().in_bytes;
  // A start inside every range: the mid-range guesses of a tensor-core GPU.
  g.c = {0.8, 1e-6, 0.85, 3e-6};
  double err = mean_sq_log_error(g, samples);
  for (int sweep = 0; sweep < 40; ++sweep) {
    const double before = err;
    for (int i = 0; i < kCoefficients; ++i) {
      auto f = [&](double ln_v) {
        GemmModel t = g;
        coefficient(t.c, i) = std::exp(ln_v);
        return mean_sq_log_error(t, samples);
      };
      const auto [lo, hi] = kRanges[static_cast<size_t>(i)];
      boost::uintmax_t iters = 100;
      const auto [x, fx] = boost::math::tools::brent_find_minima(f, std::log(lo), std::log(hi), 20, iters);
      if (fx < err) coefficient(g.c, i) = std::exp(x), err = fx;
    }
    if (before - err < 1e-5) break;
  }
  g.samples = static_cast<int64_t>(samples.size());
  double sum = 0, worst = 0;
  for (const auto& x : samples) {
    const double e = std::abs(g.seconds_at(x.m, x.n, x.k, x.out_bytes, x.in_bytes, hw.peak_flops) / x.seconds - 1);
    sum += e, worst = std::max(worst, e);
  }
  g.fit_mape = sum / static_cast<double>(samples.size());
  g.fit_worst = worst;
  return g;
}

GemmModel scale_gemm_model(const GemmModel& from, const GemmHardware& to, double efficiency_scale, double clock_ratio) {
  GemmModel g = from;
  g.hw = to;
  g.c.mainloop_efficiency = std::min(1.0, from.c.mainloop_efficiency * efficiency_scale);
  g.c.tile_overhead_s = from.c.tile_overhead_s / clock_ratio;
  return g;
}

}  // namespace loom
