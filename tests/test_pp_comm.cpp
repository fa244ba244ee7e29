// Pipeline transfers as the engines run them: overlapped with the next chunk or blocking their
// sender (ParallelConfig::pp_comm_overlap, unset: Megatron-core's choice per schedule), and
// Megatron-LM 2021's scatter/gather of each transfer over the tensor-parallel ranks
// (TrainSpec::pp_scatter_gather). The cost model, the simulator, the plan file, the CLI and the
// Megatron-LM export and import each see the same setting.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <string>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim_fixtures.hpp"

using namespace loom;
using namespace loom::test;

namespace {

// GPT-2 350M over 16 A100s (two nodes), dp 8, pp 2, micro-batch 4, rank order tp-dp-pp: the
// two stages on the two nodes, 16 micro-batches per replica, transfers a few % of the step.
ParallelConfig gpt2_pp(Schedule s, int64_t vpp) {
  ParallelConfig p;
  p.dp = 8, p.pp = 2, p.micro_batch = 4, p.schedule = s, p.vpp = vpp;
  return p;
}

const Message* find_message(const StageWork& w, Group g, const char* name, Pass pass) {
  for (const Message& m : w.messages)
    if (m.group == g && m.pass == pass && std::strcmp(m.name, name) == 0) return &m;
  return nullptr;
}

}  // namespace

TEST_CASE("pipeline sends: 1F1B's block, interleaved's overlap, as pinned otherwise", "[cost_model][simulator]") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 512, 1024);
  const CostModel cm(j.model, j.cluster, j.train);
  ParallelConfig plain = gpt2_pp(Schedule::one_f_one_b, 1), interleaved = gpt2_pp(Schedule::interleaved, 2);
  CHECK_FALSE(plain.pp_overlapped());
  CHECK(interleaved.pp_overlapped());
  const Estimate blocking = cm.evaluate(plain);
  // Blocking: the slowest stage (the last, with the loss head) waits for each of its sends, m
  // times per step what it sends per micro-batch: in 1F1B its input gradient alone, with two
  // chunks also its first chunk's output and its second chunk's input gradient (1 + 2). The
  // same p2p_s (b s h bf16 over the same link) in both, so they stand at 1 : 3 exactly.
  interleaved.pp_comm_overlap = false;
  const Estimate blocking_v2 = cm.evaluate(interleaved);
  CHECK(blocking.time.pp_comm_s / blocking_v2.time.pp_comm_s == Approx(1.0 / 3).epsilon(1e-12));
  CHECK(blocking_v2.time.pp_comm_s > 0.03 * blocking_v2.step_time_s);  // the regime: the transfers matter
  // Overlapped: at most a transfer per chunk of the slowest stage, and the fill and drain's.
  plain.pp_comm_overlap = true;
  const Estimate overlapped = cm.evaluate(plain);
  CHECK(overlapped.time.pp_comm_s < 0.55 * blocking.time.pp_comm_s);
  CHECK(overlapped.step_time_s < blocking.step_time_s);
  // The simulator plays a blocking send on its sender's compute stream: the same step.
  for (const ParallelConfig& p : {gpt2_pp(Schedule::one_f_one_b, 1), plain, interleaved}) {
    INFO(to_string(p.schedule) << " overlapped " << p.pp_overlapped());
    check_simulated_step(cm, p, 0.01);
  }
}

TEST_CASE("pipeline scatter/gather: 1/tp of each transfer per rank, gathered again by the receiver", "[stage_work]") {
  const Job j = job("llama3-8b", "dgx-h100", 16, 16, 2048);
  TrainSpec t = j.train;
  t.pp_scatter_gather = true;
  ParallelConfig p;
  p.tp = 4, p.pp = 4;
  const int64_t full = 2 * 2048 * 4096;  // bf16 (s, b, h) of one micro-batch
  const StageWork first = build_stage_work(j.model, j.cluster, t, p, 0), middle = build_stage_work(j.model, j.cluster, t, p, 1),
                  last = build_stage_work(j.model, j.cluster, t, p, 3);
  const Message* send = find_message(middle, Group::pp, "pp send", Pass::forward);
  REQUIRE(send != nullptr);
  CHECK(send->bytes == full / 4);
  for (Pass pass : {Pass::forward, Pass::backward}) {
    const Message* g = find_message(middle, Group::tp, kPpGatherMessage, pass);
    REQUIRE(g != nullptr);
    CHECK(g->kind == MessageKind::all_gather);
    CHECK(g->bytes == full);
    CHECK(g->count == 1);
  }
  // The first stage receives no activation, the last no output gradient.
  CHECK(find_message(first, Group::tp, kPpGatherMessage, Pass::forward) == nullptr);
  CHECK(find_message(first, Group::tp, kPpGatherMessage, Pass::backward) != nullptr);
  CHECK(find_message(last, Group::tp, kPpGatherMessage, Pass::backward) == nullptr);
  CHECK(find_message(last, Group::tp, kPpGatherMessage, Pass::forward) != nullptr);
  // With sequence parallelism the tensor is split already: no gather, 1/tp sent either way.
  p.sp = true;
  const StageWork sp = build_stage_work(j.model, j.cluster, t, p, 1);
  CHECK(find_message(sp, Group::tp, kPpGatherMessage, Pass::forward) == nullptr);
  CHECK(find_message(sp, Group::pp, "pp send", Pass::forward)->bytes == full / 4);
  // Off (Megatron-core's): every tp rank sends the whole tensor.
  p.sp = false;
  const StageWork whole = build_stage_work(j.model, j.cluster, j.train, p, 1);
  CHECK(find_message(whole, Group::pp, "pp send", Pass::forward)->bytes == full);
  CHECK(find_message(whole, Group::tp, kPpGatherMessage, Pass::forward) == nullptr);
}

TEST_CASE("pipeline send settings: plan file, CLI and Megatron-LM's flags", "[cli][import]") {
  ParallelConfig p = gpt2_pp(Schedule::interleaved, 2);
  CHECK_FALSE(to_json(p).contains("pp_comm_overlap"));  // unset: the schedule's default
  p.pp_comm_overlap = false;
  const nlohmann::json pj = to_json(p);
  CHECK(pj["pp_comm_overlap"] == false);
  auto back = parallel_from_json(pj, "test");
  REQUIRE(back.ok());
  CHECK(back->pp_comm_overlap == std::optional<bool>(false));
  TrainSpec t = batch_of(16, 2048);
  t.pp_scatter_gather = true;
  auto tb = train_from_json(to_json(t), "test");
  REQUIRE(tb.ok());
  CHECK(tb->pp_scatter_gather);
  nlohmann::json bad = pj;
  bad["pp_comm_overlap"] = "yes";
  CHECK(parallel_from_json(bad, "plan.json").error().message.find("pp_comm_overlap") != std::string::npos);
  // Megatron-LM: the interleaved schedule's overlap turned off, and read back.
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 64 --seq 2048 --tp 1 --pp 4 ";
  const RoundTrip rt = export_round_trip("megatron", job + "--schedule interleaved --vpp 2 --pp-comm-overlap off",
                                         "--cluster dgx-h100 --gpus 16", "ppo_off", "--no-overlap-p2p-communication");
  CHECK(plan_configuration(rt.imported)["parallel"]["pp_comm_overlap"] == false);
  // 1F1B overlapped is what Megatron-LM and DeepSpeed cannot run, 1F1B blocking what torchtitan
  // does not: each named on stderr, not dropped.
  const LoomRun pred = run_loom("predict " + job + "--pp-comm-overlap on --json");
  REQUIRE(pred.code == 0);
  CHECK(nlohmann::json::parse(pred.out)["pp_comm_overlap"] == true);
  const std::string on = temp_file("ppo_on_plan.json", ""), off = temp_file("ppo_unset_plan.json", "");
  REQUIRE(run_loom("predict " + job + "--pp-comm-overlap on -o " + on).code == 0);
  REQUIRE(run_loom("predict " + job + "-o " + off).code == 0);
  const LoomRun mg = run_loom("export " + on + " --to megatron"), ds = run_loom("export " + on + " --to deepspeed"),
                tt = run_loom("export " + off + " --to torchtitan"), mg_off = run_loom("export " + off + " --to megatron");
  CHECK(mg.err.find("pp_comm_overlap on: Megatron-LM overlaps pipeline sends with compute only in the interleaved") !=
        std::string::npos);
  CHECK(ds.err.find("pp_comm_overlap on: DeepSpeed's pipeline engine sends synchronously") != std::string::npos);
  CHECK(tt.err.find("pp_comm_overlap off: torch.distributed.pipelining's sends are asynchronous") != std::string::npos);
  CHECK(mg_off.err.find("pp_comm_overlap") == std::string::npos);  // Megatron-core's own 1F1B
  CHECK(mg_off.out.find("overlap-p2p") == std::string::npos);
}
