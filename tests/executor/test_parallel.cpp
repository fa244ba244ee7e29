// The CPU executor under MPI (label mpi): every parallel plan of a matrix on a tiny GPT trains to
// the same losses and weights as one rank, and what each rank measures (bytes by category, GEMM
// FLOPs, bytes sent per group) equals the cost model's prediction for its stage exactly. Then the
// reliability promises: resume is bit-identical, a dead rank ends the job in bounded time, a NaN
// loss stops with step and rank, a plan for another world size is refused. Last the checkpoint
// and output promises ([checkpoint]): a save killed anywhere leaves a checkpoint that resumes
// bit-identically, and bad checkpoints, outputs and flags are refused before the first step.
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "executor/checkpoint.hpp"
#include "mpi_harness.hpp"
#include "sim/cost_model.hpp"
#include "sim/plan.hpp"
#include "sim/zoo.hpp"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::test;

namespace {

MpiHarness& harness() {
  static MpiHarness h("loom_exec_test_");
  return h;
}

Plan make_plan(const ParallelConfig& p) {
  auto m = load_model(std::string(LOOM_TEST_DATA) + "/tiny-gpt.json", "--model", nullptr);
  REQUIRE(m.ok());
  return cpu_plan(*m, tiny_train(Attention::unfused), p);
}

const Trained& reference() {
  static const Trained r = harness().train("reference", make_plan(ParallelConfig{}));
  return r;
}

ParallelConfig config(int64_t dp, int64_t tp, int64_t pp, int zero = 0, Schedule s = Schedule::one_f_one_b,
                      int64_t vpp = 1, Recompute rc = Recompute::none, bool sp = false) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.zero = zero;
  p.schedule = s;
  p.vpp = vpp;
  p.recompute = rc;
  p.sp = sp;
  return p;
}

// One rank's measured row against the cost model's prediction for its stage, exactly.
void check_rank_exact(const Plan& plan, const nlohmann::json& r) {
  const Estimate& e = plan.prediction;
  {
    const int64_t stage = r["pp"].get<int64_t>();
    const StageEstimate& s = e.stages[static_cast<size_t>(stage)];
    INFO("rank " << r["rank"] << " stage " << stage);
    const auto& mem = r["memory_bytes"];
    CHECK(mem["weights"].get<int64_t>() == s.memory.weights);
    CHECK(mem["grads"].get<int64_t>() == s.memory.grads);
    CHECK(mem["optimizer"].get<int64_t>() == s.memory.optimizer);
    CHECK(mem["activations"].get<int64_t>() == s.memory.activations);
    CHECK(mem["logits"].get<int64_t>() == s.memory.logits);
    CHECK(mem["comm_buffers"].get<int64_t>() == s.memory.comm_buffers);
    CHECK(mem["workspace"].get<int64_t>() == s.memory.workspace);
    CHECK(mem["peak"].get<int64_t>() == s.memory.peak());
    CHECK(r["flops"].get<int64_t>() == static_cast<int64_t>(s.flops));
    CHECK(r["comm_bytes"]["tp"].get<int64_t>() == s.comm.tp);
    CHECK(r["comm_bytes"]["dp"].get<int64_t>() == s.comm.dp);
    CHECK(r["comm_bytes"]["pp"].get<int64_t>() == s.comm.pp);
  }
}

void check_exact(const Plan& plan, const nlohmann::json& report) {
  CHECK(report["flops"]["hardware"].get<double>() == static_cast<double>(plan.prediction.flops_hardware));
  for (const auto& r : report["ranks"]) check_rank_exact(plan, r);
}

void check_plan(const std::string& name, const ParallelConfig& p) {
  const Plan plan = make_plan(p);
  const Trained r = harness().train(name, plan);
  check_exact(plan, r.report);
  check_like_reference(r, reference());
}

}  // namespace

TEST_CASE("one rank: the reference, priced exactly", "[equivalence]") { check_exact(make_plan({}), reference().report); }
TEST_CASE("DP 2", "[equivalence]") { check_plan("dp2", config(2, 1, 1)); }
TEST_CASE("ZeRO-1, 2, 3 over dp 2", "[equivalence]") {
  for (int z : {1, 2, 3}) {
    INFO("zero " << z);
    check_plan("zero" + std::to_string(z), config(2, 1, 1, z));
  }
}
TEST_CASE("TP 2 with and without SP", "[equivalence]") {
  check_plan("tp2", config(1, 2, 1));
  check_plan("tp2sp", config(1, 2, 1, 0, Schedule::one_f_one_b, 1, Recompute::none, true));
}
TEST_CASE("PP 2 and 4 with each schedule", "[equivalence]") {
  for (int64_t pp : {2, 4}) {
    INFO("pp " << pp);
    check_plan("pp" + std::to_string(pp) + "gpipe", config(1, 1, pp, 0, Schedule::gpipe));
    check_plan("pp" + std::to_string(pp) + "1f1b", config(1, 1, pp, 0, Schedule::one_f_one_b));
    check_plan("pp" + std::to_string(pp) + "int", config(1, 1, pp, 0, Schedule::interleaved, 2));
  }
}
// Uneven stages (ParallelConfig::stage_layers): pp 3 on the 8 layers, which pp does not divide
// (1F1B, with ZeRO-1 over dp 2 sharding each stage's own parameters); pp 4 with lighter first and
// last stages (GPipe); pp 2 interleaved with 3 and 1 layers per chunk, and with the model's first
// and last chunk short (2 + 3 and 2 + 1: Megatron-LM's embedding and loss counted as layers).
// Each trains as one rank
// does and every rank's memory, FLOPs and bytes are its stage's prediction exactly.
TEST_CASE("uneven pipeline stages train as one rank, priced exactly", "[equivalence]") {
  struct Case {
    const char* name;
    ParallelConfig p;
    std::vector<int64_t> layers;
  };
  for (const Case& c : {Case{"uneven_pp3", config(2, 1, 3, 1), {2, 4, 2}},
                        Case{"uneven_pp4", config(1, 1, 4, 0, Schedule::gpipe), {1, 3, 3, 1}},
                        Case{"uneven_int", config(1, 1, 2, 0, Schedule::interleaved, 2), {6, 2}},
                        Case{"uneven_int_short", config(1, 1, 2, 0, Schedule::interleaved, 2), {5, 3}}}) {
    INFO(c.name);
    ParallelConfig p = c.p;
    p.stage_layers = c.layers;
    check_plan(c.name, p);
  }
}

TEST_CASE("recompute selective and full", "[equivalence]") {
  check_plan("rc_sel", config(1, 2, 1, 0, Schedule::one_f_one_b, 1, Recompute::selective));
  check_plan("rc_full", config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true));
}
// Megatron-LM's --recompute-method block: each chunk's first N layers recomputed in full, the
// others keeping their activations; 1F1B over pp 2 (1 of each stage's 4 layers), and the
// interleaved schedule with the model's first and last chunk short (2 + 3 and 2 + 1 layers, 2 of
// each chunk recomputed, so the short chunks recompute both of theirs).
TEST_CASE("recompute of each chunk's first layers (block), priced exactly", "[equivalence]") {
  ParallelConfig block = config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true);
  block.recompute_layers = 1;
  ParallelConfig all = block, none = block;
  all.recompute_layers = 0, none.recompute = Recompute::none, none.recompute_layers = 0;
  const int64_t a_block = make_plan(block).prediction.stages[0].memory.activations;
  CHECK(a_block > make_plan(all).prediction.stages[0].memory.activations);
  CHECK(a_block < make_plan(none).prediction.stages[0].memory.activations);
  check_plan("rc_block", block);
  ParallelConfig short_chunks = config(1, 1, 2, 0, Schedule::interleaved, 2, Recompute::full);
  short_chunks.stage_layers = {5, 3};
  short_chunks.recompute_layers = 2;
  check_plan("rc_block_int_short", short_chunks);
}
// torchtitan's selective_ac_option "K": each chunk's layers K, 2K, ... recomputed in full, the
// others keeping their activations; 1F1B over pp 2 (layers 2 and 4 of each stage's 4), and the
// interleaved schedule with short model-end chunks (2 + 3 and 2 + 1 layers: one of each chunk but
// the last, which recomputes none, so its backward holds no rebuilt layer).
TEST_CASE("recompute of every K-th layer of each chunk, priced exactly", "[equivalence]") {
  ParallelConfig every = config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true);
  every.recompute_every = 2;
  check_plan("rc_every", every);
  ParallelConfig short_chunks = config(1, 1, 2, 0, Schedule::interleaved, 2, Recompute::full);
  short_chunks.stage_layers = {5, 3};
  short_chunks.recompute_every = 2;
  check_plan("rc_every_int_short", short_chunks);
  // Every 5th of 4 layers per stage: nothing recomputed, no recompute buffer either.
  ParallelConfig none = config(1, 1, 2, 0, Schedule::one_f_one_b, 1, Recompute::full);
  none.recompute_every = 5;
  check_plan("rc_every_none", none);
}
TEST_CASE("3D: dp 2 x tp 2 x pp 2", "[equivalence]") {
  check_plan("mix_z1_int_sel", config(2, 2, 2, 1, Schedule::interleaved, 2, Recompute::selective));
  check_plan("mix_z3_full", config(2, 2, 2, 3, Schedule::one_f_one_b, 1, Recompute::full));
}

namespace {

// The zero-bubble schedules' cases: pp 2 and pp 4 with 8 micro-batches, and tp 2 with SP and
// selective recompute on pp 2.
struct ZeroBubbleCase {
  const char* name;
  int64_t tp, pp;
  Recompute rc;
  bool sp;
};
const ZeroBubbleCase kZeroBubbleCases[] = {{"pp2", 1, 2, Recompute::none, false},
                                           {"pp4", 1, 4, Recompute::none, false},
                                           {"tp2sp_pp2_sel", 2, 2, Recompute::selective, true}};

struct BesideOneFOneB {
  Plan plan;                  // the zero-bubble plan
  Trained run, one_f_one_b;   // it and 1F1B on the same split, trained
};

// Case `c` under `s` (vpp chunks a rank) and under 1F1B, trained as <prefix><name> and
// <prefix>ref_<name>: every rank priced exactly, losses and weights 1F1B's bit for bit.
BesideOneFOneB check_as_1f1b(const std::string& prefix, const ZeroBubbleCase& c, Schedule s, int64_t vpp) {
  const Plan zb = make_plan(config(1, c.tp, c.pp, 0, s, vpp, c.rc, c.sp));
  const Plan f = make_plan(config(1, c.tp, c.pp, 0, Schedule::one_f_one_b, 1, c.rc, c.sp));
  BesideOneFOneB out{zb, harness().train(prefix + c.name, zb), harness().train(prefix + "ref_" + c.name, f)};
  const Trained &rz = out.run, &rf = out.one_f_one_b;
  check_exact(zb, rz.report);
  CHECK(rz.report["losses"] == rf.report["losses"]);
  REQUIRE(rz.weights.size() == rf.weights.size());
  CHECK(std::memcmp(rz.weights.data(), rf.weights.data(), rz.weights.size() * sizeof(float)) == 0);
  return out;
}

}  // namespace

// ZB-H1 (sim/schedule.hpp) splits each layer's backward into B (input gradient) and W (the
// GEMMs' weight gradients), W's in micro-batch order: each weight's gradient is the same sum, in
// the same order, as under 1F1B, so losses and weights are 1F1B's bit for bit (no tolerance).
// A stash is freed by its W, so every rank holds 1F1B's first rank's min(pp, m) micro-batches:
// the first rank's ledger is 1F1B's, the largest stash count over ranks is 1F1B's, and each
// rank's bytes are the cost model's exactly. In the tp 2 case proj's and o's weight gradients
// stay in B.
TEST_CASE("zb-h1: the split backward trains as 1F1B bit for bit at 1F1B's peak, priced exactly", "[equivalence]") {
  for (const ZeroBubbleCase& c : kZeroBubbleCases) {
    INFO(c.name);
    const BesideOneFOneB r = check_as_1f1b("zb_", c, Schedule::zb_h1, 1);
    const Trained &rz = r.run, &rf = r.one_f_one_b;
    const int64_t m = r.plan.train.global_batch / r.plan.parallel.micro_batch;
    int64_t most_1f1b = 0;
    for (const auto& s : rf.report["stages"]) most_1f1b = std::max(most_1f1b, s["in_flight"].get<int64_t>());
    for (const auto& s : rz.report["stages"]) CHECK(s["in_flight"].get<int64_t>() == std::min(c.pp, m));
    CHECK(most_1f1b == std::min(c.pp, m));
    for (const auto& x : rz.report["ranks"])
      for (const auto& q : rf.report["ranks"])
        if (x["rank"] == q["rank"] && x["pp"] == 0) CHECK(x["memory_bytes"]["peak"] == q["memory_bytes"]["peak"]);
  }
}

// ZB-V (sim/schedule.hpp's zb_v_rank): two chunks per rank placed as a V, so stage 0 holds the
// embedding and the loss head and the last stage hands chunk 0's output to its own chunk 1
// unsent. Each weight's gradient is still the sum over micro-batches in micro-batch order (each
// chunk's W's run in that order), so losses and weights are 1F1B's bit for bit, and every
// rank's bytes, FLOPs and bytes sent are its stage's prediction exactly (8 micro-batches: at
// least 2 pp - 1).
TEST_CASE("zb-v: the V trains as 1F1B bit for bit, priced exactly", "[equivalence]") {
  for (const ZeroBubbleCase& c : kZeroBubbleCases) {
    INFO(c.name);
    const BesideOneFOneB r = check_as_1f1b("zbv_", c, Schedule::zb_v, 2);
    for (const auto& s : r.run.report["stages"]) CHECK(s["in_flight"].get<int64_t>() == 2 * c.pp);
  }
}

TEST_CASE("compare: predicted against measured, field by field", "[compare]") {
  const Plan plan = make_plan(config(2, 1, 1, 2));
  const Trained r = harness().train("compare", plan, 1);
  const std::string cmd = std::string(LOOM_BIN) + " compare " + (harness().dir() / "compare.json").string() + " " +
                          (harness().dir() / "compare.measured.json").string() + " --json > " +
                          (harness().dir() / "compare.out").string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto fields = nlohmann::json::parse(slurp(harness().dir() / "compare.out"))["fields"];
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& f : fields) by_name[f["name"]] = f;
  for (const char* exact : {"memory_bytes.weights", "memory_bytes.grads", "memory_bytes.optimizer",
                            "memory_bytes.activations", "memory_bytes.logits", "memory_bytes.comm_buffers",
                            "flops.hardware", "comm_bytes.dp", "stages.0.flops"}) {
    INFO(exact);
    REQUIRE(by_name.count(exact));
    CHECK(by_name[exact]["error_pct"].get<double>() == 0.0);
  }
  REQUIRE(by_name.count("step_time_s"));
  CHECK(by_name["step_time_s"]["measured"].get<double>() > 0);
}

TEST_CASE("resume at step k continues bit-identically", "[reliability]") {
  const Plan plan = make_plan(config(2, 1, 2, 1));
  const Trained full = harness().train("straight", plan, 4);
  const std::string ckpt = (harness().dir() / "ckpt").string();
  harness().train("first_half", plan, 2, "--save " + ckpt);
  CHECK(fs::exists(fs::path(ckpt) / "checkpoint.json"));
  const Trained resumed = harness().train("second_half", plan, 4, "--resume " + ckpt);
  const auto& a = full.report["losses"];
  const auto& b = resumed.report["losses"];
  REQUIRE(b.size() == 2);
  CHECK(b[0].get<double>() == a[2].get<double>());
  CHECK(b[1].get<double>() == a[3].get<double>());
  CHECK(resumed.weights == full.weights);
}

TEST_CASE("a rank that dies ends the job in bounded time, with a message", "[reliability]") {
  const std::string path = harness().write_plan("die", make_plan(config(1, 1, 2)));
  const Run r = harness().mpirun(2, path + " --device cpu --steps 4 --timeout-s 10 --die-at-step 1 --die-rank 1");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.seconds < 60);
  CHECK((r.out.find("rank 1") != std::string::npos || r.out.find("no progress") != std::string::npos));
}

TEST_CASE("a rank that hangs is detected by the others' deadline", "[reliability]") {
  // mpirun does not notice a stopped process: the survivors' own timeout (5 s) must end the job.
  const std::string path = harness().write_plan("stall", make_plan(config(1, 1, 2)));
  const Run r = harness().mpirun(2, path + " --device cpu --steps 4 --timeout-s 5 --die-at-step 1 --die-rank 1 --stall");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.seconds < 60);
  CHECK(r.out.find("rank 0") != std::string::npos);
  CHECK(r.out.find("no progress for 5 s") != std::string::npos);
}

TEST_CASE("a NaN loss stops every rank with the step and the rank", "[reliability]") {
  const std::string path = harness().write_plan("nan", make_plan(config(2, 1, 1)));
  const Run r = harness().mpirun(2, path + " --device cpu --steps 3 --nan-at-step 1");
  INFO(r.out);
  CHECK(r.code == 3);
  CHECK(r.out.find("loss is not finite") != std::string::npos);
  CHECK(r.out.find("at step 1") != std::string::npos);
  CHECK(r.out.find("rank 0") != std::string::npos);
}

TEST_CASE("a plan for another world size is refused", "[reliability]") {
  const std::string path = harness().write_plan("world", make_plan(config(2, 1, 1)));
  const Run r = harness().mpirun(1, path + " --device cpu --steps 1");
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK(r.out.find("needs 2 ranks") != std::string::npos);
}

TEST_CASE("an emulated rank measures what that rank measures in the whole job", "[emulate]") {
  // dp 2 x tp 2 x pp 2, ZeRO-1, interleaved, selective recompute, SP: every rank differs in
  // shapes, layers, schedule or the collectives it runs.
  const Plan plan = make_plan(config(2, 2, 2, 1, Schedule::interleaved, 2, Recompute::selective, true));
  const Trained job = harness().train("emu_job", plan, 1);
  const std::string path = (harness().dir() / "emu_job.json").string();
  for (int r = 0; r < 8; ++r) {
    INFO("rank " << r);
    const fs::path report = harness().dir() / ("emu" + std::to_string(r) + ".json");
    const Run run = harness().loom("execute " + path + " --quiet --steps 1 --emulate-rank " + std::to_string(r) + " --report " +
                         report.string());
    INFO(run.out);
    REQUIRE(run.code == 0);
    const auto e = nlohmann::json::parse(slurp(report));
    CHECK(e["emulated_rank"].get<int>() == r);
    CHECK_FALSE(e.contains("losses"));  // partial sums stand in for reductions: not the model's loss
    REQUIRE(e["ranks"].size() == 1);
    const auto& mine = e["ranks"][0];
    const auto& real = job.report["ranks"][static_cast<size_t>(r)];
    REQUIRE(real["rank"].get<int>() == r);
    CHECK(mine["memory_bytes"] == real["memory_bytes"]);
    CHECK(mine["flops"] == real["flops"]);
    CHECK(mine["comm_bytes"] == real["comm_bytes"]);
    check_rank_exact(plan, mine);
    const int64_t stage = mine["pp"].get<int64_t>();
    CHECK(e["stages"][static_cast<size_t>(stage)]["flops"] == mine["flops"]);
    CHECK(e["stages"][static_cast<size_t>(1 - stage)].is_null());
  }
}

TEST_CASE("--emulate-rank refuses what it cannot do, in one line", "[emulate]") {
  const std::string path = harness().write_plan("emu_bad", make_plan(config(2, 1, 1)));
  const Run high = harness().loom("execute " + path + " --emulate-rank 2");
  CHECK(high.code == 2);
  CHECK(high.out.find("--emulate-rank: must be below the plan's 2 ranks") != std::string::npos);
  const Run save = harness().loom("execute " + path + " --emulate-rank 1 --save " + (harness().dir() / "emu_ckpt").string());
  CHECK(save.code == 2);
  CHECK(save.out.find("--save, --resume and --weights-out do not apply") != std::string::npos);
  const Run trace = harness().loom("execute " + path + " --emulate-rank 1 --trace /nonexistent/dir/t.json");
  CHECK(trace.code == 2);
  CHECK(trace.out.find("--trace: folder /nonexistent/dir does not exist") != std::string::npos);
}

namespace {

// Complete events of a Chrome trace by pid.
std::map<int64_t, std::vector<nlohmann::json>> events_by_rank(const nlohmann::json& doc) {
  std::map<int64_t, std::vector<nlohmann::json>> out;
  for (const auto& e : doc["traceEvents"])
    if (e["ph"] == "X") out[e["pid"].get<int64_t>()].push_back(e);
  return out;
}

std::set<std::string> names(const std::vector<nlohmann::json>& events, const std::vector<std::string>& prefixes) {
  std::set<std::string> out;
  for (const auto& e : events) {
    const std::string n = e["name"];
    for (const auto& p : prefixes)
      if (n.rfind(p, 0) == 0) out.insert(n);
  }
  return out;
}

}  // namespace

TEST_CASE("zb-h1: the measured trace names each B and W as loom simulate does, on every rank", "[trace]") {
  const Plan plan = make_plan(config(1, 1, 2, 0, Schedule::zb_h1));
  const fs::path measured_path = harness().dir() / "zb.measured.trace.json";
  const fs::path predicted_path = harness().dir() / "zb.predicted.trace.json";
  harness().train("zb_traced", plan, 2, "--trace " + measured_path.string());
  const Run sim = harness().loom("simulate " + (harness().dir() / "zb_traced.json").string() + " --ranks 0-1 --trace " +
                       predicted_path.string());
  INFO(sim.out);
  REQUIRE(sim.code == 0);
  const auto m = events_by_rank(nlohmann::json::parse(slurp(measured_path)));
  const auto p = events_by_rank(nlohmann::json::parse(slurp(predicted_path)));
  REQUIRE(m.size() == 2);
  for (const auto& [rank, events] : m) {
    INFO("rank " << rank);
    REQUIRE(p.count(rank));
    const std::vector<std::string> compute = {"F ", "B ", "W ", "optimizer"}, pipeline = {"pp "};
    CHECK(names(events, compute) == names(p.at(rank), compute));
    CHECK(names(events, pipeline) == names(p.at(rank), pipeline));
    CHECK(names(events, {"W "}).size() == static_cast<size_t>(plan.prediction.micro_batches));
  }
}

TEST_CASE("ZeRO-0's gradient buckets in the measured trace are those loom simulate plays, stage by stage", "[trace]") {
  // dp 2 x pp 2, 1F1B, a bucket far smaller than a stage's gradients: Megatron-core's rule cuts
  // the first stage's gradients into buckets and reduces the second stage's as one
  // (chunk_grad_buckets); the executor's all-reduces follow the stage's work.
  Plan plan = make_plan(config(2, 1, 2));
  plan.train.dp_bucket_bytes = 4096;
  const fs::path measured_path = harness().dir() / "buckets.measured.trace.json";
  const fs::path predicted_path = harness().dir() / "buckets.predicted.trace.json";
  harness().train("buckets_traced", plan, 1, "--trace " + measured_path.string());
  const Run sim = harness().loom("simulate " + (harness().dir() / "buckets_traced.json").string() +
                                 " --ranks 0-3 --trace " + predicted_path.string());
  INFO(sim.out);
  REQUIRE(sim.code == 0);
  const auto m = events_by_rank(nlohmann::json::parse(slurp(measured_path)));
  const auto p = events_by_rank(nlohmann::json::parse(slurp(predicted_path)));
  REQUIRE(m.size() == 4);
  std::set<size_t> counts;
  for (const auto& [rank, events] : m) {
    INFO("rank " << rank);
    REQUIRE(p.count(rank));
    const auto measured = names(events, {"dp allreduce bucket "});
    CHECK(measured == names(p.at(rank), {"dp allreduce bucket "}));
    counts.insert(measured.size());
  }
  CHECK(counts.count(1) == 1);  // the second stage: one bucket
  CHECK(*counts.rbegin() > 1);  // the first: cut by the bucket size
}

namespace {

bool slot_compute(const nlohmann::json& e) {
  const std::string n = e["name"];
  return e["tid"] == 0 && (n.rfind("F ", 0) == 0 || n.rfind("B ", 0) == 0 || n.rfind("W ", 0) == 0);
}

// Per rank: the sends whose last interval (the wait that completes them) ends after the start
// of the next slot's compute (a forward, backward or weight slot other than the one that sent).
std::vector<std::string> sends_still_open(const std::vector<nlohmann::json>& events) {
  std::map<std::string, std::pair<double, double>> sends;  // name: first start, last end
  for (const auto& e : events) {
    const std::string n = e["name"];
    if (n.rfind("pp send ", 0) != 0) continue;
    const double ts = e["ts"].get<double>(), end = ts + e["dur"].get<double>();
    auto [it, fresh] = sends.try_emplace(n, ts, end);
    if (!fresh) it->second = {std::min(it->second.first, ts), std::max(it->second.second, end)};
  }
  std::vector<std::string> open;
  for (const auto& [name, span] : sends) {
    std::string sender;  // the slot whose compute ran last before the send was posted
    double sender_ts = -1, next = std::numeric_limits<double>::infinity();
    for (const auto& e : events)
      if (slot_compute(e) && e["ts"].get<double>() < span.first && e["ts"].get<double>() > sender_ts)
        sender = e["name"], sender_ts = e["ts"].get<double>();
    for (const auto& e : events)
      if (slot_compute(e) && e["ts"].get<double>() >= span.first && e["name"] != sender)
        next = std::min(next, e["ts"].get<double>());
    if (span.second > next + 1e-3) open.push_back(name);
  }
  return open;
}

}  // namespace

TEST_CASE("1F1B's pipeline sends block their sender; overlapped ones do not", "[trace]") {
  // pp 2, 1F1B: unpinned, its sends block (ParallelConfig::pp_overlapped), as the simulator
  // plays them; pinned on, each is waited for only when its buffer is needed again.
  for (const bool overlapped : {false, true}) {
    Plan plan = make_plan(config(1, 1, 2));
    if (overlapped) plan.parallel.pp_comm_overlap = true;
    const std::string name = overlapped ? "ppo_on" : "ppo_blocking";
    const fs::path measured_path = harness().dir() / (name + ".trace.json");
    harness().train(name, plan, 2, "--trace " + measured_path.string());
    const auto m = events_by_rank(nlohmann::json::parse(slurp(measured_path)));
    REQUIRE(m.size() == 2);
    size_t open = 0;
    for (const auto& [rank, events] : m) {
      INFO("rank " << rank << (overlapped ? ", overlapped" : ", blocking"));
      const auto still = sends_still_open(events);
      if (!overlapped) CHECK(still.empty());
      open += still.size();
    }
    if (overlapped) CHECK(open > 0);  // the waits fall inside the next slots' compute
  }
}

TEST_CASE("a measured trace names what ran as loom simulate does, on every rank", "[trace]") {
  // tp 2 with SP x pp 2, full recompute: forward, recompute, backward, optimizer, SP collectives
  // and pipeline transfers on each rank.
  const Plan plan = make_plan(config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true));
  const fs::path measured_path = harness().dir() / "measured.trace.json";
  const fs::path predicted_path = harness().dir() / "predicted.trace.json";
  const Trained r = harness().train("traced", plan, 2, "--trace " + measured_path.string());
  const Run sim = harness().loom("simulate " + (harness().dir() / "traced.json").string() + " --ranks 0-3 --trace " +
                       predicted_path.string());
  INFO(sim.out);
  REQUIRE(sim.code == 0);
  const auto measured = nlohmann::json::parse(slurp(measured_path));
  const auto predicted = nlohmann::json::parse(slurp(predicted_path));
  CHECK(measured["otherData"]["generator"] == "loom execute");
  const auto m = events_by_rank(measured), p = events_by_rank(predicted);
  REQUIRE(m.size() == 4);
  for (const auto& [rank, events] : m) {
    INFO("rank " << rank);
    REQUIRE(p.count(rank));
    // The same compute and pipeline events by name (micro-batch, chunk, direction).
    const std::vector<std::string> compute = {"F ", "B ", "R ", "optimizer"}, pipeline = {"pp "};
    CHECK(names(events, compute) == names(p.at(rank), compute));
    CHECK(names(events, pipeline) == names(p.at(rank), pipeline));
    // every micro-batch's F, R and B, and the optimizer
    CHECK(names(events, compute).size() == static_cast<size_t>(3 * plan.prediction.micro_batches + 1));
    CHECK(names(events, {"tp reduce_scatter+all_gather"}).size() == 1);
    // Compute segments on a rank never overlap, and everything lies inside the traced step.
    std::vector<std::pair<double, double>> spans;
    for (const auto& e : events) {
      const double ts = e["ts"].get<double>(), dur = e["dur"].get<double>();
      CHECK(ts >= 0);
      CHECK(dur >= 0);
      if (e["tid"] == 0) spans.emplace_back(ts, ts + dur);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) CHECK(spans[i].first >= spans[i - 1].second - 1e-3);
  }
  // The report's time by category: the last step's exposed times, none negative.
  for (const auto& row : r.report["ranks"]) {
    double sum = 0;
    for (const auto& [k, v] : row["time_s"].items()) {
      CHECK(v.get<double>() >= 0);
      sum += v.get<double>();
    }
    CHECK(sum > 0);
  }
  CHECK(r.report["stages"][1]["micro_batch_time_s"]["recompute"].get<double>() > 0);
  // loom compare matches the two traces by name.
  const Run cmp = harness().loom("compare " + predicted_path.string() + " " + measured_path.string());
  INFO(cmp.out);
  CHECK(cmp.code == 0);
  CHECK(cmp.out.find("ranks 0,1,2,3 (in both traces)") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and outputs ([checkpoint]): a save killed at any point leaves the last published
// checkpoint resumable bit-identically; a damaged index, a changed rank file and a checkpoint of
// another plan are refused with one line naming the file and the field; outputs that cannot be
// written and flags that are not numbers a person means are refused before the first step.

namespace {

// Every file under `dir` called `name` (the rank files sit one folder below the index).
fs::path find_file(const fs::path& dir, const std::string& name) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().filename() == name) return e.path();
  return {};
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary | std::ios::trunc) << text; }

// The lines loom itself printed (mpirun adds its own banner when a rank exits non-zero).
int loom_lines(const std::string& out) {
  int n = 0;
  for (size_t at = out.find("loom: "); at != std::string::npos; at = out.find("loom: ", at + 1)) ++n;
  return n;
}

// dp 2 with ZeRO-1: each rank's file holds its own shard of Adam m and v.
Plan ckpt_plan() { return make_plan(config(2, 1, 1, 1)); }

// A fresh checkpoint of `plan` after `steps` steps in harness().dir()/name.
fs::path saved(const std::string& name, const Plan& plan, int steps) {
  const fs::path dir = harness().dir() / name;
  fs::remove_all(dir);
  const Run r = harness().mpirun(2, harness().write_plan(name, plan) + " --device cpu --quiet --timeout-s 20 --steps " +
                                        std::to_string(steps) + " --save " + dir.string());
  INFO(r.out);
  REQUIRE(r.code == 0);
  return dir;
}

}  // namespace

TEST_CASE("FNV-1a 64 gives the published test vectors", "[checkpoint]") {
  // Fowler/Noll/Vo reference test suite (test_fnv.c, fnv1a_64 vectors for "", "a", "foobar").
  CHECK(exec::fnv1a64("", 0) == 0xcbf29ce484222325ULL);
  CHECK(exec::fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
  CHECK(exec::fnv1a64("foobar", 6) == 0x85944171f73967e8ULL);
  CHECK(exec::fnv1a64("bar", 3, exec::fnv1a64("foo", 3)) == exec::fnv1a64("foobar", 6));  // chained
  CHECK(exec::hex64(0xaf63dc4c8601ec8cULL) == "af63dc4c8601ec8c");
}

TEST_CASE("the plan fingerprint covers what training depends on", "[checkpoint]") {
  const Plan a = ckpt_plan();
  const uint64_t fa = exec::plan_fingerprint(a);
  Plan b = a;
  b.train.global_batch = 16;
  CHECK(exec::plan_fingerprint(b) != fa);
  b = a;
  b.parallel.zero = 2;
  CHECK(exec::plan_fingerprint(b) != fa);
  b = a;
  b.model.norm_eps = 1e-6;
  CHECK(exec::plan_fingerprint(b) != fa);
  b = a;  // a description, another cluster or another prediction: the same training state
  b.model.source = "edited";
  b.cluster.name = "elsewhere";
  b.prediction.step_time_s = 1;
  CHECK(exec::plan_fingerprint(b) == fa);
}

TEST_CASE("the checkpoint index is read strictly: type, range, unknown keys", "[checkpoint]") {
  const nlohmann::json good = {{"format", "loom checkpoint"}, {"version", 2}, {"step", 4}, {"world", 2},
                               {"dir", "step-00000004"}, {"fingerprint", "00112233445566ff"}};
  auto ok = exec::index_from_json(good, "ck.json");
  REQUIRE(ok.ok());
  CHECK(ok->step == 4);
  CHECK(ok->fingerprint == 0x00112233445566ffULL);
  CHECK(exec::index_to_json(*ok) == good);
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"step", "4"}}, "ck.json: /step: must be an integer"},
      {{{"step", -1}}, "ck.json: /step: must be >= 0 (got -1)"},
      {{{"world", 2.5}}, "ck.json: /world: must be an integer"},
      {{{"world", 0}}, "ck.json: /world: must be >= 1 (got 0)"},
      {{{"version", 1}}, "ck.json: /version: must be 2"},
      {{{"format", true}}, "ck.json: /format: must be a string"},
      {{{"dir", "../elsewhere"}}, "ck.json: /dir: must name a folder step-<digits>"},
      {{{"fingerprint", 7}}, "ck.json: /fingerprint: must be a string"},
      {{{"fingerprint", "0011"}}, "ck.json: /fingerprint: must be 16 lowercase hex digits"},
      {{{"extra", 1}}, "ck.json: /extra"},
  };
  for (const auto& [patch, message] : bad) {
    nlohmann::json j = good;
    j.update(patch);
    INFO(j.dump());
    auto r = exec::index_from_json(j, "ck.json");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.rfind(message, 0) == 0);
  }
  nlohmann::json missing = good;
  missing.erase("dir");
  CHECK_FALSE(exec::index_from_json(missing, "ck.json").ok());
  CHECK_FALSE(exec::index_from_json(nlohmann::json::array(), "ck.json").ok());
}

TEST_CASE("output paths are checked without leaving anything behind", "[checkpoint]") {
  const fs::path dir = harness().dir() / "outputs";
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  write_text(dir / "a_file", "x");
  CHECK(exec::check_output_file((dir / "new.json").string(), "--report").ok());
  CHECK(exec::check_output_file((dir / "a_file").string(), "--report").ok());  // replaced by a rename
  const auto missing = exec::check_output_file((dir / "no" / "r.json").string(), "--report");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message == "--report: folder " + (dir / "no").string() + " does not exist");
  const auto folder = exec::check_output_file((dir / "sub").string(), "--trace");
  REQUIRE_FALSE(folder.ok());
  CHECK(folder.error().message == "--trace: " + (dir / "sub").string() + " is a folder, not a file");
  const auto under_file = exec::check_output_file((dir / "a_file" / "w.bin").string(), "--weights-out");
  REQUIRE_FALSE(under_file.ok());
  CHECK(under_file.error().message.find("is not a folder") != std::string::npos);
  const auto device = exec::check_output_file("/dev/null", "--report");
  REQUIRE_FALSE(device.ok());
  CHECK(device.error().message.find("not a regular file") != std::string::npos);
  CHECK(exec::check_output_folder((dir / "sub").string(), "--save").ok());
  CHECK(exec::check_output_folder((dir / "x" / "y" / "z").string(), "--save").ok());  // created on save
  const auto file_as_folder = exec::check_output_folder((dir / "a_file").string(), "--save");
  REQUIRE_FALSE(file_as_folder.ok());
  CHECK(file_as_folder.error().message == "--save: " + (dir / "a_file").string() + " is a file, not a folder");
  CHECK_FALSE(exec::check_output_folder((dir / "a_file" / "ck").string(), "--save").ok());
  CHECK(listing(dir) == std::vector<std::string>{"a_file", "sub"});  // nothing created
}

TEST_CASE("a save killed at any point leaves a checkpoint that resumes bit-identically", "[checkpoint]") {
  const Plan plan = ckpt_plan();
  const std::string path = harness().write_plan("crash", plan);
  auto run = [&](const fs::path& dir, int steps, const std::string& extra) {
    return harness().mpirun(2, path + " --device cpu --quiet --timeout-s 10 --steps " + std::to_string(steps) + " --resume " +
                         dir.string() + " " + extra);
  };
  // The rank files an index names, by name, with their bytes.
  auto published = [](const fs::path& dir) {
    const auto index = nlohmann::json::parse(slurp(dir / "checkpoint.json"));
    std::map<std::string, std::string> files;
    for (const auto& e : fs::directory_iterator(dir / index.at("dir").get<std::string>()))
      files[e.path().filename().string()] = slurp(e.path());
    return std::make_pair(index.at("step").get<int64_t>(), files);
  };
  const Trained straight = harness().train("crash_straight", plan, 4);
  const fs::path pristine = saved("crash_pristine", plan, 2), after = harness().dir() / "crash_after";
  // The uninterrupted save of step 3 over the step-2 checkpoint.
  fs::remove_all(after);
  fs::copy(pristine, after, fs::copy_options::recursive);
  REQUIRE(run(after, 3, "--save " + after.string()).code == 0);
  const auto before_files = published(pristine), after_files = published(after);
  REQUIRE(before_files.first == 2);
  REQUIRE(after_files.first == 3);
  REQUIRE(after_files.second.size() == 2);
  const int64_t file_bytes = static_cast<int64_t>(after_files.second.at("rank-00001.ckpt").size());
  // Named points on the rank that reaches them, and byte offsets inside a rank file (empty, in
  // the header, and two at random with a fixed seed, so a failure reproduces).
  std::vector<std::string> faults = {"0:file-written", "1:file-written", "0:agreed", "0:index-written",
                                     "0:published",    "0:cleaned",      "1:0",      "0:60"};
  std::mt19937_64 rng(20261205);
  for (int i = 0; i < 2; ++i)
    faults.push_back(std::to_string(i % 2) + ":" + std::to_string(std::uniform_int_distribution<int64_t>(1, file_bytes - 1)(rng)));
  const fs::path dir = harness().dir() / "crash_ckpt", weights = harness().dir() / "crash.weights";
  for (const std::string& fault : faults) {
    INFO("--die-in-save " << fault);
    fs::remove_all(dir);
    fs::copy(pristine, dir, fs::copy_options::recursive);
    // Step 3, then a save over the step-2 checkpoint that one rank does not survive.
    const Run crash = run(dir, 3, "--save " + dir.string() + " --die-in-save " + fault);
    INFO(crash.out);
    CHECK(crash.code != 0);
    CHECK(crash.code != 2);  // killed, not refused
    // The index names a complete checkpoint: the old one before the rename, the new one after,
    // byte for byte what an uninterrupted save leaves.
    const bool renamed = fault == "0:published" || fault == "0:cleaned";
    CHECK(published(dir) == (renamed ? after_files : before_files));
    if (fault == "0:index-written" || fault == "0:published") {
      // ... and it resumes to the uninterrupted run's weights, bit for bit.
      fs::remove(weights);
      const Run resume = run(dir, 4, "--weights-out " + weights.string());
      INFO(resume.out);
      REQUIRE(resume.code == 0);
      CHECK(read_floats(weights) == straight.weights);
    }
  }
  // The next save removes what the crash left: the index and the one folder it names remain.
  const Run save = run(dir, 3, "--save " + dir.string());
  INFO(save.out);
  REQUIRE(save.code == 0);
  CHECK(listing(dir) == std::vector<std::string>{"checkpoint.json", "step-00000003"});
  CHECK(published(dir) == after_files);
}

TEST_CASE("a checkpoint index with a wrong type is refused in one line naming the field", "[checkpoint]") {
  const Plan plan = ckpt_plan();
  const fs::path dir = saved("badindex", plan, 1);
  const std::string path = (harness().dir() / "badindex.json").string();
  auto index = nlohmann::json::parse(slurp(dir / "checkpoint.json"));
  index["step"] = "1";
  write_text(dir / "checkpoint.json", index.dump());
  const Run r = harness().mpirun(2, path + " --device cpu --steps 2 --timeout-s 10 --resume " + dir.string());
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK(r.out.find("loom: " + (dir / "checkpoint.json").string() + ": /step: must be an integer") != std::string::npos);
  CHECK(loom_lines(r.out) == 1);
  CHECK(r.out.find("loss") == std::string::npos);  // no step ran
}

TEST_CASE("a rank file changed in place is refused by its checksum, naming the file", "[checkpoint]") {
  const Plan plan = ckpt_plan();
  const fs::path dir = saved("flipped", plan, 1);
  const fs::path file = find_file(dir, "rank-00001.ckpt");
  REQUIRE(!file.empty());
  {  // one bit of one weight, in place (same size, same header)
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(200);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(200);
    f.write(&c, 1);
  }
  const Run r = harness().mpirun(2, (harness().dir() / "flipped.json").string() +
                                        " --device cpu --steps 2 --timeout-s 10 --resume " + dir.string());
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK(r.out.find(file.string() + ": checksum mismatch") != std::string::npos);
  CHECK(loom_lines(r.out) == 1);
}

TEST_CASE("a checkpoint of another plan is refused by its fingerprint", "[checkpoint]") {
  // Same shapes and shards (a larger global batch only), so every size matches: only the
  // fingerprint tells the plans apart.
  const Plan a = ckpt_plan();
  Plan b = a;
  b.train.global_batch = 16;
  b.prediction = CostModel(b.model, b.cluster, b.train).evaluate(b.parallel);
  const fs::path dir_a = saved("plan_a", a, 1), dir_b = saved("plan_b", b, 1);
  const std::string path_b = (harness().dir() / "plan_b.json").string();
  const Run index = harness().mpirun(2, path_b + " --device cpu --steps 2 --timeout-s 10 --resume " + dir_a.string());
  INFO(index.out);
  CHECK(index.code == 2);
  CHECK(index.out.find((dir_a / "checkpoint.json").string() + ": /fingerprint: written for another plan") != std::string::npos);
  CHECK(loom_lines(index.out) == 1);
  // An index that claims plan b over plan a's rank files: the files say whose they are.
  auto j = nlohmann::json::parse(slurp(dir_a / "checkpoint.json"));
  j["fingerprint"] = nlohmann::json::parse(slurp(dir_b / "checkpoint.json"))["fingerprint"];
  write_text(dir_a / "checkpoint.json", j.dump());
  const Run files = harness().mpirun(2, path_b + " --device cpu --steps 2 --timeout-s 10 --resume " + dir_a.string());
  INFO(files.out);
  CHECK(files.code == 2);
  CHECK(files.out.find("rank-00000.ckpt: written for another plan") != std::string::npos);
  CHECK(loom_lines(files.out) == 1);
}

TEST_CASE("outputs that cannot be written are refused before the first step", "[checkpoint]") {
  const std::string path = harness().write_plan("outputs_plan", ckpt_plan());
  const fs::path folder = harness().dir() / "outputs_folder", file = harness().dir() / "outputs_file";
  fs::create_directories(folder);
  write_text(file, "x");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--report " + folder.string(), "--report: " + folder.string() + " is a folder, not a file"},
      {"--trace /nonexistent/dir/t.json", "--trace: folder /nonexistent/dir does not exist"},
      {"--weights-out /nonexistent/dir/w.bin", "--weights-out: folder /nonexistent/dir does not exist"},
      {"--weights-out " + folder.string(), "--weights-out: " + folder.string() + " is a folder, not a file"},
      {"--save " + file.string(), "--save: " + file.string() + " is a file, not a folder"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [flag, message] = cases[i];
    INFO(flag);
    // A checkpoint saved after the last step would show that the steps ran.
    const fs::path ckpt = harness().dir() / ("outputs_ckpt" + std::to_string(i));
    const std::string save = flag.rfind("--save", 0) == 0 ? "" : " --save " + ckpt.string();
    const Run r = harness().mpirun(2, path + " --device cpu --steps 3 --timeout-s 10 " + flag + save);
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find("loom: " + message) != std::string::npos);
    CHECK(loom_lines(r.out) == 1);
    CHECK(r.out.find("loss") == std::string::npos);
    CHECK_FALSE(fs::exists(ckpt));
  }
}

TEST_CASE("execute's numeric flags are refused unless they are what they look like", "[checkpoint]") {
  const std::string path = harness().write_plan("flags_plan", make_plan(ParallelConfig{}));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--timeout-s nan", "--timeout-s: must be a finite decimal number (got nan)"},
      {"--timeout-s inf", "--timeout-s: must be a finite decimal number (got inf)"},
      {"--timeout-s -1", "--timeout-s: must be > 0 (got -1)"},
      {"--timeout-s 1e300", "--timeout-s: must be <= 604800 (got 1e300)"},
      {"--lr -1", "--lr: must be > 0 (got -1)"},
      {"--lr nan", "--lr: must be a finite decimal number (got nan)"},
      {"--lr 0", "--lr: must be > 0 (got 0)"},
      {"--steps 0", "--steps: must be >= 1 (got 0)"},
      {"--steps -3", "--steps: must be >= 1 (got -3)"},
      {"--steps 9223372036854775807", "--steps: too many for this plan's global batch"},
      {"--seed -1", "--seed: must be >= 0 (got -1)"},
      {"--emulate-rank -2", "--emulate-rank: must be >= 0 (got -2)"},
  };
  for (const auto& [flag, message] : cases) {
    INFO(flag);
    // Bounded: a step count that wraps around would otherwise train for ever.
    const Run r = harness().shell(std::string("OMP_NUM_THREADS=1 timeout 60 ") + LOOM_BIN + " execute " + path +
                                  " --device cpu --quiet " + flag);
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find("loom: " + message) != std::string::npos);
    CHECK(loom_lines(r.out) == 1);
  }
}

// `--device cuda` runs the same trainer as the CPU path and takes all its flags. A plan its
// kernels cannot run is refused in one line naming the field and the rule, exit 2, before the
// module is loaded or anything allocated (so these run without a GPU).
TEST_CASE("--device cuda refuses the plans its kernels cannot run, in one line", "[cuda_flags]") {
  // tiny-gpt made bf16 with fused attention, then one field at a time made wrong.
  auto cuda_plan = [](ParallelConfig p, auto&& edit) {
    Plan plan = make_plan(p);
    plan.train.dtype = Dtype::bf16;
    plan.train.grad_dtype = Dtype::bf16;
    plan.train.attention = Attention::fused;
    edit(plan);
    plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
    return plan;
  };
  auto head64 = [](Plan& p) {  // head size 64, seq 64: what the kernels take
    p.model.hidden = 128;
    p.model.heads = 2;
    p.model.kv_heads = 2;
    p.model.ffn_hidden = 512;
    p.model.seq_len = 64;
    p.train.seq = 64;
  };
  const std::pair<Plan, std::string> plans[] = {
      {make_plan(config(2, 1, 1)), "loom: train.dtype: the CUDA backend computes in bf16"},
      {cuda_plan(config(1, 2, 1), [](Plan& p) { p.train.attention = Attention::unfused; }),
       "loom: train.attention: the CUDA backend runs the fused attention kernel"},
      {cuda_plan(config(1, 1, 2), [](Plan&) {}), "loom: model.head_dim: the CUDA attention kernel runs head size 64 or 128 (got 8)"},
      {cuda_plan(config(1, 1, 1), [&](Plan& p) { head64(p); p.train.seq = 32; p.model.seq_len = 32; }),
       "loom: train.seq: the CUDA attention kernel needs a positive multiple of 64 (got 32)"}};
  for (const auto& [plan, line] : plans) {
    const Run r = harness().loom("execute " + harness().write_plan("cuda_plan", plan) + " --device cuda --lr 1e-4");
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.rfind(line, 0) == 0);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
  // A plan the kernels take: --emulate-rank keeps its rules; the flags the separate CUDA path
  // refused (--save, --resume, --timeout-s, faults) are forwarded, so what stops this run is the
  // machine (no module in a CPU-only build, no GPU in a CUDA build without one), named as --device.
  const std::string ok = harness().write_plan("cuda_ok", cuda_plan(config(1, 1, 1), head64));
  const std::pair<std::string, std::string> flags[] = {
      {"--emulate-rank 1", "loom: --emulate-rank: must be below the plan's 1 ranks"},
      {"--emulate-rank 0 --save " + (harness().dir() / "cuda_ck").string(), "loom: --emulate-rank: trains no real model"},
      {"--save " + (harness().dir() / "cuda_ck").string() + " --timeout-s 5 --die-at-step 1 --die-rank 0", "loom: --device: "}};
  for (const auto& [flag, line] : flags) {
    const Run r = harness().loom("execute " + ok + " --device cuda " + flag);
    INFO(flag << ": " << r.out);
    CHECK(r.code == 2);
    CHECK(r.out.rfind(line, 0) == 0);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
}
