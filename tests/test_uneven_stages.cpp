// Uneven pipeline stages (ParallelConfig::stage_layers, sim/stage_split.hpp): the embedding and
// the loss head make the first and last stages heavier, a layer count pp does not divide (Llama
// 3 405B's 126 layers on 16 stages) needs an uneven split; the cost model, the simulator and
// the planner see it, the flags and files carry it, and the engines' spellings round-trip.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/plan.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
using namespace loom::test;

namespace {

const FieldNamer kAsIs = [](const std::string& f) { return f; };

ParallelConfig pipeline(int64_t pp, std::vector<int64_t> layers, Schedule s = Schedule::one_f_one_b, int64_t vpp = 1) {
  ParallelConfig p;
  p.pp = pp;
  p.schedule = s;
  p.vpp = vpp;
  p.stage_layers = std::move(layers);
  return p;
}

std::string rule(const Job& j, const ParallelConfig& p) {
  auto st = validate_config(j.model, j.cluster, j.train, p, kAsIs);
  return st ? std::string() : st.error().message;
}

}  // namespace

TEST_CASE("uneven stages: GPT-2 350M over pp 4, the last stage carries the loss head's FLOPs") {
  // Per micro-batch of T = 1024 tokens (b 1, s 1024), h 1024, V 50257, Narayanan et al.'s count:
  // a layer 24 T h^2 + 4 T s h forward and twice that backward, the logits 2 T h V forward and
  // twice that backward; the embedding is a gather (no matrix FLOPs). Six layers a stage: the
  // last does 1 + 2 h V / (6 (24 h^2 + 4 s h)) = 1.5844 times a middle stage's matrix work.
  const Job j = job("gpt2-350m", "dgx-h100", 4, 8, 1024);
  ParallelConfig even;
  even.pp = 4;
  const FlopCount T = 1024, h = 1024, s = 1024, V = 50257;
  const FlopCount layer = 3 * (24 * T * h * h + 4 * T * s * h);
  const FlopCount head = 3 * 2 * T * h * V;
  const auto stage = [&](const ParallelConfig& p, int64_t i) {
    return build_stage_work(j.model, j.cluster, j.train, p, i).flops_per_micro_batch();
  };
  CHECK(stage(even, 0) == 6 * layer);
  CHECK(stage(even, 1) == 6 * layer);
  CHECK(stage(even, 3) == 6 * layer + head);
  CHECK(static_cast<double>(stage(even, 3)) / static_cast<double>(stage(even, 1)) == Approx(1.5844).epsilon(1e-4));
  // The priced time shows it too (less than the FLOPs: the logits GEMM runs closer to peak),
  // and the split 7, 7, 7, 3 gives the head's stage fewer layers: its slowest stage is faster.
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate e = cm.evaluate(even);
  CHECK(e.stages[3].micro_batch_s() > e.stages[1].micro_batch_s());
  const Estimate b = cm.evaluate(pipeline(4, {7, 7, 7, 3}));
  CHECK(b.stages[3].layers == 3);
  CHECK(b.stages[3].flops == 8 * (3 * layer + head));  // 8 micro-batches
  auto slowest = [](const Estimate& x) {
    double t = 0;
    for (const auto& st : x.stages) t = std::max(t, st.micro_batch_s());
    return t;
  };
  CHECK(slowest(b) < slowest(e));
  CHECK(b.step_time_s < e.step_time_s);
}

TEST_CASE("uneven stages: the rules of a split, each one line naming stage_layers") {
  const Job j = job("gpt2-350m", "dgx-h100", 4, 8, 1024);
  CHECK(rule(j, pipeline(4, {6, 6, 6})) ==
        "stage_layers: must give one layer count per pipeline stage, pp = 4 (got 3 entries: 6,6,6)");
  CHECK(rule(j, pipeline(4, {6, 6, 6, 5})) == "stage_layers: must sum to the model's 24 layers (got 23)");
  CHECK(rule(j, pipeline(4, {12, 12, 0, 0})) == "stage_layers: each stage must hold 1 to 24 layers (got 0 on stage 2)");
  CHECK(rule(j, pipeline(4, {7, 7, 7, 3}, Schedule::interleaved, 2)) ==
        "stage_layers: each stage's layers must be a multiple of vpp 2, equal per chunk, but the first and last "
        "stage's, whose first (last) chunk may hold fewer than the others and at least 1 (got 7 on stage 1)");
  CHECK(rule(j, pipeline(4, {8, 6, 6, 4}, Schedule::interleaved, 2)).empty());
  // The first and last stage may leave their model-end chunk short (Megatron-LM's embedding and
  // loss counted as layers): 7 = 4 + 3 on stage 0, 5 = 3 + 2 on stage 3; never an empty chunk.
  CHECK(rule(j, pipeline(4, {7, 6, 6, 5}, Schedule::interleaved, 2)).empty());
  CHECK(rule(j, pipeline(4, {5, 7, 6, 6}, Schedule::interleaved, 2)) ==
        "stage_layers: each stage's layers must be a multiple of vpp 2, equal per chunk, but the first and last "
        "stage's, whose first (last) chunk may hold fewer than the others and at least 1 (got 7 on stage 1)");
  // zb-v places its chunks as a V: no short chunk there.
  CHECK_FALSE(rule(j, pipeline(4, {7, 6, 6, 5}, Schedule::zb_v, 2)).empty());
  const Job j8 = job("gpt2-350m", "dgx-h100", 2, 8, 1024);
  CHECK(rule(j8, pipeline(2, {20, 4}, Schedule::interleaved, 4)).empty());
  CHECK_FALSE(rule(j8, pipeline(2, {21, 3}, Schedule::interleaved, 4)).empty());  // 3 over 4 chunks: one empty
  // pp 5 does not divide 24 layers: refused as an even split, valid with a split.
  ParallelConfig five = pipeline(5, {5, 5, 5, 5, 4});
  const Job j5 = job("gpt2-350m", "dgx-h100", 5, 10, 1024);
  CHECK(rule(j5, five).empty());
  CHECK(rule(j5, pipeline(5, {})) == "pp: pp x vpp must divide layers (24 % 5 != 0)");
}

TEST_CASE("uneven stages: layer placement, chunk by chunk, as Megatron-core interleaves") {
  // 8 layers, stages of 6 and 2, two chunks each: chunk 0 of stage 0 holds 0-2, of stage 1
  // layer 3, chunk 1 of stage 0 4-6, of stage 1 layer 7.
  const auto l = layer_placement(8, 2, 2, {6, 2});
  REQUIRE(l.size() == 8);
  const int64_t stage[] = {0, 0, 0, 1, 0, 0, 0, 1}, chunk[] = {0, 0, 0, 0, 1, 1, 1, 1};
  for (size_t i = 0; i < 8; ++i) {
    CHECK(l[i].layer == static_cast<int64_t>(i));
    CHECK(l[i].stage == stage[i]);
    CHECK(l[i].chunk == chunk[i]);
  }
  // Llama 3.1 405B as Megatron-Bridge runs it: 126 layers on pp 8 x vpp 8 with the embedding and
  // the loss counted as layers (15, 16 x 6, 15): two layers per chunk but the model's first
  // chunk (layer 0, stage 0) and its last (layer 125, stage 7).
  const std::vector<int64_t> mb = {15, 16, 16, 16, 16, 16, 16, 15};
  CHECK(megatron_account_split(126, 8, 8, AccountFor{true, true}, "x").value() == mb);
  CHECK(megatron_account_for(mb, 126, 8).has_value());
  const auto big = layer_placement(126, 8, 8, mb);
  REQUIRE(big.size() == 126);
  CHECK(big[0].stage == 0);
  CHECK(big[1].stage == 1);  // chunk 0 of stage 0 holds layer 0 alone
  CHECK(big[2].stage == 1);
  CHECK(big[3].stage == 2);
  CHECK(big[124].stage == 6);
  CHECK(big[125].stage == 7);  // the last chunk of stage 7 holds layer 125 alone
  CHECK(big[125].chunk == 7);
  ParallelConfig p405;
  p405.pp = 8, p405.vpp = 8, p405.stage_layers = mb;
  CHECK(chunk_layers_at(p405, 126, 0, 0) == 1);
  CHECK(chunk_layers_at(p405, 126, 0, 1) == 2);
  CHECK(chunk_layers_at(p405, 126, 7, 7) == 1);
  CHECK(chunk_layers_at(p405, 126, 7, 0) == 2);
  CHECK(chunk_layer_count(p405, 126, 0) == 2);  // the most a chunk of stage 0 holds
  // An equal split that vpp does not divide runs with short end chunks, and is offered.
  const auto six = stage_split_candidates(6, 2, 2);
  CHECK(std::find(six.begin(), six.end(), std::vector<int64_t>{3, 3}) != six.end());
  // Megatron-LM refuses what does not divide: (126 + 1) over 8 stages.
  CHECK_FALSE(megatron_account_split(126, 8, 8, AccountFor{false, true}, "x").ok());
  // The planner tries it.
  const auto cands = stage_split_candidates(126, 8, 8);
  CHECK(std::find(cands.begin(), cands.end(), mb) != cands.end());
  // Without a split, the even blocks as before.
  const auto e = layer_placement(8, 2, 2);
  CHECK(e[2].stage == 1);
  CHECK(e[4].chunk == 1);
}

TEST_CASE("uneven stages: candidate splits keep Megatron's first/last convention") {
  // 24 layers on 4 stages: the even split, the first stage as a middle one and the head's
  // stage lighter, or both ends lighter.
  const auto c = stage_split_candidates(24, 4, 1);
  CHECK(c == std::vector<std::vector<int64_t>>{{}, {7, 7, 7, 3}, {5, 7, 7, 5}});
  // Llama 3 405B: 126 layers on 16 stages (the paper's 7, 8 x 14, 7 among them).
  const auto l = stage_split_candidates(126, 16, 1);
  std::vector<int64_t> meta(16, 8);
  meta.front() = meta.back() = 7;
  CHECK(std::find(l.begin(), l.end(), meta) != l.end());
  for (const auto& v : l) {
    CHECK(v.size() == 16);
    CHECK(std::accumulate(v.begin(), v.end(), int64_t{0}) == 126);
    CHECK(megatron_first_last(v).has_value());
  }
  CHECK(stage_split_candidates(4, 8, 1) == std::vector<std::vector<int64_t>>{{}});  // nothing fits
  for (const auto& v : stage_split_candidates(24, 4, 2))
    for (int64_t x : v) CHECK(x % 2 == 0);
}

TEST_CASE("uneven stages: the simulator plays the split as the analytical step prices it") {
  // Free links, no overlap: compute, tp and the optimizer term by term, and the whole step for
  // GPipe and 1F1B with the slowest stage first, in the middle or last.
  Job j = job("gpt2-350m", "dgx-a100", 4, 64, 1024);
  free_links(j.cluster);
  const CostModel cm(j.model, j.cluster, j.train);
  SimOptions o;
  o.overlap = false;
  o.contention = false;
  std::set<size_t> slowest;  // which stage was the slowest, over the cases
  for (Schedule s : {Schedule::one_f_one_b, Schedule::gpipe})
    for (const auto& split : std::vector<std::vector<int64_t>>{{7, 7, 7, 3}, {10, 5, 5, 4}, {4, 10, 6, 4}, {4, 6, 6, 8}}) {
      const ParallelConfig p = pipeline(4, split, s);
      REQUIRE(rule(j, p).empty());
      auto r = simulate(cm, p, o);
      REQUIRE(r.ok());
      const Estimate est = cm.evaluate(p, /*overlap=*/false);
      size_t slow = 0;
      for (size_t i = 1; i < 4; ++i)
        if (est.stages[i].micro_batch_s() > est.stages[slow].micro_batch_s()) slow = i;
      slowest.insert(slow);
      INFO("schedule " << to_string(s) << " split " << stage_layers_text(split) << ": simulated " << r->step_time_s
                       << " s, analytical " << est.step_time_s << " s");
      CHECK(r->time.compute_s == Approx(est.time.compute_s).epsilon(1e-9));
      for (int64_t i = 0; i < 4; ++i) CHECK(r->stages[i].peak_in_flight == est.stages[i].in_flight);
      CHECK(r->step_time_s == Approx(est.step_time_s).epsilon(1e-9));
    }
  CHECK(slowest == std::set<size_t>{0, 1, 3});
}

TEST_CASE("uneven stages: the planner picks a balanced split where it is faster") {
  const Job j = job("gpt2-350m", "dgx-h100", 4, 16, 1024);
  SearchPins pins;
  pins.pp = 4;
  pins.tp = 1;
  pins.zero = 0;
  pins.schedule = Schedule::one_f_one_b;
  auto space = make_search_space(j.model, j.cluster, j.train, pins);
  REQUIRE(space.ok());
  SearchOptions so;
  so.top_k = 1000;
  const SearchResult r = search(j.model, j.cluster, *space, so);
  REQUIRE(!r.top.empty());
  const Estimate& best = r.top.front();
  INFO("winner split " << stage_layers_text(best.parallel.stage_layers));
  CHECK(!best.parallel.stage_layers.empty());
  // The even split of the same knobs, also in the ranking, is slower.
  bool found = false;
  for (const Estimate& e : r.top) {
    ParallelConfig q = e.parallel;
    ParallelConfig w = best.parallel;
    q.stage_layers.clear(), w.stage_layers.clear();
    if (!e.parallel.stage_layers.empty() || q.micro_batch != w.micro_batch || q.recompute != w.recompute ||
        q.order != w.order || e.train.grad_dtype != best.train.grad_dtype)
      continue;
    found = true;
    CHECK(e.step_time_s > best.step_time_s);
  }
  CHECK(found);
}

TEST_CASE("uneven stages: Llama 3 405B's 126 layers on pp 16 are priced and planned") {
  const Job j = job("llama3-405b", "dgx-h100", 2048, 2048, 8192);
  std::vector<int64_t> meta(16, 8);
  meta.front() = meta.back() = 7;  // Llama Team 2024 (arXiv 2407.21783), Sec. 3.3.2
  ParallelConfig p = pipeline(16, meta);
  p.tp = 8;
  p.dp = 16;
  p.zero = 1;
  p.sp = true;
  REQUIRE(rule(j, p).empty());
  const Estimate e = CostModel(j.model, j.cluster, j.train).evaluate(p);
  CHECK(e.stages[0].layers == 7);
  CHECK(e.stages[15].layers == 7);
  CHECK(e.stages[8].layers == 8);
  SearchPins pins;
  pins.tp = 8;
  pins.pp = 16;
  pins.zero = 1;
  pins.micro_batch = 1;
  pins.sp = true;
  pins.grad_dtype = Dtype::bf16;
  pins.order = "tp-dp-pp";
  auto space = make_search_space(j.model, j.cluster, j.train, pins);
  REQUIRE(space.ok());
  const SearchResult r = search(j.model, j.cluster, *space, SearchOptions{});
  REQUIRE(!r.top.empty());
  const auto& v = r.top.front().parallel.stage_layers;
  CHECK(r.top.front().parallel.pp == 16);
  REQUIRE(v.size() == 16);
  CHECK(std::accumulate(v.begin(), v.end(), int64_t{0}) == 126);
}

TEST_CASE("uneven stages: the plan file carries the split, strictly read") {
  const Job j = job("gpt2-350m", "dgx-h100", 4, 8, 1024);
  Plan plan{j.model, j.cluster, j.train, pipeline(4, {7, 7, 7, 3}), {}};
  plan.prediction = CostModel(j.model, j.cluster, j.train).evaluate(plan.parallel);
  const nlohmann::json doc = plan_to_json(plan);
  CHECK(doc["parallel"]["stage_layers"] == nlohmann::json({7, 7, 7, 3}));
  CHECK(doc["prediction"]["stage_layers"] == nlohmann::json({7, 7, 7, 3}));
  auto back = plan_from_json(doc, "plan.json");
  REQUIRE(back.ok());
  CHECK(back->parallel.stage_layers == std::vector<int64_t>{7, 7, 7, 3});
  nlohmann::json bad = doc;
  bad["parallel"]["stage_layers"] = {7, "x", 7, 3};
  auto e = plan_from_json(bad, "plan.json");
  REQUIRE(!e.ok());
  CHECK(e.error().message == "plan.json: /parallel/stage_layers: each entry must be an integer in [1, 1048576] (got \"x\")");
  bad["parallel"]["stage_layers"] = {7, 7, 7, 4};
  e = plan_from_json(bad, "plan.json");
  REQUIRE(!e.ok());
  CHECK(e.error().message.find("stage_layers: must sum to the model's 24 layers (got 25)") != std::string::npos);
}

TEST_CASE("uneven stages on the command line: --stage-layers, and bad lists exit 2 in one line") {
  const std::string job = "--model gpt2-350m --cluster dgx-h100 --gpus 4 --global-batch 8 --tp 1 ";
  const std::string plan = temp_file("uneven_plan.json", "");
  LoomRun ok = run_loom("predict " + job + "--pp 4 --stage-layers 7,7,7,3 --json -o " + plan);
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  CHECK(nlohmann::json::parse(ok.out)["stage_layers"] == nlohmann::json({7, 7, 7, 3}));
  struct Bad {
    std::string args, line;
  };
  for (const Bad& b : {Bad{"predict " + job + "--pp 4 --stage-layers 6,6,6",
                           "loom: --stage-layers: must give one layer count per pipeline stage, pp = 4 (got 3 entries: "
                           "6,6,6)\n"},
                       Bad{"predict " + job + "--pp 4 --stage-layers 6,x,6,6",
                           "loom: --stage-layers: must be layer counts per stage, integers in [1, 1048576] separated "
                           "by commas (got \"6,x,6,6\")\n"},
                       Bad{"predict " + job + "--pp 4 --stage-layers 6,6,6,7",
                           "loom: --stage-layers: must sum to the model's 24 layers (got 25)\n"},
                       Bad{"plan " + job + "--pp 2 --stage-layers 7,7,7,3",
                           "loom: --stage-layers: must give one layer count per pipeline stage, of a pp dividing --gpus 4 "
                           "and equal to --pp 2 (got 4 entries)\n"},
                       Bad{"simulate " + plan + " --stage-layers 8,8,8",
                           "loom: --stage-layers: must give one layer count per pipeline stage, pp = 4 (got 3 entries: "
                           "8,8,8)\n"},
                       Bad{"execute " + plan + " --stage-layers 99999999999999999999",
                           "loom: --stage-layers: must be layer counts per stage, integers in [1, 1048576] separated "
                           "by commas (got \"99999999999999999999\")\n"}}) {
    LoomRun r = run_loom(b.args);
    INFO(b.args);
    CHECK(r.code == 2);
    CHECK(r.err == b.line);
  }
  LoomRun sim = run_loom("simulate " + plan + " --stage-layers 8,6,6,4 --json");
  INFO(sim.err);
  CHECK(sim.code == 0);
  LoomRun pinned = run_loom("plan " + job + "--stage-layers 8,6,6,4 --json --top 1 --refine 0");
  INFO(pinned.err);
  REQUIRE(pinned.code == 0);
  CHECK(pinned.out.find("\"stage_layers\": [\n") != std::string::npos);
}

namespace {

// predict -o, export --to ENGINE, import ENGINE: the same configuration, split included.
void round_trip(const std::string& engine, const std::string& predict_args, const std::string& import_args,
                const std::string& name, const std::string& flag) {
  INFO(engine << " " << predict_args);
  const RoundTrip t = export_round_trip(engine, predict_args, import_args, name, flag);
  CHECK(plan_configuration(t.imported) == plan_configuration(t.plan));
  CHECK(plan_configuration(t.imported)["parallel"].contains("stage_layers"));
}

}  // namespace

TEST_CASE("uneven stages: export writes the engines' first/last stage flags and import reads them back", "[import]") {
  const std::string llama = "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 2048 --tp 4 --pp 4 "
                            "--zero 1 --grad-dtype fp32 --stage-layers 7,9,9,7";
  round_trip("megatron", llama, "--cluster dgx-h100 --gpus 16",
             "uneven_mg", "--decoder-first-pipeline-num-layers 7 \\\n  --decoder-last-pipeline-num-layers 7");
  // Interleaved: Megatron takes the chunks per rank beside the first/last counts.
  round_trip("megatron",
             "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 2048 --tp 4 --pp 4 --zero 1 "
             "--grad-dtype fp32 --schedule interleaved --vpp 2 --stage-layers 6,10,10,6",
             "--cluster dgx-h100 --gpus 16", "uneven_mg_int", "--num-virtual-stages-per-pipeline-rank 2");
  // A short first and last chunk: Llama 3.1 405B as Megatron-Bridge runs it, the embedding and
  // the loss counted as layers ((126 + 2) / (8 x 8) = 2 per chunk, 1 in the model's first and last).
  round_trip("megatron",
             "--model llama3-405b --cluster dgx-h100 --gpus 1024 --global-batch 128 --seq 2048 --tp 8 --pp 8 --zero 1 "
             "--grad-dtype fp32 --recompute full --schedule interleaved --vpp 8 --stage-layers 15,16,16,16,16,16,16,15",
             "--cluster dgx-h100 --gpus 1024", "uneven_mg_account",
             "--account-for-embedding-in-pipeline-split \\\n  --account-for-loss-in-pipeline-split");
  // torchtitan: the embedding and the output as 2 layers each, (32 + 4) / 4 = 9 per stage; its
  // 1F1B sends asynchronously (--pp-comm-overlap on).
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 32 --global-batch 16 --seq 2048 --tp 4 --pp 4 --zero 2 --sp on "
             "--grad-dtype fp32 --stage-layers 7,9,9,7 --grad-accumulation separate --tp-backward-overlap off "
             "--pp-comm-overlap on",
             "--cluster dgx-h100 --gpus 32", "uneven_tt", "pipeline_parallel_first_stage_less_layers = 2");
  // Megatron-core refuses a first stage its chunks do not divide; so does the import.
  const auto odd = temp_file("uneven_odd_first.sh",
                             "pretrain_gpt.py --num-layers 12 --hidden-size 256 --num-attention-heads 4 --seq-length 128 "
                             "--max-position-embeddings 128 --micro-batch-size 1 --global-batch-size 16 --bf16 --vocab-size 1024 "
                             "--tensor-model-parallel-size 1 --pipeline-model-parallel-size 2 "
                             "--num-virtual-stages-per-pipeline-rank 2 --decoder-first-pipeline-num-layers 5\n");
  LoomRun oi = run_loom("import megatron " + odd + " --cluster dgx-h100 --gpus 2");
  CHECK(oi.code == 2);
  CHECK(oi.err.find("--decoder-first-pipeline-num-layers: must be a multiple of the chunks per rank, 2") !=
        std::string::npos);
  // A split Megatron's flags cannot write (unequal middle stages) is named, not mis-written.
  const auto plan = temp_file("uneven_odd.json", "");
  REQUIRE(run_loom("predict " + llama.substr(0, llama.find("--stage-layers")) + "--stage-layers 7,8,10,7 -o " + plan).code == 0);
  LoomRun e = run_loom("export " + plan + " --to megatron");
  CHECK(e.code == 0);
  CHECK(e.out.find("decoder-first") == std::string::npos);
  CHECK(e.err.find("stage_layers 7,8,10,7: Megatron-LM's --decoder-first/last-pipeline-num-layers keep the middle") !=
        std::string::npos);
  LoomRun d = run_loom("export " + plan + " --to deepspeed");
  CHECK(d.err.find("DeepSpeed's partition_method") != std::string::npos);
}

// Interleaved 1F1B over an uneven split: the bubble from Megatron-LM's tables played, not
// (sum - slowest) / vpp, which is exact for equal stages only. Llama 3 70B at 8192 tokens on
// 1024 H100s, the first stage two layers heavier (42/38, vpp 2): the closed form read the
// bubble at 0.35 s where the simulator's timeline shows 0.10 s (the lighter stage catches up
// between the first stage's chunks), 4% slow in all.
TEST_CASE("interleaved over an uneven split: the played tables' bubble, as the simulator's timeline",
          "[uneven][simulator]") {
  const test::Job j = test::job("llama3-70b", "dgx-h100", 1024, 1024, 8192);
  ParallelConfig p;
  p.dp = 128, p.tp = 2, p.pp = 2, p.cp = 2, p.zero = 3, p.sp = true;
  p.schedule = Schedule::interleaved, p.vpp = 2;
  p.stage_layers = {42, 38};
  REQUIRE(validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; }));
  const CostModel cm(j.model, j.cluster, j.train);
  const Estimate est = cm.evaluate(p);
  auto sim = simulate(cm, p, SimOptions{});
  REQUIRE(sim.ok());
  INFO("analytical " << est.step_time_s << " s (bubble " << est.time.bubble_s << "), simulated " << sim->step_time_s
                     << " s");
  CHECK(std::fabs(sim->step_time_s / est.step_time_s - 1) <= 0.03);
  // Under half the closed form's bubble (the lighter stage's micro-batch time over vpp).
  REQUIRE(est.stages[0].micro_batch_s() > est.stages[1].micro_batch_s());
  CHECK(est.time.bubble_s < est.stages[1].micro_batch_s() / 2 / 2);
  // Even splits keep the closed form: (sum - slowest) / vpp, less what of the last stage's
  // larger optimizer step (it holds the output layer) the drain hides, here under a nanosecond.
  p.stage_layers.clear();
  const Estimate even = cm.evaluate(p);
  size_t slow = even.stages[0].micro_batch_s() >= even.stages[1].micro_batch_s() ? 0 : 1;
  CHECK(even.time.bubble_s == Approx(even.stages[1 - slow].micro_batch_s() / 2).epsilon(1e-8));
  CHECK(even.time.bubble_s <= even.stages[1 - slow].micro_batch_s() / 2);
}
