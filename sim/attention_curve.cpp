#include "sim/attention_curve.hpp"

#include <algorithm>
#include <cmath>

namespace loom {

namespace {

using Speed = double AttentionCurvePoint::*;

// Speed at `seq` over one head size's points [begin, end) (sorted by seq): linear in log2(seq)
// between the two around it, the nearest end's beyond them.
double along_seq(const std::vector<AttentionCurvePoint>& p, size_t begin, size_t end, double seq, Speed f) {
  if (seq <= static_cast<double>(p[begin].seq)) return p[begin].*f;
  if (seq >= static_cast<double>(p[end - 1].seq)) return p[end - 1].*f;
  size_t i = begin + 1;
  while (static_cast<double>(p[i].seq) < seq) ++i;
  const AttentionCurvePoint& a = p[i - 1];
  const AttentionCurvePoint& b = p[i];
  const double x = std::log2(seq / static_cast<double>(a.seq)) /
                   std::log2(static_cast<double>(b.seq) / static_cast<double>(a.seq));
  return a.*f + x * (b.*f - a.*f);
}

double at(const std::vector<AttentionCurvePoint>& points, double head_dim, double seq, Speed f) {
  // Each head size's speed at `seq`, in order of head size.
  std::vector<std::pair<double, double>> by_head;
  for (size_t b = 0; b < points.size();) {
    size_t e = b;
    while (e < points.size() && points[e].head_dim == points[b].head_dim) ++e;
    by_head.emplace_back(static_cast<double>(points[b].head_dim), along_seq(points, b, e, seq, f));
    b = e;
  }
  if (head_dim <= by_head.front().first) return by_head.front().second;
  if (head_dim >= by_head.back().first) return by_head.back().second;
  size_t i = 1;
  while (by_head[i].first < head_dim) ++i;
  const auto [d0, f0] = by_head[i - 1];
  const auto [d1, f1] = by_head[i];
  return f0 + (head_dim - d0) / (d1 - d0) * (f1 - f0);
}

}  // namespace

double AttentionCurve::forward_flops_per_s(double head_dim, double seq) const {
  return at(points, head_dim, seq, &AttentionCurvePoint::forward_flops_per_s);
}

double AttentionCurve::backward_flops_per_s(double head_dim, double seq) const {
  return at(points, head_dim, seq, &AttentionCurvePoint::backward_flops_per_s);
}

}  // namespace loom
