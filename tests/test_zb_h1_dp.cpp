// ZB-H1's gradient reduction: the analytical step prices the tail of deferred W's and their
// reductions as the simulator plays them (sim/cost_model.cpp zb_h1_tail_s). The plan of
// Llama 3 405B on 16384 H100s (pp 64, 126 layers as 1,2x62,1) disagreed by 10% under ZeRO-2
// when the model hid each micro-batch's reduce-scatter only behind that micro-batch's W.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <string>

#include "run_loom.hpp"

namespace {

std::string split_1_2x62_1() {
  std::string s = "1";
  for (int i = 0; i < 62; ++i) s += ",2";
  return s + ",1";
}

}  // namespace

TEST_CASE("zb-h1 with ZeRO 0, 1 and 2 over dp 32: analytical and simulated steps within 3%") {
  const std::string plan = "zb_h1_dp_tail_plan.json";
  for (int zero : {0, 1, 2}) {
    const LoomRun predict = run_loom(
        "predict --model llama3-405b --cluster dgx-h100 --gpus 16384 --global-batch 2048 --dp 32 --tp 8 --pp 64 "
        "--zero " + std::to_string(zero) + " --micro-batch 1 --schedule zb-h1 --sp on --recompute none "
        "--stage-layers " + split_1_2x62_1() + " -o " + plan);
    REQUIRE(predict.code == 0);
    const LoomRun sim = run_loom("simulate " + plan + " --json");
    REQUIRE(sim.code == 0);
    const auto doc = nlohmann::json::parse(sim.out);
    const double an = doc["analytical_step_time_s"].get<double>(), st = doc["simulated_step_time_s"].get<double>();
    INFO("zero " << zero << " analytical " << an << " simulated " << st);
    CHECK(std::fabs(st / an - 1) <= 0.03);
  }
  std::remove(plan.c_str());
}
