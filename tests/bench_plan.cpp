// Google Benchmark: the planner's full search (issue 4; figures in BENCHMARKS.md, "Planner").
// Run: build/tests/loom_bench_plan --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Counters: considered (candidates in the space), evaluated (cost-model calls), and the rates
// per second of wall time and per core (wall time x threads).
#include <benchmark/benchmark.h>

#include <thread>

#include "planner/search.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

struct Case {
  const char* model;
  const char* cluster;
  int64_t gpus, batch, seq;
};

void run_search(benchmark::State& state, const Case& k, bool prune) {
  auto m = load_model(k.model, "bench", nullptr);
  auto c = load_cluster(k.cluster, "bench");
  if (!m || !c || !size_cluster(*c, k.gpus, "bench")) {
    state.SkipWithError("inputs");
    return;
  }
  TrainSpec t;
  t.global_batch = k.batch;
  t.seq = k.seq;
  t.dp_bucket_bytes = 80'000'000;
  auto space = make_search_space(*m, *c, t, {});
  SearchOptions o;
  o.threads = static_cast<int>(state.range(0));
  o.prune = prune;
  SearchResult r;
  for (auto _ : state) {
    r = search(*m, *c, *space, o);
    benchmark::DoNotOptimize(r.top.data());
  }
  const double threads = static_cast<double>(o.threads);
  state.counters["considered"] = static_cast<double>(r.considered);
  state.counters["evaluated"] = static_cast<double>(r.evaluated);
  state.counters["considered_per_s"] = benchmark::Counter(static_cast<double>(r.considered), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["evaluated_per_s"] = benchmark::Counter(static_cast<double>(r.evaluated), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["evaluated_per_core_s"] =
      benchmark::Counter(static_cast<double>(r.evaluated) / threads, benchmark::Counter::kIsIterationInvariantRate);
}

const Case kGpt3_1024{"gpt3-175b", "dgx-a100", 1024, 1536, 2048};
const Case kGpt3_8192{"gpt3-175b", "dgx-a100", 8192, 1536, 2048};
// Llama 3 405B pre-training: 16,384 H100s, 16M-token batches of 8192-token sequences
// (Llama Team 2024, arXiv 2407.21783, Sec. 3.4): 2048 sequences.
const Case kLlama405_16384{"llama3-405b", "dgx-h100", 16384, 2048, 8192};

void BM_PlanGpt3_1024(benchmark::State& s) { run_search(s, kGpt3_1024, true); }
void BM_PlanGpt3_8192(benchmark::State& s) { run_search(s, kGpt3_8192, true); }
void BM_PlanLlama405_16384(benchmark::State& s) { run_search(s, kLlama405_16384, true); }
// Without pruning: every valid candidate evaluated (the evaluation rate per core).
void BM_PlanGpt3_1024_Exhaustive(benchmark::State& s) { run_search(s, kGpt3_1024, false); }

BENCHMARK(BM_PlanGpt3_1024)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PlanGpt3_8192)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PlanLlama405_16384)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PlanGpt3_1024_Exhaustive)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
