// Playing schedule tables fast (sim/schedule.hpp): table_makespan_s as compile_tables + play_s,
// and TableMakespans, the search's per-thread memo of played tables. Both must give the
// bits the straightforward play gives (the rule the cost model's zb-v bubble is defined by),
// over a grid of pipeline sizes, micro-batch counts and F/B/W ratios, equal and unequal stages.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <vector>

#include "planner/search.hpp"
#include "sim/cost_model.hpp"
#include "sim/schedule.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"
#include "sim_fixtures.hpp"

using namespace loom;

namespace {

using test::Job;  // sim_fixtures.hpp: a job from the zoo, 80 MB dp buckets
using test::job;

// The reference: every rank runs its table in order, a slot when its input has ended, until no
// rank can move (the rule table_makespan_s states; this is its implementation before it was
// split into compile_tables and play_s).
double reference_makespan_s(const std::vector<std::vector<Slot>>& tables, Schedule s, int64_t vpp, int64_t m,
                            const std::vector<ChunkPassSeconds>& per_stage) {
  const int64_t pp = static_cast<int64_t>(tables.size()), chunks = pp * vpp;
  std::vector<double> end(static_cast<size_t>(3 * chunks * m), -1.0);
  auto at = [&](Phase ph, int64_t vs, int64_t mb) -> double& {
    return end[static_cast<size_t>((static_cast<int64_t>(ph) * chunks + vs) * m + mb)];
  };
  std::vector<size_t> next(static_cast<size_t>(pp), 0);
  std::vector<double> free_s(static_cast<size_t>(pp), 0.0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int64_t r = 0; r < pp; ++r) {
      const auto& t = tables[static_cast<size_t>(r)];
      for (size_t& k = next[static_cast<size_t>(r)]; k < t.size(); ++k, moved = true) {
        const Slot& x = t[k];
        const int64_t vs = virtual_stage(s, r, x.chunk, pp);
        const StageChunk src = slot_source(s, r, x.chunk, x.phase, pp, vpp);
        double ready = 0;
        if (x.phase == Phase::weight) ready = at(Phase::backward, vs, x.micro_batch);
        else if (src.stage >= 0) ready = at(x.phase, virtual_stage(s, src.stage, src.chunk, pp), x.micro_batch);
        else if (x.phase == Phase::backward) ready = at(Phase::forward, vs, x.micro_batch);
        if (ready < 0) break;
        const ChunkPassSeconds& c = per_stage[static_cast<size_t>(r)];
        double& f = free_s[static_cast<size_t>(r)];
        f = std::max(f, ready) + (x.phase == Phase::forward ? c.f : x.phase == Phase::backward ? c.b : c.w);
        at(x.phase, vs, x.micro_batch) = f;
      }
    }
  }
  for (int64_t r = 0; r < pp; ++r) REQUIRE(next[static_cast<size_t>(r)] == tables[static_cast<size_t>(r)].size());
  return *std::max_element(free_s.begin(), free_s.end());
}

// Stage passes of a pattern: `kind` 0 equal stages, 1 a heavier first stage (the V's both ends:
// embedding and loss head), 2 every stage different (an irregular spread).
std::vector<ChunkPassSeconds> stages_of(int64_t pp, ChunkPassSeconds ratio, int kind) {
  std::vector<ChunkPassSeconds> out;
  for (int64_t i = 0; i < pp; ++i) {
    const double k = kind == 0 ? 1.0 : kind == 1 ? (i == 0 ? 1.37 : 1.0) : 1.0 + 0.113 * static_cast<double>((i * 7) % 5);
    out.push_back({ratio.f * k, ratio.b * k, ratio.w * k * (kind == 2 ? 0.9 : 1.0)});
  }
  return out;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("compiled tables play to the reference's bits, zb-v through the search's memo too", "[schedule][zb_v]") {
  const std::vector<ChunkPassSeconds> ratios{{1, 1, 1}, {1, 2, 1}, {1, 1.5, 0.5}, {0.3, 0.7, 0.11}, {2.5, 3.1, 1.7}};
  TableMakespans memo;
  int64_t played = 0;
  for (int64_t p : {2, 3, 4, 5, 8, 16})
    for (int64_t m : {int64_t{1}, int64_t{2}, int64_t{3}, 2 * p - 2, 2 * p - 1, 2 * p, 4 * p, 4 * p + 3})
      for (const ChunkPassSeconds& ratio : ratios)
        for (int kind : {0, 1, 2}) {
          if (m < 1) continue;
          INFO("p " << p << " m " << m << " F/B/W " << ratio.f << "/" << ratio.b << "/" << ratio.w << " kind " << kind);
          const auto stages = stages_of(p, ratio, kind);
          const auto tables = make_schedule(Schedule::zb_v, p, 2, m);
          const double want = reference_makespan_s(tables, Schedule::zb_v, 2, m, stages);
          const auto got = table_makespan_s(tables, Schedule::zb_v, 2, m, stages);
          REQUIRE(got.ok());
          CHECK(same_bits(*got, want));
          for (int again = 0; again < 2; ++again) {  // the first call plays, the second finds it
            const auto kept = memo.makespan_s(Schedule::zb_v, p, 2, m, stages);
            REQUIRE(kept.ok());
            CHECK(same_bits(*kept, want));
          }
          ++played;
        }
  CHECK(played == 6 * 8 * 5 * 3);
}

TEST_CASE("compiled tables of the other schedules play to the reference's bits", "[schedule]") {
  for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::zb_h1, Schedule::interleaved})
    for (int64_t p : {2, 3, 4})
      for (int64_t m : {int64_t{1}, p, 2 * p, 3 * p + 1}) {
        const int64_t vpp = s == Schedule::interleaved ? 2 : 1;
        if (s == Schedule::interleaved && m % p != 0) continue;  // Megatron-LM's rule
        INFO("schedule " << static_cast<int>(s) << " p " << p << " m " << m);
        const auto stages = stages_of(p, {1, 1.5, 0.5}, 2);
        const auto tables = make_schedule(s, p, vpp, m);
        const auto got = table_makespan_s(tables, s, vpp, m, stages);
        REQUIRE(got.ok());
        CHECK(same_bits(*got, reference_makespan_s(tables, s, vpp, m, stages)));
      }
}

TEST_CASE("a deadlocked table is an error from the compiled play too", "[schedule]") {
  // Rank 0 runs micro-batch 0's backward before its forward: it waits for itself.
  std::vector<std::vector<Slot>> tables{{{0, 0, Phase::backward}, {0, 0, Phase::forward}}};
  const auto got = table_makespan_s(tables, Schedule::one_f_one_b, 1, 1, {{1, 1, 1}});
  REQUIRE_FALSE(got.ok());
  CHECK(got.error().message.find("wait on each other") != std::string::npos);
}

TEST_CASE("the cost model prices zb-v the same with and without the search's memo", "[zb_v][planner]") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 64, 1024);
  const CostModel cm(j.model, j.cluster, j.train);
  REQUIRE(j.cluster.gemm_model != nullptr);  // its GEMM times kept in the memo too
  EvalMemo memo;
  int64_t compared = 0, with_bubble = 0;
  for (int64_t pp : {2, 4, 8})
    for (int64_t mb : {1, 2, 4})
      for (int zero : {0, 1, 3})  // the same stage passes again: the memo's kept result
        for (Recompute r : {Recompute::none, Recompute::full}) {
          ParallelConfig p;
          p.tp = 2, p.pp = pp, p.dp = 16 / (2 * pp), p.micro_batch = mb, p.zero = zero, p.recompute = r;
          p.schedule = Schedule::zb_v, p.vpp = 2, p.sp = true;
          if (!validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; })) continue;
          auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
          REQUIRE(grid.ok());
          const GroupLinksSet links = group_links(cm.topology(), *grid);
          const Estimate plain = cm.evaluate(p, links);
          const Estimate kept = cm.evaluate(p, links, true, &memo);
          INFO("pp " << pp << " micro-batch " << mb << " zero " << zero);
          with_bubble += plain.time.bubble_s > 0 ? 1 : 0;  // else the heavy first stage hides the fill
          CHECK(same_bits(kept.time.bubble_s, plain.time.bubble_s));
          CHECK(same_bits(kept.step_time_s, plain.step_time_s));
          CHECK(same_bits(cm.evaluate(p, links, true, &memo).step_time_s, plain.step_time_s));  // from the memo
          ++compared;
        }
  CHECK(compared > 20);
  CHECK(with_bubble > 5);
}
