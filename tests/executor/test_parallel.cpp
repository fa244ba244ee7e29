// The CPU executor under MPI (label mpi): every parallel plan of a matrix on a tiny GPT trains to
// the same losses and weights as one rank, and what each rank measures (bytes by category, GEMM
// FLOPs, bytes sent per group) equals the cost model's prediction for its stage exactly. Then the
// reliability promises: resume is bit-identical, a dead rank ends the job in bounded time, a NaN
// loss stops with step and rank, a plan for another world size is refused.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "sim/collectives.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/model_math.hpp"
#include "sim/plan.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace fs = std::filesystem;
using namespace loom;

namespace {

struct Run {
  int code = -1;
  std::string out;
  double seconds = 0;
};

fs::path work_dir() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("loom_exec_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Run shell(const std::string& command) {
  static int counter = 0;
  const fs::path log = work_dir() / ("log" + std::to_string(counter++));
  const std::string cmd = command + " >" + log.string() + " 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  Run r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(log);
  return r;
}

// mpirun as CI runs it: as root, more ranks than cores, one thread per rank.
Run mpirun(int ranks, const std::string& args) {
  return shell("OMP_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np " + std::to_string(ranks) + " " +
               LOOM_BIN + " execute " + args);
}

// One process, no mpirun: `loom <args>`.
Run run_loom(const std::string& args) { return shell(std::string("OMP_NUM_THREADS=1 ") + LOOM_BIN + " " + args); }

Plan make_plan(ParallelConfig p) {
  auto m = load_model(std::string(LOOM_TEST_DATA) + "/tiny-gpt.json", "--model", nullptr);
  REQUIRE(m.ok());
  auto c = load_cluster("cpu-mpi", "--cluster");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, p.gpus(), "--gpus").ok());
  Plan plan;
  plan.model = *m;
  plan.cluster = *c;
  plan.train.global_batch = 8;
  plan.train.seq = 16;
  plan.train.dtype = Dtype::fp32;
  plan.train.grad_dtype = Dtype::fp32;
  plan.train.attention = Attention::unfused;
  plan.train.dp_bucket_bytes = 16384;  // several buckets per stage
  plan.parallel = p;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) { return f; });
  INFO((st ? std::string() : st.error().message));
  REQUIRE(st.ok());
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  return plan;
}

std::string write_plan(const std::string& name, const Plan& plan) {
  const fs::path path = work_dir() / (name + ".json");
  std::ofstream(path) << plan_to_json(plan).dump(2);
  return path.string();
}

struct Result {
  nlohmann::json report;
  std::vector<float> weights;
};

Result execute(const std::string& name, const Plan& plan, int steps = 3, const std::string& extra = "") {
  const std::string path = write_plan(name, plan);
  const fs::path report = work_dir() / (name + ".measured.json"), weights = work_dir() / (name + ".weights");
  const Run r = mpirun(static_cast<int>(plan.parallel.gpus()),
                       path + " --device cpu --quiet --timeout-s 60 --steps " + std::to_string(steps) + " --report " +
                           report.string() + " --weights-out " + weights.string() + " " + extra);
  INFO(r.out);
  REQUIRE(r.code == 0);
  Result out;
  out.report = nlohmann::json::parse(slurp(report));
  const std::string bytes = slurp(weights);
  out.weights.resize(bytes.size() / sizeof(float));
  std::memcpy(out.weights.data(), bytes.data(), bytes.size());
  return out;
}

const Result& reference() {
  static const Result r = execute("reference", make_plan(ParallelConfig{}));
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

// Tolerances. Every plan computes the same sums in a different order (ring all-reduce order,
// tp partial sums, gradient accumulation over other micro-batch splits), so fp32 results differ
// in the last bits: measured up to 3e-8 on the losses (about 4.1, i.e. a few float ulps) and
// 4e-6 on the weights after 3 AdamW steps at lr 1e-3 (Adam divides by sqrt(v), which magnifies
// rounding of gradients near zero). The bounds are 1e-6 and 5e-5: well above that rounding and
// far below what a real bug does (a lost or doubled reduction, a wrong shard or a skipped
// micro-batch moves the loss by > 1e-4 and weights by about one step, lr = 1e-3).
constexpr double kLossTol = 1e-6;
constexpr double kWeightTol = 5e-5;

void check_equivalent(const Result& r) {
  const Result& ref = reference();
  const auto& a = r.report["losses"];
  const auto& b = ref.report["losses"];
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(std::fabs(a[i].get<double>() - b[i].get<double>()) <= kLossTol);
  CHECK(b[b.size() - 1].get<double>() < b[0].get<double>());  // it trains
  REQUIRE(r.weights.size() == ref.weights.size());
  double worst = 0;
  for (size_t i = 0; i < r.weights.size(); ++i) worst = std::max(worst, std::fabs(double(r.weights[i]) - ref.weights[i]));
  INFO("largest weight difference " << worst);
  CHECK(worst <= kWeightTol);
}

void check_plan(const std::string& name, const ParallelConfig& p) {
  const Plan plan = make_plan(p);
  const Result r = execute(name, plan);
  check_exact(plan, r.report);
  check_equivalent(r);
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
TEST_CASE("recompute selective and full", "[equivalence]") {
  check_plan("rc_sel", config(1, 2, 1, 0, Schedule::one_f_one_b, 1, Recompute::selective));
  check_plan("rc_full", config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true));
}
TEST_CASE("3D: dp 2 x tp 2 x pp 2", "[equivalence]") {
  check_plan("mix_z1_int_sel", config(2, 2, 2, 1, Schedule::interleaved, 2, Recompute::selective));
  check_plan("mix_z3_full", config(2, 2, 2, 3, Schedule::one_f_one_b, 1, Recompute::full));
}

TEST_CASE("compare: predicted against measured, field by field", "[compare]") {
  const Plan plan = make_plan(config(2, 1, 1, 2));
  const Result r = execute("compare", plan, 1);
  const std::string cmd = std::string(LOOM_BIN) + " compare " + (work_dir() / "compare.json").string() + " " +
                          (work_dir() / "compare.measured.json").string() + " --json > " +
                          (work_dir() / "compare.out").string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto fields = nlohmann::json::parse(slurp(work_dir() / "compare.out"))["fields"];
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
  const Result full = execute("straight", plan, 4);
  const std::string ckpt = (work_dir() / "ckpt").string();
  execute("first_half", plan, 2, "--save " + ckpt);
  CHECK(fs::exists(fs::path(ckpt) / "checkpoint.json"));
  const Result resumed = execute("second_half", plan, 4, "--resume " + ckpt);
  const auto& a = full.report["losses"];
  const auto& b = resumed.report["losses"];
  REQUIRE(b.size() == 2);
  CHECK(b[0].get<double>() == a[2].get<double>());
  CHECK(b[1].get<double>() == a[3].get<double>());
  CHECK(resumed.weights == full.weights);
}

TEST_CASE("a rank that dies ends the job in bounded time, with a message", "[reliability]") {
  const std::string path = write_plan("die", make_plan(config(1, 1, 2)));
  const Run r = mpirun(2, path + " --device cpu --steps 4 --timeout-s 10 --die-at-step 1 --die-rank 1");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.seconds < 60);
  CHECK((r.out.find("rank 1") != std::string::npos || r.out.find("no progress") != std::string::npos));
}

TEST_CASE("a rank that hangs is detected by the others' deadline", "[reliability]") {
  // mpirun does not notice a stopped process: the survivors' own timeout (5 s) must end the job.
  const std::string path = write_plan("stall", make_plan(config(1, 1, 2)));
  const Run r = mpirun(2, path + " --device cpu --steps 4 --timeout-s 5 --die-at-step 1 --die-rank 1 --stall");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.seconds < 60);
  CHECK(r.out.find("rank 0") != std::string::npos);
  CHECK(r.out.find("no progress for 5 s") != std::string::npos);
}

TEST_CASE("a NaN loss stops every rank with the step and the rank", "[reliability]") {
  const std::string path = write_plan("nan", make_plan(config(2, 1, 1)));
  const Run r = mpirun(2, path + " --device cpu --steps 3 --nan-at-step 1");
  INFO(r.out);
  CHECK(r.code == 3);
  CHECK(r.out.find("loss is not finite") != std::string::npos);
  CHECK(r.out.find("at step 1") != std::string::npos);
  CHECK(r.out.find("rank 0") != std::string::npos);
}

TEST_CASE("a plan for another world size is refused", "[reliability]") {
  const std::string path = write_plan("world", make_plan(config(2, 1, 1)));
  const Run r = mpirun(1, path + " --device cpu --steps 1");
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK(r.out.find("needs 2 ranks") != std::string::npos);
}

TEST_CASE("an emulated rank measures what that rank measures in the whole job", "[emulate]") {
  // dp 2 x tp 2 x pp 2, ZeRO-1, interleaved, selective recompute, SP: every rank differs in
  // shapes, layers, schedule or the collectives it runs.
  const Plan plan = make_plan(config(2, 2, 2, 1, Schedule::interleaved, 2, Recompute::selective, true));
  const Result job = execute("emu_job", plan, 1);
  const std::string path = (work_dir() / "emu_job.json").string();
  for (int r = 0; r < 8; ++r) {
    INFO("rank " << r);
    const fs::path report = work_dir() / ("emu" + std::to_string(r) + ".json");
    const Run run = run_loom("execute " + path + " --quiet --steps 1 --emulate-rank " + std::to_string(r) + " --report " +
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
  const std::string path = write_plan("emu_bad", make_plan(config(2, 1, 1)));
  const Run high = run_loom("execute " + path + " --emulate-rank 2");
  CHECK(high.code == 2);
  CHECK(high.out.find("--emulate-rank: must be below the plan's 2 ranks") != std::string::npos);
  const Run save = run_loom("execute " + path + " --emulate-rank 1 --save " + (work_dir() / "emu_ckpt").string());
  CHECK(save.code == 2);
  CHECK(save.out.find("--save, --resume and --weights-out do not apply") != std::string::npos);
  const Run trace = run_loom("execute " + path + " --emulate-rank 1 --trace /nonexistent/dir/t.json");
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

TEST_CASE("a measured trace names what ran as loom simulate does, on every rank", "[trace]") {
  // tp 2 with SP x pp 2, full recompute: forward, recompute, backward, optimizer, SP collectives
  // and pipeline transfers on each rank.
  const Plan plan = make_plan(config(1, 2, 2, 0, Schedule::one_f_one_b, 1, Recompute::full, true));
  const fs::path measured_path = work_dir() / "measured.trace.json", predicted_path = work_dir() / "predicted.trace.json";
  const Result r = execute("traced", plan, 2, "--trace " + measured_path.string());
  const Run sim = run_loom("simulate " + (work_dir() / "traced.json").string() + " --ranks 0-3 --trace " +
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
  const Run cmp = run_loom("compare " + predicted_path.string() + " " + measured_path.string());
  INFO(cmp.out);
  CHECK(cmp.code == 0);
  CHECK(cmp.out.find("ranks 0,1,2,3 (in both traces)") != std::string::npos);
}
