// The search's floor under a tp-comm-overlap variant (planner/search.hpp overlap_floor_s): it
// never exceeds that variant's step, and skipping the variants it rules out changes neither the
// ranking nor a count other than the evaluations run.
#include <catch2/catch.hpp>

#include "planner/search.hpp"
#include "sim/cost_model.hpp"
#include "sim/rank_grid.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"
#include "sim_fixtures.hpp"

using namespace loom;

namespace {

using test::Job;  // sim_fixtures.hpp: a job from the zoo, 80 MB dp buckets
using test::job;

}  // namespace

TEST_CASE("the overlap floor is at most the overlap variant's step, whatever the schedule", "[planner][search]") {
  struct Case {
    const char* model;
    const char* cluster;
    int64_t gpus, batch, seq;
  };
  int64_t compared = 0;
  for (const Case& k : {Case{"gpt3-175b", "dgx-a100", 64, 64, 2048}, Case{"llama3-8b", "dgx-h100", 32, 64, 4096},
                        Case{"gpt2-350m", "dgx-a100", 16, 32, 1024}}) {
    const Job j = job(k.model, k.cluster, k.gpus, k.batch, k.seq);
    REQUIRE(overlap_floor_holds(j.model, j.cluster, j.train));
    const CostModel cm(j.model, j.cluster, j.train);
    for (int64_t tp : {2, 4, 8})
      for (int64_t pp : {1, 2, 4})
        for (auto [s, vpp] : {std::pair{Schedule::one_f_one_b, int64_t{1}}, {Schedule::gpipe, 1}, {Schedule::zb_h1, 1},
                              {Schedule::zb_v, 2}, {Schedule::interleaved, 2}})
          for (int64_t mb : {1, 2})
            for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full})
              for (int zero : {0, 3}) {
                ParallelConfig p;
                p.tp = tp, p.pp = pp, p.dp = k.gpus / (tp * pp), p.micro_batch = mb, p.recompute = r, p.zero = zero;
                p.schedule = s, p.vpp = vpp, p.sp = true;
                if (!validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; })) continue;
                const GroupLinksSet links = group_links(cm.topology(), *RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp));
                const Estimate off = cm.evaluate(p, links);
                p.tp_comm_overlap = true;
                const Estimate on = cm.evaluate(p, links);
                INFO(k.model << " tp " << tp << " pp " << pp << " schedule " << static_cast<int>(s) << " micro-batch " << mb
                             << " recompute " << static_cast<int>(r) << " zero " << zero);
                CHECK(overlap_floor_s(off) <= on.step_time_s);
                CHECK(on.fits == off.fits);
                for (const StageEstimate& st : on.stages) CHECK(st.tp_comm_s >= 0);
                ++compared;
              }
  }
  CHECK(compared > 300);
}

TEST_CASE("the floor skips overlap variants and the search still ranks and counts as the exhaustive one",
          "[planner][search]") {
  const Job j = job("llama3-8b", "dgx-h100", 64, 512, 8192);
  auto space = make_search_space(j.model, j.cluster, j.train, SearchPins{});
  REQUIRE(space.ok());
  REQUIRE(space->tp_comm_overlap.size() == 2);
  SearchOptions pruned, exhaustive;
  exhaustive.prune = false;
  const SearchResult a = search(j.model, j.cluster, *space, pruned);
  const SearchResult b = search(j.model, j.cluster, *space, exhaustive);
  // Every feasible candidate used to be evaluated; the floor leaves some overlap variants out.
  CHECK(a.evaluated < a.feasible);
  CHECK(a.considered == b.considered);
  CHECK(a.feasible == b.feasible);
  CHECK(a.rejected == b.rejected);
  REQUIRE(a.top.size() == b.top.size());
  for (size_t i = 0; i < a.top.size(); ++i) {
    INFO("rank " << i);
    CHECK(a.top[i].step_time_s == b.top[i].step_time_s);
    CHECK(a.top[i].memory.peak() == b.top[i].memory.peak());
    CHECK(a.top[i].parallel.tp_comm_overlap == b.top[i].parallel.tp_comm_overlap);
    CHECK(a.top[i].parallel.schedule == b.top[i].parallel.schedule);
    CHECK(a.top[i].parallel.micro_batch == b.top[i].parallel.micro_batch);
  }
}
