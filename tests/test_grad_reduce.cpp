// The data-parallel gradient reduction beside the backward or after it
// (ParallelConfig::overlap_grad_reduce): the cost model and the simulator price the same step,
// the planner and the plan file carry the knob, and Megatron-LM's and DeepSpeed's switches
// export and import as it.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"

using namespace loom;
using namespace loom::test;

namespace {

std::string rules(const Job& j, const ParallelConfig& p) {
  auto st = validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; });
  return st ? std::string() : st.error().message;
}

ParallelConfig split(int64_t dp, int64_t tp, int64_t pp, int zero, Schedule s, int64_t vpp) {
  ParallelConfig p;
  p.dp = dp, p.tp = tp, p.pp = pp, p.zero = zero, p.schedule = s, p.vpp = vpp;
  return p;
}

}  // namespace

TEST_CASE("overlap-grad-reduce off: the whole reduction shows, as without any overlap", "[cost_model]") {
  const Job j = job("llama3-8b", "dgx-h100", 64, 512, 4096);
  const CostModel cm(j.model, j.cluster, j.train);
  for (int zero : {0, 1, 2}) {
    ParallelConfig on = split(64, 1, 1, zero, Schedule::one_f_one_b, 1);
    on.micro_batch = 2;
    ParallelConfig off = on;
    off.overlap_grad_reduce = false;
    REQUIRE(rules(j, off).empty());
    INFO("zero " << zero);
    const Estimate e_on = cm.evaluate(on), e_off = cm.evaluate(off), none = cm.evaluate(off, /*overlap=*/false);
    // One stage, no tp or pp: every collective is dp's, so "after the backward" is exactly the
    // step with nothing overlapped (no SMs shared either: nothing runs beside the compute).
    CHECK(e_off.time.dp_comm_s == none.time.dp_comm_s);
    CHECK(e_off.step_time_s == none.step_time_s);
    // ZeRO 0/1 run it as one bucket then (Megatron-core without --overlap-grad-reduce), so it
    // pays one collective's latency where the buckets beside the backward pay theirs each.
    const Estimate bucketed = cm.evaluate(on, /*overlap=*/false);
    if (zero <= 1) CHECK(e_off.time.dp_comm_s < bucketed.time.dp_comm_s);
    else CHECK(e_off.time.dp_comm_s == bucketed.time.dp_comm_s);
    CHECK(e_off.stages[0].sm_contention_s == 0);
    CHECK(e_on.time.dp_comm_s < e_off.time.dp_comm_s);
    CHECK(e_on.step_time_s < e_off.step_time_s);
    // Memory is the same either way: the buckets live in the gradient buffer.
    CHECK(e_on.memory.peak() == e_off.memory.peak());
  }
}

TEST_CASE("overlap-grad-reduce off: the simulator plays the reduction after the last backward", "[simulator]") {
  const Job j = job("llama3-8b", "dgx-h100", 64, 512, 4096);
  const CostModel cm(j.model, j.cluster, j.train);
  struct Case {
    const char* name;
    ParallelConfig p;
  };
  const Case cases[] = {
      {"zero 0, one stage", split(64, 1, 1, 0, Schedule::one_f_one_b, 1)},
      {"zero 2, one stage", split(64, 1, 1, 2, Schedule::one_f_one_b, 1)},
      {"zero 1, 1f1b pp 4", split(8, 2, 4, 1, Schedule::one_f_one_b, 1)},
      {"zero 1, interleaved pp 4 vpp 2", split(8, 2, 4, 1, Schedule::interleaved, 2)},
      {"zero 0, zb-h1 pp 4", split(16, 1, 4, 0, Schedule::zb_h1, 1)},
      {"zero 1, zb-v pp 4", split(16, 1, 4, 1, Schedule::zb_v, 2)},
      {"zero 0, gpipe pp 4", split(8, 2, 4, 0, Schedule::gpipe, 1)},
      {"zero 0, interleaved pp 4 vpp 2", split(8, 2, 4, 0, Schedule::interleaved, 2)},
      // A light first stage: the later stages' reductions run in the drain, after their own last
      // backward, not after stage 0's.
      {"zero 1, 1f1b pp 4, stages 5,9,9,9", split(8, 2, 4, 1, Schedule::one_f_one_b, 1)},
      {"zero 1, zb-h1 pp 4, stages 5,9,9,9", split(16, 1, 4, 1, Schedule::zb_h1, 1)},
  };
  for (Case c : cases) {
    if (std::string(c.name).find("stages") != std::string::npos) c.p.stage_layers = {5, 9, 9, 9};
    ParallelConfig off = c.p;
    off.overlap_grad_reduce = false;
    REQUIRE(rules(j, off).empty());
    const Estimate on = cm.evaluate(c.p), e = cm.evaluate(off);
    auto sim = simulate(cm, off, SimOptions{});
    auto sim_on = simulate(cm, c.p, SimOptions{});
    REQUIRE(sim.ok());
    REQUIRE(sim_on.ok());
    // What turning the overlap off costs, by each: 0.3-0.6% of these pipelined steps, 4-26% of
    // the one-stage ones; the two steps agree to 0.2% (to 1e-6 where the stages' reductions end
    // where the model puts them), so a reduction either side left out shows.
    const double model_cost_s = e.step_time_s - on.step_time_s, sim_cost_s = sim->step_time_s - sim_on->step_time_s;
    INFO(c.name << ": analytical " << e.step_time_s << " s (overlapped " << on.step_time_s << " s), simulated "
                << sim->step_time_s << " s (overlapped " << sim_on->step_time_s << " s)");
    CHECK(model_cost_s > 0);
    CHECK(sim_cost_s > 0.5 * model_cost_s);
    CHECK(std::fabs(sim->step_time_s / e.step_time_s - 1) <= 0.002);
  }
}

TEST_CASE("overlap-grad-reduce: the rule, the plan file and the search", "[cli][planner]") {
  const Job j = job("llama3-8b", "dgx-h100", 64, 512, 4096);
  ParallelConfig p = split(64, 1, 1, 3, Schedule::one_f_one_b, 1);
  p.overlap_grad_reduce = false;
  CHECK(rules(j, p) ==
        "overlap_grad_reduce: a gradient reduction after the backward needs zero 0-2 on the ring (ZeRO-3 reduce-scatters "
        "each layer beside the backward; got zero 3, dp_comm ring)");
  ParallelConfig piped = split(16, 1, 4, 2, Schedule::one_f_one_b, 1);
  piped.overlap_grad_reduce = false;
  CHECK(rules(j, piped) == "overlap_grad_reduce: off with zero 2 needs pp 1 (got pp 4)");
  p.zero = 1;
  CHECK(to_json(p)["overlap_grad_reduce"] == false);
  CHECK_FALSE(to_json(ParallelConfig{}).contains("overlap_grad_reduce"));  // on: the default, not written
  auto back = parallel_from_json(to_json(p), "test");
  REQUIRE(back.ok());
  CHECK_FALSE(back->overlap_grad_reduce);

  const std::string job_args = "--model llama3-8b --cluster dgx-h100 --gpus 64 --global-batch 512 --seq 4096 ";
  const LoomRun bad = run_loom("plan " + job_args + "--zero 3 --overlap-grad-reduce off");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom: --overlap-grad-reduce: off reduces the gradients after the backward: needs --zero 0-2 (ZeRO-3 "
                   "reduce-scatters each layer beside the backward; got 3)\n");
  const std::string planned = temp_file("ogr_plan.json", "");
  const LoomRun pinned = run_loom("plan " + job_args + "--top 3 --overlap-grad-reduce off -o " + planned);
  INFO(pinned.err);
  REQUIRE(pinned.code == 0);
  CHECK(pinned.out.find("ogr off") != std::string::npos);
  const nlohmann::json par = plan_configuration(planned)["parallel"];
  CHECK(par["overlap_grad_reduce"] == false);
  CHECK(par["zero"].get<int>() <= 2);
  // Megatron-LM overlaps the distributed optimizer's weight gather only beside the reduction.
  if (par["zero"] == 1) CHECK_FALSE(par.contains("overlap_param_gather"));
  const LoomRun pred = run_loom("predict " + job_args + "--tp 1 --pp 1 --zero 1 --overlap-grad-reduce off");
  REQUIRE(pred.code == 0);
  CHECK(pred.out.find("overlap-grad-reduce off") != std::string::npos);
}

TEST_CASE("overlap-grad-reduce: Megatron-LM's --overlap-grad-reduce and DeepSpeed's overlap_comm", "[export][import]") {
  const std::string job_args = "--model llama3-8b --cluster dgx-h100 --gpus 64 --global-batch 512 --seq 4096 --tp 1 --pp 1 ";
  const std::string import_args = "--cluster dgx-h100 --gpus 64";
  // Megatron-LM: the flag where on, its absence (Megatron-core's default) where off.
  const RoundTrip mg_on = export_round_trip("megatron", job_args + "--zero 1", import_args, "ogr_mg_on", "--overlap-grad-reduce");
  CHECK_FALSE(plan_configuration(mg_on.imported)["parallel"].contains("overlap_grad_reduce"));
  const RoundTrip mg_off = export_round_trip("megatron", job_args + "--zero 1 --overlap-grad-reduce off", import_args,
                                             "ogr_mg_off", "--use-distributed-optimizer");
  CHECK(slurp(mg_off.exported).find("--overlap-grad-reduce") == std::string::npos);
  CHECK(plan_configuration(mg_off.imported)["parallel"]["overlap_grad_reduce"] == false);
  std::string script = slurp(mg_off.exported);
  script.replace(script.find("--use-distributed-optimizer"), 27, "--use-distributed-optimizer --overlap-param-gather");
  const std::string gather_only = temp_file("ogr_mg_gather_only.sh", script);
  const LoomRun mg_bad = run_loom("import megatron " + gather_only + " " + import_args);
  CHECK(mg_bad.code == 2);
  CHECK(mg_bad.err == "loom: " + gather_only + ": --overlap-param-gather: needs --overlap-grad-reduce beside it, as "
                                               "Megatron-LM's arguments.py asserts\n");
  // DeepSpeed: overlap_comm written either way and read back; its default is off for ZeRO 1/2.
  const std::string ds_import = import_args + " --model llama3-8b --seq 4096";
  const RoundTrip ds_on = export_round_trip("deepspeed", job_args + "--zero 2", ds_import, "ogr_ds_on", "\"overlap_comm\": true");
  CHECK_FALSE(plan_configuration(ds_on.imported)["parallel"].contains("overlap_grad_reduce"));
  const RoundTrip ds_off = export_round_trip("deepspeed", job_args + "--zero 2 --overlap-grad-reduce off", ds_import,
                                             "ogr_ds_off", "\"overlap_comm\": false");
  CHECK(plan_configuration(ds_off.imported)["parallel"]["overlap_grad_reduce"] == false);
  const std::string plain = temp_file("ogr_ds_default.json",
                                      R"({"train_batch_size": 512, "train_micro_batch_size_per_gpu": 1,
                                          "bf16": {"enabled": true}, "zero_optimization": {"stage": 1}})");
  const std::string plain_plan = temp_file("ogr_ds_default_plan.json", "");
  REQUIRE(run_loom("import deepspeed " + plain + " " + ds_import + " -o " + plain_plan).code == 0);
  CHECK(plan_configuration(plain_plan)["parallel"]["overlap_grad_reduce"] == false);
  const std::string z3 = temp_file("ogr_ds_z3.json",
                                   R"({"train_batch_size": 512, "train_micro_batch_size_per_gpu": 1,
                                       "bf16": {"enabled": true}, "zero_optimization": {"stage": 3, "overlap_comm": false}})");
  const std::string piped = temp_file("ogr_ds_pipe.json",
                                      R"({"train_batch_size": 512, "train_micro_batch_size_per_gpu": 1,
                                          "bf16": {"enabled": true}, "zero_optimization": {"stage": 1, "overlap_comm": true}})");
  const std::string piped_plan = temp_file("ogr_ds_pipe_plan.json", "");
  const LoomRun pipe_run = run_loom("import deepspeed " + piped + " " + ds_import + " --pp 2 -o " + piped_plan);
  REQUIRE(pipe_run.code == 0);
  CHECK(pipe_run.err.find("zero_optimization.overlap_comm true: the pipeline engine reduces gradients after the backward "
                          "(pipe/engine.py _exec_reduce_grads)") != std::string::npos);
  CHECK(plan_configuration(piped_plan)["parallel"]["overlap_grad_reduce"] == false);
  const LoomRun refused = run_loom("import deepspeed " + z3 + " " + ds_import);
  CHECK(refused.code == 2);
  CHECK(refused.err == "loom: " + z3 + ": zero_optimization.overlap_comm: stage 3 with its reduce-scatters on the compute "
                                       "stream is not modelled (got false)\n");
  // torchtitan's FSDP and DDP always overlap: off is named, not dropped.
  const std::string off_plan = temp_file("ogr_off_plan.json", "");
  REQUIRE(run_loom("predict " + job_args + "--zero 1 --overlap-grad-reduce off -o " + off_plan).code == 0);
  const LoomRun tt = run_loom("export " + off_plan + " --to torchtitan");
  CHECK(tt.err.find("overlap_grad_reduce off: torchtitan's FSDP and DDP reduce gradients beside the backward") !=
        std::string::npos);
}

TEST_CASE("gradient buckets: Megatron-core's default, max(40e6, 1e6 x dp) elements, where the plan sets none; "
          "Megatron-LM's --ddp-bucket-size where it sets one", "[stage_work][export][import]") {
  CHECK(megatron_bucket_elements(8) == 40'000'000);
  CHECK(megatron_bucket_elements(40) == 40'000'000);
  CHECK(megatron_bucket_elements(64) == 64'000'000);
  Job j = job("llama3-8b", "dgx-h100", 128, 512, 4096);
  j.train.dp_bucket_bytes = 0;
  const ParallelConfig p = split(64, 2, 1, 1, Schedule::one_f_one_b, 1);
  const int64_t g = dtype_bytes(j.train.grad_dtype);
  CHECK(dp_bucket_bytes_for(j.train, p) == 64'000'000 * g);
  auto buckets = [&](const TrainSpec& t) {
    const StageWork w = build_stage_work(j.model, j.cluster, t, p, 0);
    const Message* m = w.find(Group::dp, "dp gradients");
    REQUIRE(m);
    return std::pair{m->pieces, m->bytes};
  };
  const auto [n, bytes] = buckets(j.train);
  CHECK(n == (bytes + 64'000'000 * g - 1) / (64'000'000 * g));
  TrainSpec set = j.train;
  set.dp_bucket_bytes = 10'000'000;
  CHECK(dp_bucket_bytes_for(set, p) == 10'000'000);
  // 804 buckets by size, but a bucket holds whole tensors and the stage has 32 x 9 + 3 of them.
  CHECK((bytes + 10'000'000 - 1) / 10'000'000 == 804);
  CHECK(buckets(set).first == 32 * 9 + 3);

  // The plan file keeps 0 (the default for whatever dp it runs); Megatron-LM's export leaves the
  // flag out then, and writes the elements of any other bucket, which import reads back.
  const std::string args = "--model llama3-8b --cluster dgx-h100 --gpus 128 --global-batch 512 --seq 4096 --tp 2 --pp 1 "
                           "--zero 1 --grad-dtype bf16 ";
  const std::string import_args = "--cluster dgx-h100 --gpus 128";
  const RoundTrip def = export_round_trip("megatron", args, import_args, "bucket_default", "--use-distributed-optimizer");
  CHECK(nlohmann::json::parse(slurp(def.plan))["train"]["dp_bucket_bytes"] == 0);
  CHECK(slurp(def.exported).find("--ddp-bucket-size") == std::string::npos);
  CHECK(nlohmann::json::parse(slurp(def.imported))["train"]["dp_bucket_bytes"] == 0);
  const RoundTrip mine = export_round_trip("megatron", args + "--dp-bucket-bytes 100000000", import_args, "bucket_set",
                                           "--ddp-bucket-size 50000000");
  CHECK(nlohmann::json::parse(slurp(mine.imported))["train"]["dp_bucket_bytes"] == 100'000'000);
  // DeepSpeed states its bucket: the default's elements for the plan's dp.
  const RoundTrip ds = export_round_trip("deepspeed", args, import_args + " --model llama3-8b --seq 4096", "bucket_ds",
                                         "\"reduce_bucket_size\": 64000000");
  // Bad input: one line naming the flag and the rule.
  std::string script = slurp(mine.exported);
  script.replace(script.find("--ddp-bucket-size 50000000"), 26, "--ddp-bucket-size 0");
  const std::string bad = temp_file("bucket_bad.sh", script);
  const LoomRun r = run_loom("import megatron " + bad + " " + import_args);
  CHECK(r.code == 2);
  CHECK(r.err.find(": --ddp-bucket-size: must be an integer in [1, ") != std::string::npos);
}

TEST_CASE("gradient buckets hold whole parameter tensors: a bucket size below a tensor's gives one bucket per "
          "tensor, not one per bucket size", "[stage_work]") {
  // GPT-2 124M on one stage: 12 layers of 12 tensors (two norms' weight and bias, QKV, projection
  // and two FFN linears, each weight and bias), the word and position embeddings, the final
  // norm's weight and bias, and no output layer (tied): 148 tensors.
  Job j = job("gpt2-124m", "dgx-a100", 8, 64, 1024);
  const ParallelConfig p = split(8, 1, 1, 2, Schedule::one_f_one_b, 1);  // ZeRO-2: buckets by size
  CHECK(chunk_param_tensors(j.model, p, 0, 0) == 148);
  auto buckets = [&](int64_t bucket_bytes) {
    j.train.dp_bucket_bytes = bucket_bytes;
    const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
    const Message* m = w.find(Group::dp, "dp gradients");
    REQUIRE(m);
    return std::pair{m->pieces, m->bytes};
  };
  CHECK(buckets(1).first == 148);
  CHECK(buckets(4096).first == 148);
  const auto [n, bytes] = buckets(10'000'000);
  CHECK(n == (bytes + 10'000'000 - 1) / 10'000'000);
  // Llama on two stages: 9 tensors a layer; the first holds the embedding, the last the final
  // norm and the untied output layer.
  const Job l = job("llama3-8b", "dgx-h100", 16, 64, 4096);
  const ParallelConfig two = split(8, 1, 2, 2, Schedule::one_f_one_b, 1);
  CHECK(chunk_param_tensors(l.model, two, 0, 0) == 16 * 9 + 1);
  CHECK(chunk_param_tensors(l.model, two, 1, 0) == 16 * 9 + 2);
}

TEST_CASE("gradient buckets by Megatron-core's rule: the first stage's first chunk in buckets, every other chunk one; "
          "the cost model and the simulator price the stages' tails in the drain alike", "[stage_work][simulator]") {
  const Job j = job("llama3-70b", "dgx-h100", 256, 64, 4096);
  auto pieces = [&](const ParallelConfig& p, int64_t stage) {
    const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, stage);
    const Message* m = w.find(Group::dp, "dp gradients");
    REQUIRE(m);
    return std::pair{m->pieces, m->bytes};
  };
  ParallelConfig p = split(8, 8, 4, 1, Schedule::one_f_one_b, 1);
  const auto [first, bytes] = pieces(p, 0);
  CHECK(first == (bytes + dp_bucket_bytes_for(j.train, p) - 1) / dp_bucket_bytes_for(j.train, p));
  CHECK(first > 1);
  CHECK(pieces(p, 1).first == 1);
  CHECK(pieces(p, 3).first == 1);
  // Interleaved: the first stage's later chunks one bucket each; the others one per chunk.
  ParallelConfig iv = split(8, 8, 4, 1, Schedule::interleaved, 2);
  const auto [iv_first, iv_bytes] = pieces(iv, 0);
  const int64_t per_chunk = (iv_bytes / 2 + dp_bucket_bytes_for(j.train, iv) - 1) / dp_bucket_bytes_for(j.train, iv);
  CHECK(iv_first == per_chunk + 1);
  CHECK(chunk_buckets_of(iv, iv_first, 0) == per_chunk);
  CHECK(chunk_buckets_of(iv, iv_first, 1) == 1);
  CHECK(pieces(iv, 2).first == 2);
  // Without --overlap-grad-reduce every chunk is one bucket; ZeRO-2 and the zero-bubble
  // schedules keep buckets of the size on every stage.
  ParallelConfig off = p;
  off.overlap_grad_reduce = false;
  CHECK(pieces(off, 0).first == 1);
  ParallelConfig z2 = split(8, 8, 4, 2, Schedule::one_f_one_b, 1);
  CHECK(pieces(z2, 1).first > 1);
  ParallelConfig zb = split(8, 8, 4, 1, Schedule::zb_h1, 1);
  CHECK(pieces(zb, 1).first > 1);
  // The later stages' whole reductions come after their last backward, inside the drain of the
  // stages before them; the simulator plays that, and the cost model credits it.
  const CostModel cm(j.model, j.cluster, j.train);
  for (const ParallelConfig& q : {p, iv}) {
    const Estimate e = cm.evaluate(q);
    CHECK(e.stages[1].dp_comm_exposed_s > e.stages[0].dp_comm_exposed_s);
    check_simulated_step(cm, q, 0.03);
  }
}
