#include "sim/shared_sweep.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
#include <utility>

#include "sim/simulator.hpp"

namespace loom {

bool NicSharing::any() const {
  if (!node_patterns.empty()) return true;
  return std::any_of(tp_shares_nic.begin(), tp_shares_nic.end(), [](uint8_t x) { return x != 0; });
}

namespace {

enum class User : uint8_t { fixed, dp, tp };

User user_of(const SimTask& t, const NicSharing& ns) {
  switch (t.kind) {
    case TaskKind::dp_grad:
    case TaskKind::dp_gather:
    case TaskKind::dp_gather_params: return t.dur_s > 0 ? User::dp : User::fixed;
    case TaskKind::tp:
      return t.dur_s > 0 && static_cast<size_t>(t.stage) < ns.tp_shares_nic.size() && ns.tp_shares_nic[t.stage]
                 ? User::tp
                 : User::fixed;
    default: return User::fixed;
  }
}

// Out-edges of every task, grouped by source (compressed rows).
struct OutEdges {
  std::vector<int32_t> begin;
  std::vector<SweepEdge> edges;
  OutEdges(size_t n, const std::vector<SweepEdge>& all) : begin(n + 1, 0), edges(all.size()) {
    for (const SweepEdge& e : all) ++begin[static_cast<size_t>(e.from) + 1];
    for (size_t i = 0; i < n; ++i) begin[i + 1] += begin[i];
    std::vector<int32_t> at(begin.begin(), begin.end() - 1);
    for (const SweepEdge& e : all) edges[static_cast<size_t>(at[e.from]++)] = e;
  }
};

// The sharing tasks running now, their remaining work (seconds at solo bandwidth) and rates.
class Sharing {
 public:
  Sharing(const NicSharing& ns, size_t tasks, size_t stages)
      : ns_(ns), dp_(stages, 0), tp_(stages, 0), remaining_(tasks, 0), rate_(tasks, 1) {}

  void add(int32_t task, int32_t stage, User u, double work_s) {
    active_.push_back({task, stage, u});
    remaining_[task] = work_s;
    (u == User::dp ? dp_ : tp_)[stage] += 1;
    rates();
  }
  void remove(size_t i) {
    const Active a = active_[i];
    (a.user == User::dp ? dp_ : tp_)[a.stage] -= 1;
    active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
    rates();
  }
  bool empty() const { return active_.empty(); }
  double next_end_s(double now) const {
    double t = std::numeric_limits<double>::infinity();
    for (const Active& a : active_) t = std::min(t, now + remaining_[a.task] / rate_[a.task]);
    return t;
  }
  void advance(double dt) {
    for (const Active& a : active_) remaining_[a.task] -= dt * rate_[a.task];
  }
  // The first running task whose work is done (remaining within rounding of zero), or -1.
  int64_t done(double now) const {
    for (size_t i = 0; i < active_.size(); ++i)
      if (remaining_[active_[i].task] <= 1e-12 * std::max(1.0, now)) return static_cast<int64_t>(i);
    return -1;
  }
  int32_t task(size_t i) const { return active_[i].task; }
  // When the running task `task` is down to `remaining_s` of work, at this pace.
  double reaches_s(int32_t task, double remaining_s, double now) const {
    return now + std::max(0.0, remaining_[task] - remaining_s) / rate_[task];
  }
  bool reached(int32_t task, double remaining_s, double now) const {
    return remaining_[task] <= remaining_s + 1e-12 * std::max(1.0, now);
  }

 private:
  struct Active {
    int32_t task, stage;
    User user;
  };
  // Equal shares of the stage's rings; a dp ring edge through a node shared with other stages
  // gets at most NIC / (active ring edges leaving that node).
  void rates() {
    for (const Active& a : active_) {
      const size_t s = static_cast<size_t>(a.stage);
      double r = 1.0 / static_cast<double>(dp_[s] + tp_[s]);
      if (a.user == User::dp && ns_.solo_bytes_per_s[s] > 0)
        for (const auto& pat : ns_.node_patterns) {
          if (pat[s] == 0) continue;
          double load = 0;
          for (size_t q = 0; q < pat.size(); ++q) load += dp_[q] * pat[q];
          r = std::min(r, ns_.nic_bytes_per_s / load / ns_.solo_bytes_per_s[s]);
        }
      rate_[a.task] = r;
    }
  }
  const NicSharing& ns_;
  std::vector<double> dp_, tp_;  // sharing tasks running per stage
  std::vector<double> remaining_, rate_;
  std::vector<Active> active_;
};

}  // namespace

Expected<double> sweep_shared(std::vector<SimTask>& tasks, const std::vector<SweepEdge>& edges,
                              const NicSharing& ns) {
  const size_t n = tasks.size();
  const OutEdges out(n, edges);
  std::vector<int32_t> pending(n, 0);
  for (const SweepEdge& e : edges) ++pending[static_cast<size_t>(e.to)];
  std::vector<double> ready(n, 0.0);
  using Start = std::pair<double, int32_t>;
  std::priority_queue<Start, std::vector<Start>, std::greater<Start>> starts;
  for (size_t i = 0; i < n; ++i)
    if (pending[i] == 0) starts.push({0.0, static_cast<int32_t>(i)});
  auto resolve = [&](int32_t to, double t) {
    ready[to] = std::max(ready[to], t);
    if (--pending[to] == 0) starts.push({ready[to], to});
  };
  Sharing running(ns, n, ns.solo_bytes_per_s.size());
  // Edges from a sharing task at 0 < frac < 1: `to` may start once that task has done frac of
  // its work, however much sharing stretches it (ZeRO 1/2's weight gather, whose first buckets
  // the first forward needs, not the last).
  struct Mark {
    int32_t from, to;
    double remaining_s;
  };
  std::vector<Mark> marks;
  double now = 0, added = 0;
  size_t started = 0;
  auto start = [&](int32_t u) {
    SimTask& t = tasks[u];
    t.start_s = now;
    ++started;
    const User who = user_of(t, ns);
    for (int32_t k = out.begin[u]; k < out.begin[u + 1]; ++k) {
      const SweepEdge& e = out.edges[k];
      if (who == User::fixed) resolve(e.to, now + e.frac * t.dur_s);
      else if (e.frac == 0) resolve(e.to, now);
      else if (e.frac < 1) marks.push_back({u, e.to, (1 - e.frac) * t.dur_s});
    }
    if (who != User::fixed) running.add(u, t.stage, who, t.dur_s);
  };
  auto finish = [&](size_t i) {
    const int32_t u = running.task(i);
    SimTask& t = tasks[u];
    added += (now - t.start_s) - t.dur_s;
    t.dur_s = now - t.start_s;
    for (int32_t k = out.begin[u]; k < out.begin[u + 1]; ++k)
      if (out.edges[k].frac >= 1) resolve(out.edges[k].to, now);
    running.remove(i);
  };
  while (!starts.empty() || !running.empty()) {
    const double t_start = starts.empty() ? std::numeric_limits<double>::infinity() : starts.top().first;
    double t = std::min(t_start, running.next_end_s(now));
    for (const Mark& m : marks) t = std::min(t, running.reaches_s(m.from, m.remaining_s, now));
    running.advance(t - now);
    now = t;
    const auto hit = std::find_if(marks.begin(), marks.end(),
                                  [&](const Mark& m) { return running.reached(m.from, m.remaining_s, now); });
    if (hit != marks.end()) {
      const int32_t to = hit->to;
      marks.erase(hit);
      resolve(to, now);
      continue;
    }
    if (int64_t i = running.done(now); i >= 0) {
      finish(static_cast<size_t>(i));
      continue;
    }
    while (!starts.empty() && starts.top().first <= now) {
      const int32_t u = starts.top().second;
      starts.pop();
      start(u);
    }
  }
  if (started != n) return make_error("simulate", "the schedule deadlocks (the task graph has a cycle)");
  return added;
}

}  // namespace loom
