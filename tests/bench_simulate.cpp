// Google Benchmark: one simulated step of GPT-3 175B on 1024 A100s (dp 8, tp 8, pp 16,
// interleaved vpp 2, 192 micro-batches per replica), the case BENCHMARKS.md records.
// Run: build/tests/loom_bench_simulate --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include "sim/simulator.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

ParallelConfig gpt3_config(Schedule s, int64_t vpp, int zero = 1) {
  ParallelConfig p;
  p.tp = 8;
  p.pp = 16;
  p.dp = 8;
  p.zero = zero;
  p.sp = true;
  p.recompute = Recompute::selective;
  p.schedule = s;
  p.vpp = vpp;
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

// The whole `loom simulate` computation: group links, cost model, graph, sweep, breakdown.
void simulate_case(benchmark::State& state, Schedule s, int64_t vpp, bool keep_tasks, int zero = 1) {
  const CostModel cm = gpt3_model();
  const ParallelConfig p = gpt3_config(s, vpp, zero);
  SimOptions o;
  o.keep_tasks = keep_tasks;
  int64_t tasks = 0;
  for (auto _ : state) {
    auto r = simulate(cm, p, o);
    tasks = r->task_count;
    benchmark::DoNotOptimize(r);
  }
  state.counters["tasks"] = static_cast<double>(tasks);
}

void BM_SimulateGpt3_1024_Interleaved(benchmark::State& st) { simulate_case(st, Schedule::interleaved, 2, true); }
void BM_SimulateGpt3_1024_Interleaved_NoTasks(benchmark::State& st) { simulate_case(st, Schedule::interleaved, 2, false); }
void BM_SimulateGpt3_1024_1F1B(benchmark::State& st) { simulate_case(st, Schedule::one_f_one_b, 1, true); }
// ZeRO-3: a gather per slot and reduce-scatter buckets in every backward, the largest graphs.
void BM_SimulateGpt3_1024_1F1B_Zero3(benchmark::State& st) { simulate_case(st, Schedule::one_f_one_b, 1, true, 3); }
BENCHMARK(BM_SimulateGpt3_1024_Interleaved)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SimulateGpt3_1024_Interleaved_NoTasks)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SimulateGpt3_1024_1F1B)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SimulateGpt3_1024_1F1B_Zero3)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
