// ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory", arXiv 2405.15362) as a
// schedule beside the others (`--schedule zb-v`): its tables through make_schedule, the V
// placement of layers, embedding and loss head, the simulated and the analytical bubble, the
// rules validate_config states, the search, the export to torchtitan's ZBVZeroBubble and the
// import back. The CPU executor's bit-identity with 1F1B is in tests/executor/test_parallel.cpp.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/plan.hpp"
#include "sim/schedule.hpp"
#include "sim/simulator.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
using namespace loom::test;

namespace {

ParallelConfig zb_v(int64_t dp, int64_t tp, int64_t pp, int64_t mb = 1) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.schedule = Schedule::zb_v;
  p.vpp = 2;
  p.micro_batch = mb;
  return p;
}

// Equal stages, no communication: per chunk F = B = W = 1 (a stage's two chunks: forward 2,
// backward 4 of which the weight gradients are 2).
SimInputs equal_chunks(Schedule s, int64_t pp, int64_t vpp, int64_t m) {
  StageInputs st;
  st.forward_s = 2;
  st.backward_s = 4;
  st.weight_grad_s = 2;
  st.layers = 4;
  return equal_stages(s, pp, vpp, m, st);
}

Status check(const CostModel& cm, const ParallelConfig& p) {
  return validate_config(cm.model(), cm.cluster(), cm.train(), p, [](const std::string& f) { return f; });
}

}  // namespace

TEST_CASE("zb-v as a schedule: make_schedule's tables, warm-up and in-flight counts, the V's sends") {
  for (int64_t p : {2, 3, 4, 8})
    for (int64_t m : {1, 2, 3, 5, 7, 8, 15, 16, 32}) {
      const auto t = make_schedule(Schedule::zb_v, p, 2, m);
      REQUIRE(static_cast<int64_t>(t.size()) == p);
      for (int64_t r = 0; r < p; ++r) {
        INFO("p " << p << " m " << m << " rank " << r);
        CHECK(t[r] == zb_v_rank(p, r, m));
        int64_t warm = 0;
        while (t[r][warm].phase == Phase::forward) ++warm;
        CHECK(warm == warmup_slots(Schedule::zb_v, p, 2, r, m));
        // The cost model's count (stage_work.cpp) is the table's: min(2m, m + 1 + r, 2p).
        CHECK(peak_in_flight(t[r]) == in_flight_chunks(Schedule::zb_v, p, 2, r, m));
      }
    }
  // The V: rank r holds virtual stages r and 2p - 1 - r; the last rank turns it on itself.
  const Schedule v = Schedule::zb_v;
  for (int64_t vs = 0; vs < 8; ++vs) {
    const StageChunk sc = stage_chunk(v, vs, 4);
    CHECK(virtual_stage(v, sc.stage, sc.chunk, 4) == vs);
  }
  CHECK(stage_chunk(v, 5, 4) == StageChunk{2, 1});
  CHECK(slot_destination(v, 3, 0, Phase::forward, 4, 2) == StageChunk{3, 1});
  CHECK(slot_destination(v, 3, 1, Phase::backward, 4, 2) == StageChunk{3, 0});
  CHECK(slot_destination(v, 2, 1, Phase::forward, 4, 2) == StageChunk{1, 1});
  CHECK(slot_destination(v, 0, 1, Phase::forward, 4, 2) == StageChunk{});  // the loss head
  CHECK(slot_destination(v, 0, 0, Phase::backward, 4, 2) == StageChunk{});  // the embedding
  CHECK(slot_destination(v, 0, 1, Phase::backward, 4, 2) == StageChunk{1, 1});
  CHECK(slot_source(v, 1, 1, Phase::forward, 4, 2) == StageChunk{2, 1});
  CHECK(slot_source(v, 3, 0, Phase::backward, 4, 2) == StageChunk{3, 1});
  CHECK(slot_source(v, 2, 0, Phase::weight, 4, 2) == StageChunk{});
  CHECK(head_stage(v, 4) == 0);
  CHECK(head_stage(Schedule::zb_h1, 4) == 3);
  CHECK(splits_backward(v));
}

TEST_CASE("zb-v's turn stays on the last rank: what it keeps is never written over before it is read") {
  // The CPU executor keeps chunk 0's output in its receive buffer until chunk 1's F, and chunk
  // 1's input gradient in its backward buffer until chunk 0's B (trainer_pipeline.cpp). Both
  // hold if no slot that receives (a chunk-0 F, a chunk-1 B) runs between a chunk-0 F and the
  // same micro-batch's chunk-1 F, and a chunk-1 B's next B is the same micro-batch's chunk-0 B.
  for (int64_t p : {2, 3, 4, 8})
    for (int64_t m : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, 2 * p - 1, 2 * p, int64_t{16}}) {
      INFO("p " << p << " m " << m);
      const std::vector<Slot> t = zb_v_rank(p, p - 1, m);
      for (size_t k = 0; k < t.size(); ++k) {
        if (t[k].chunk == 0 && t[k].phase == Phase::forward) {
          size_t j = k + 1;
          for (; j < t.size() && !(t[j].chunk == 1 && t[j].phase == Phase::forward); ++j) {
            CHECK_FALSE((t[j].chunk == 0 && t[j].phase == Phase::forward));
            CHECK_FALSE((t[j].chunk == 1 && t[j].phase == Phase::backward));
          }
          REQUIRE(j < t.size());
          CHECK(t[j].micro_batch == t[k].micro_batch);
        }
        if (t[k].chunk == 1 && t[k].phase == Phase::backward) {
          size_t j = k + 1;
          while (j < t.size() && t[j].phase != Phase::backward) ++j;
          REQUIRE(j < t.size());
          CHECK(t[j] == Slot{t[k].micro_batch, 0, Phase::backward});
        }
      }
    }
}

TEST_CASE("zb-v with F = B = W per chunk: step 6m + (p - 1), a bubble of (p-1)/(6m), half of zb-h1's") {
  // Each rank computes 2 chunks x m x (F + B + W) = 6m chunk units; the first forward's walk
  // down the V to the last rank, p - 1 chunk forwards, is all that is left. ZB-H1 on the same
  // stages leaves (p - 1)(F + B - W) in stage units, 2(p - 1). All exact in binary.
  for (int64_t p : {2, 3, 4, 8})
    for (int64_t m : {2 * p - 1, 2 * p, int64_t{16}, int64_t{32}}) {
      INFO("p " << p << " m " << m);
      auto v = simulate(equal_chunks(Schedule::zb_v, p, 2, m), no_overlap());
      auto h = simulate(equal_chunks(Schedule::zb_h1, p, 1, m), no_overlap());
      REQUIRE(v.ok());
      REQUIRE(h.ok());
      CHECK(v->step_time_s == 6.0 * m + static_cast<double>(p - 1));
      CHECK(v->time.compute_s == 6.0 * m);
      CHECK(v->time.bubble_s / v->time.compute_s == static_cast<double>(p - 1) / (6.0 * m));
      CHECK(h->time.bubble_s == 2 * v->time.bubble_s);
      // Freed by their W: every stage holds 2p chunks of half a stage, 1F1B's first stage's p stages.
      for (int64_t i = 0; i < p; ++i) CHECK(v->stages[i].peak_in_flight == 2 * p);
      // The table played alone (the cost model's zb_v_bubble_s) gives the simulator's step.
      const std::vector<ChunkPassSeconds> unit(static_cast<size_t>(p), ChunkPassSeconds{1, 1, 1});
      auto played = table_makespan_s(make_schedule(Schedule::zb_v, p, 2, m), Schedule::zb_v, 2, m, unit);
      REQUIRE(played.ok());
      CHECK(*played == v->step_time_s);
    }
}

TEST_CASE("zb-v, GPT-2 350M on pp 4, free links, overlap off: the V's placement, priced as the simulator plays it") {
  const ClusterSpec c = ideal_cluster(8);
  const CostModel cm = gpt2_350m(c, 64);  // 32 micro-batches of 2 per replica
  const ParallelConfig p = zb_v(1, 2, 4, 2);
  REQUIRE(check(cm, p).ok());
  const Estimate est = cm.evaluate(p);
  auto r = simulate(cm, p, no_overlap());
  REQUIRE(r.ok());
  INFO("simulated " << r->step_time_s << " analytical " << est.step_time_s);
  CHECK(std::fabs(r->step_time_s / est.step_time_s - 1) <= 0.03);
  // Stage 0 holds the embedding and the loss head (the V's two ends), the last stage neither.
  CHECK(est.stages[0].params > est.stages[1].params);
  CHECK(est.stages[3].params == est.stages[1].params);
  CHECK(est.stages[0].memory.logits > 0);
  CHECK(est.stages[3].memory.logits == 0);
  // Layers as a V: stage 0 holds the first 3 and the last 3 of 24.
  int64_t on_zero = 0;
  for (const LayerPlacement& l : layer_placement(p, 24))
    if (l.stage == 0) {
      CHECK((l.layer < 3 || l.layer >= 21));
      ++on_zero;
    }
  CHECK(on_zero == 6);
  // Sends: the last stage turns the V on itself (one send each way), the first sends one each
  // way (its ends send nothing), the middle ones two.
  for (int64_t s = 0; s < 4; ++s) {
    const StageWork w = build_stage_work(cm.model(), c, cm.train(), p, s);
    int64_t fwd = 0, bwd = 0;
    for (const Message& msg : w.messages)
      if (msg.group == Group::pp) (msg.pass == Pass::forward ? fwd : bwd) += msg.count;
    INFO("stage " << s);
    CHECK(fwd == (s == 1 || s == 2 ? 2 : 1));
    CHECK(bwd == fwd);
  }
  // Every stage holds 2p chunks of half a stage: the layers' activations of 1F1B's first stage.
  ParallelConfig f = p;
  f.schedule = Schedule::one_f_one_b;
  f.vpp = 1;
  const Estimate one = cm.evaluate(f);
  for (int64_t s = 0; s < 4; ++s) CHECK(r->stages[s].peak_in_flight == est.stages[s].in_flight);
  CHECK(est.stages[1].in_flight == 8);
  CHECK(est.time.bubble_s < one.time.bubble_s / 4);
  // Tied embeddings (GPT-2): the first stage holds both ends, one copy and no gradient all-reduce.
  REQUIRE(cm.model().tied_embeddings);
  for (int64_t s = 0; s < 4; ++s)
    CHECK(build_stage_work(cm.model(), c, cm.train(), p, s).find(Group::dp, "embedding gradient") == nullptr);
  CHECK(build_stage_work(cm.model(), c, cm.train(), f, 0).find(Group::dp, "embedding gradient") != nullptr);
}

TEST_CASE("zb-v's rules: vpp 2, pp > 1, even stages; fewer than 2p - 1 micro-batches run with a larger bubble") {
  const CostModel cm = gpt2_350m(ideal_cluster(8), 64);
  ParallelConfig p = zb_v(1, 2, 4);
  CHECK(check(cm, p).ok());
  p.vpp = 3;
  CHECK(check(cm, p).error().message == "vpp: the zb-v schedule runs two chunks per rank, a V: must be 2 (got 3)");
  p = zb_v(4, 2, 1);
  CHECK(check(cm, p).error().message == "schedule: the zb-v schedule needs pp > 1 (got pp 1)");
  p = zb_v(1, 2, 4);
  p.stage_layers = {4, 8, 8, 4};
  CHECK(check(cm, p).error().message == "stage_layers: the zb-v schedule places even stages only (got uneven stages)");
  p.stage_layers = {6, 6, 6, 6};
  CHECK(check(cm, p).ok());
  // 4 micro-batches on pp 4 (fewer than 7): the tables drop the missing ones' slots.
  const CostModel few = gpt2_350m(ideal_cluster(4), 4);
  const ParallelConfig q = zb_v(1, 1, 4);
  REQUIRE(check(few, q).ok());
  auto r = simulate(few, q, no_overlap());
  REQUIRE(r.ok());
  CHECK(std::fabs(r->step_time_s / few.evaluate(q).step_time_s - 1) <= 0.03);
}

TEST_CASE("zb-v on the command line: predict sets vpp 2, the search tries it where pp > 1, export and import") {
  const std::string base = "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 32 --tp 2 --pp 4 ";
  const std::string plan = temp_file("zb_v_plan.json", "");
  LoomRun a = run_loom("predict " + base + "--schedule zb-v --json -o " + plan);
  INFO(a.err);
  REQUIRE(a.code == 0);
  const auto j = nlohmann::json::parse(a.out);
  CHECK(j["schedule"] == "zb-v");
  CHECK(j["vpp"] == 2);
  LoomRun bad = run_loom("predict " + base + "--schedule zb-v --vpp 3");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("vpp: the zb-v schedule runs two chunks per rank, a V: must be 2 (got 3)") != std::string::npos);
  CHECK(run_loom("simulate " + plan + " --json").code == 0);
  LoomRun t = run_loom("export " + plan + " --to torchtitan");
  CHECK(t.code == 0);
  CHECK(t.out.find("pipeline_parallel_schedule = \"ZBVZeroBubble\"") != std::string::npos);
  LoomRun mg = run_loom("export " + plan + " --to megatron");
  CHECK(mg.code == 0);
  CHECK((mg.out + mg.err).find("schedule zb-v") != std::string::npos);
  // Unpinned, the search tries zb-v (vpp 2, the even split) wherever there is a pipeline.
  auto model = load_model("gpt2-350m", "test", nullptr);
  REQUIRE(model.ok());
  TrainSpec tr;
  tr.global_batch = 32;
  tr.seq = 1024;
  auto space = make_search_space(*model, ideal_cluster(8), tr, {});
  REQUIRE(space.ok());
  for (const SplitSpace& sp : space->splits) {
    const auto at = std::find(sp.schedules.begin(), sp.schedules.end(), std::pair<Schedule, int64_t>{Schedule::zb_v, 2});
    CHECK((at != sp.schedules.end()) == (sp.pp > 1));
  }
  LoomRun pl = run_loom("plan " + base + "--schedule zb-v --json");
  INFO(pl.err);
  REQUIRE(pl.code == 0);
  for (const auto& row : nlohmann::json::parse(pl.out)["top"]) CHECK(row["schedule"] == "zb-v");
}

TEST_CASE("import torchtitan reads ZBVZeroBubble back as zb-v; an uneven V is refused", "[import]") {
  const std::string plan = temp_file("zbv_rt_plan.json", ""), file = temp_file("zbv_rt.toml", ""),
                    back = temp_file("zbv_rt_back.json", "");
  REQUIRE(run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 32 --seq 2048 --tp 2 --pp 4 "
                   "--zero 2 --sp on --schedule zb-v --micro-batch 2 --grad-dtype fp32 --grad-accumulation separate "
                   "--tp-backward-overlap off -o " + plan)
              .code == 0);
  REQUIRE(run_loom("export " + plan + " --to torchtitan -o " + file).code == 0);
  LoomRun i = run_loom("import torchtitan " + file + " --cluster dgx-h100 --gpus 16 -o " + back);
  INFO(i.err);
  REQUIRE(i.code == 0);
  const auto a = nlohmann::json::parse(slurp(plan)), b = nlohmann::json::parse(slurp(back));
  CHECK(b["parallel"] == a["parallel"]);
  CHECK(b["train"] == a["train"]);
  CHECK(b["prediction"]["step_time_s"] == a["prediction"]["step_time_s"]);
  // torchtitan's default first/last_stage_less_layers of 1 put both lighter stages on rank 0.
  std::string text = slurp(file);
  for (const std::string& key : {"pipeline_parallel_first_stage_less_layers = ", "pipeline_parallel_last_stage_less_layers = ",
                                 "pipeline_parallel_layers_per_stage = "}) {
    const auto at = text.find(key);
    REQUIRE(at != std::string::npos);
    text.erase(at, text.find('\n', at) + 1 - at);  // unset: torchtitan's defaults (1, 1, 2 stages per rank)
  }
  LoomRun u = run_loom("import torchtitan " + temp_file("zbv_uneven.toml", text) + " --cluster dgx-h100 --gpus 16");
  CHECK(u.code == 2);
  CHECK(u.err.find("zb-v places equal stages only") != std::string::npos);
}

// Data parallelism under the schedules that split the backward (zb-v, zb-h1), priced as the
// simulator plays it: ZeRO-2's reduce-scatters queue behind the W passes, most of all behind
// the drain's W's back to back (zb_v_dp_tail_s plays that queue on zb-v's tables); ZeRO-3's
// gathers run in F and B, and its reduce-scatters after each W spill into the pass that
// follows, where they share the links with its gathers (zero3_split_exposed_s). GPT-3 175B on
// 1024 A100s (dp 64, tp 2, pp 8, ZeRO-2, where the reductions nearly fill each micro-batch)
// and Llama 3 70B at 8192 tokens on 1024 H100s (ZeRO-3 over dp x cp, where context
// parallelism halves the compute that hides each gather).
TEST_CASE("zb-v and zb-h1 with ZeRO-2 and ZeRO-3: the analytical step within 3% of the simulator's",
          "[zb_v][simulator]") {
  struct Case {
    const char *model, *cluster;
    int64_t gpus, batch, seq, dp, tp, pp, cp, zero;
    Schedule schedule;
  };
  for (const Case& k : {Case{"gpt3-175b", "dgx-a100", 1024, 1536, 2048, 64, 2, 8, 1, 2, Schedule::zb_v},
                        Case{"llama3-70b", "dgx-h100", 1024, 512, 8192, 128, 2, 2, 2, 3, Schedule::zb_v},
                        Case{"llama3-70b", "dgx-h100", 1024, 1024, 8192, 128, 2, 2, 2, 3, Schedule::zb_v},
                        Case{"llama3-70b", "dgx-h100", 1024, 1024, 8192, 64, 2, 4, 2, 3, Schedule::zb_v},
                        Case{"llama3-70b", "dgx-h100", 1024, 1024, 8192, 128, 2, 2, 2, 3, Schedule::zb_h1}}) {
    const Job j = job(k.model, k.cluster, k.gpus, k.batch, k.seq);
    ParallelConfig p;
    p.dp = k.dp, p.tp = k.tp, p.pp = k.pp, p.cp = k.cp, p.zero = k.zero, p.sp = true;
    p.schedule = k.schedule, p.vpp = k.schedule == Schedule::zb_v ? 2 : 1;
    INFO(k.model << " dp " << k.dp << " tp " << k.tp << " pp " << k.pp << " cp " << k.cp << " zero " << k.zero
                 << (k.schedule == Schedule::zb_v ? " zb-v" : " zb-h1") << " batch " << k.batch);
    REQUIRE(validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; }));
    const CostModel cm(j.model, j.cluster, j.train);
    const Estimate est = cm.evaluate(p);
    auto sim = simulate(cm, p, SimOptions{});
    REQUIRE(sim.ok());
    INFO("analytical " << est.step_time_s << " s, simulated " << sim->step_time_s << " s");
    CHECK(std::fabs(sim->step_time_s / est.step_time_s - 1) <= 0.03);
    CHECK(est.time.dp_comm_s > 0);
  }
}
