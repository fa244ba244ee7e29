#include "sim/attention_curve.hpp"

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

// Walks the head sizes in order (no allocation: the planner asks this for every stage it prices)
// and interpolates between the two around `head_dim`.
double at(const std::vector<AttentionCurvePoint>& points, double head_dim, double seq, Speed f) {
  double prev_d = 0, prev_f = 0;
  bool first = true;
  for (size_t b = 0; b < points.size();) {
    size_t e = b;
    while (e < points.size() && points[e].head_dim == points[b].head_dim) ++e;
    const double d = static_cast<double>(points[b].head_dim), v = along_seq(points, b, e, seq, f);
    if (head_dim <= d) return first ? v : prev_f + (head_dim - prev_d) / (d - prev_d) * (v - prev_f);
    prev_d = d, prev_f = v, first = false;
    b = e;
  }
  return prev_f;
}

}  // namespace

double AttentionCurve::forward_flops_per_s(double head_dim, double seq) const {
  return at(points, head_dim, seq, &AttentionCurvePoint::forward_flops_per_s);
}

double AttentionCurve::backward_flops_per_s(double head_dim, double seq) const {
  return at(points, head_dim, seq, &AttentionCurvePoint::backward_flops_per_s);
}

}  // namespace loom
