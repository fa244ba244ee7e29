#include "mpi_harness.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "sim/cost_model.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace fs = std::filesystem;

namespace loom::test {

MpiHarness::MpiHarness(const std::string& prefix)
    : dir_(fs::temp_directory_path() / (prefix + std::to_string(::getpid()))) {
  fs::create_directories(dir_);
}

Run MpiHarness::shell(const std::string& command) {
  const fs::path log = dir_ / ("log" + std::to_string(logs_++));
  const std::string cmd = command + " >" + log.string() + " 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  Run r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(log);
  return r;
}

Run MpiHarness::mpirun(int ranks, const std::string& args) {
  return shell("OMP_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np " + std::to_string(ranks) + " " +
               LOOM_BIN + " execute " + args);
}

Run MpiHarness::loom(const std::string& args) { return shell(std::string("OMP_NUM_THREADS=1 ") + LOOM_BIN + " " + args); }

std::string MpiHarness::write_plan(const std::string& name, const Plan& plan) {
  const fs::path path = dir_ / (name + ".json");
  std::ofstream(path) << plan_to_json(plan).dump(2);
  return path.string();
}

Trained MpiHarness::train(const std::string& name, const Plan& plan, int steps, const std::string& extra) {
  const std::string path = write_plan(name, plan);
  const fs::path report = dir_ / (name + ".measured.json"), weights = dir_ / (name + ".weights");
  const Run r = mpirun(static_cast<int>(plan.parallel.gpus()),
                       path + " --device cpu --quiet --timeout-s 60 --steps " + std::to_string(steps) + " --report " +
                           report.string() + " --weights-out " + weights.string() + " " + extra);
  INFO(r.out);
  REQUIRE(r.code == 0);
  return {nlohmann::json::parse(slurp(report)), read_floats(weights)};
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<float> read_floats(const fs::path& p) {
  const std::string bytes = slurp(p);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

TrainSpec tiny_train(Attention attention) {
  TrainSpec t;
  t.global_batch = 8;
  t.seq = 16;
  t.dtype = Dtype::fp32;
  t.grad_dtype = Dtype::fp32;
  t.attention = attention;
  t.dp_bucket_bytes = 16384;
  return t;
}

Plan cpu_plan(const ModelSpec& model, const TrainSpec& train, const ParallelConfig& p, bool priced) {
  auto c = load_cluster("cpu-mpi", "--cluster");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, p.gpus(), "--gpus").ok());
  Plan plan;
  plan.model = model;
  plan.cluster = *c;
  plan.train = train;
  plan.parallel = p;
  if (!priced) return plan;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) { return f; });
  INFO((st ? std::string() : st.error().message));
  REQUIRE(st.ok());
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  return plan;
}

void check_like_reference(const Trained& run, const Trained& reference) {
  const auto& a = run.report["losses"];
  const auto& b = reference.report["losses"];
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("step " << i << ": " << a[i].get<double>() << " against " << b[i].get<double>());
    CHECK(std::fabs(a[i].get<double>() - b[i].get<double>()) <= kLossTol);
  }
  CHECK(b[b.size() - 1].get<double>() < b[0].get<double>());  // it trains
  REQUIRE(run.weights.size() == reference.weights.size());
  double worst = 0;
  for (size_t i = 0; i < run.weights.size(); ++i)
    worst = std::max(worst, std::fabs(double(run.weights[i]) - reference.weights[i]));
  INFO("largest weight difference " << worst);
  CHECK(worst <= kWeightTol);
}

}  // namespace loom::test
