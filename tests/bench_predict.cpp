// Google Benchmark: the time one `loom predict` evaluation takes (compute only, inputs loaded).
// Run: build/tests/loom_bench --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include "sim/cost_model.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

ParallelConfig gpt3_config() {
  ParallelConfig p;
  p.tp = 8;
  p.pp = 16;
  p.dp = 8;
  p.zero = 1;
  p.sp = true;
  p.recompute = Recompute::selective;
  p.schedule = Schedule::interleaved;
  p.vpp = 2;
  return p;
}

CostModel gpt3_model() {
  auto m = load_model("gpt3-175b", "bench", nullptr);
  auto c = load_cluster("dgx-a100", "bench");
  (void)size_cluster(*c, 1024, "bench");
  TrainSpec t;
  t.global_batch = 1536;
  t.seq = 2048;
  t.dp_bucket_bytes = 80'000'000;
  return CostModel(*m, *c, t);
}

// One configuration with its group links already known (what the planner pays per candidate).
void BM_PredictGpt3_1024(benchmark::State& state) {
  const CostModel cm = gpt3_model();
  const ParallelConfig p = gpt3_config();
  const auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  const GroupLinksSet links = group_links(cm.topology(), *grid);
  for (auto _ : state) benchmark::DoNotOptimize(cm.evaluate(p, links));
}
BENCHMARK(BM_PredictGpt3_1024)->Unit(benchmark::kMicrosecond);

// The same, pricing the group links on the cluster graph too (what `loom predict` pays).
void BM_PredictGpt3_1024_WithTopology(benchmark::State& state) {
  const CostModel cm = gpt3_model();
  const ParallelConfig p = gpt3_config();
  for (auto _ : state) benchmark::DoNotOptimize(cm.evaluate(p));
}
BENCHMARK(BM_PredictGpt3_1024_WithTopology)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
