// Bad input gets one line naming the field and the rule, exit code 2; never a crash.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "run_loom.hpp"
#include "sim/zoo.hpp"

namespace {

const std::string kBase = "predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 ";

size_t lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

void expect_rejected(const std::string& args, const std::string& must_contain) {
  INFO("loom " << args);
  LoomRun r = run_loom(args);
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find(must_contain) != std::string::npos);
  CHECK(r.out.empty());
}

nlohmann::json zoo_json(const std::string& name) {
  for (const auto& e : loom::model_zoo())
    if (e.name == name) return nlohmann::json::parse(e.json);
  return {};
}

std::string model_file(const std::string& name, const nlohmann::json& j) {
  return temp_file(name, j.dump());
}

}  // namespace

TEST_CASE("predict prints a plan for the default case") {
  LoomRun r = run_loom(kBase + "--tp 8 --pp 16 --zero 1 --schedule interleaved --vpp 2 --recompute selective --sp");
  CHECK(r.code == 0);
  CHECK(r.out.find("memory per GPU") != std::string::npos);
  CHECK(r.out.find("fits") != std::string::npos);
}

TEST_CASE("predict --json has DESIGN.md's field names") {
  LoomRun r = run_loom(kBase + "--tp 8 --pp 16 --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"params", "step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "flops", "memory_bytes",
                        "comm_bytes", "time_s", "stages", "fits", "reason", "gpus", "dp", "tp", "pp", "zero",
                        "micro_batch", "global_batch", "seq", "vpp", "recompute", "sp", "schedule"})
    CHECK(j.contains(k));
  for (const char* k : {"weights", "grads", "optimizer", "activations", "other", "peak"})
    CHECK(j["memory_bytes"].contains(k));
  for (const char* k : {"compute", "tp_comm", "dp_comm", "pp_comm", "bubble", "optimizer"}) CHECK(j["time_s"].contains(k));
  CHECK(j["dp"] == 8);
}

TEST_CASE("a configuration that does not fit still prints, fits false, exit 0") {
  LoomRun r = run_loom("predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1024 --tp 1 --pp 1 --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["fits"] == false);
  CHECK(j["reason"].get<std::string>().find("GiB") != std::string::npos);
}

TEST_CASE("predict --plan re-evaluates a saved plan to the same numbers") {
  auto path = temp_file("plan.json", "");
  LoomRun a = run_loom(kBase + "--tp 8 --pp 16 --zero 1 --sp --json -o " + path);
  REQUIRE(a.code == 0);
  LoomRun b = run_loom("predict --json --plan " + path);
  REQUIRE(b.code == 0);
  CHECK(a.out == b.out);
}

TEST_CASE("split rules name the flag") {
  expect_rejected(kBase + "--tp 7 --pp 16 --dp 1", "--dp: dp x tp x pp must equal");
  expect_rejected(kBase + "--tp 64 --pp 16", "--tp: must divide heads");
  expect_rejected(kBase + "--tp 8 --pp 5 --dp 1", "--dp");  // 40 != 1024
  expect_rejected("predict --model gpt3-175b --cluster dgx-a100 --gpus 640 --global-batch 1536 --tp 8 --pp 5",
                  "--pp: pp x vpp must divide layers");
  expect_rejected(kBase + "--tp 8 --pp 16 --micro-batch 5", "--global-batch: must be a multiple of dp x micro_batch");
  expect_rejected(kBase + "--tp 1 --pp 16 --sp", "--sp: sequence parallelism needs tensor parallelism");
  expect_rejected(kBase + "--tp 8 --pp 16 --schedule interleaved", "--vpp: the interleaved schedule needs vpp > 1");
  expect_rejected(kBase + "--tp 8 --pp 16 --vpp 2", "--vpp: vpp > 1 needs the interleaved schedule");
  expect_rejected(kBase + "--tp 8 --pp 16 --schedule interleaved --vpp 5", "--vpp: pp x vpp must divide layers");
  expect_rejected("predict --model gpt3-175b --cluster dgx-a100 --gpus 99999 --global-batch 1536 --tp 8 --pp 16",
                  "--gpus: more GPUs than cluster dgx-a100 has");
  expect_rejected("predict --model gpt3-175b --cluster h100-sxm --gpus 2 --global-batch 8 --tp 1 --pp 1",
                  "--gpus: more GPUs than cluster h100-sxm has");
  expect_rejected(kBase + "--tp 8 --pp 16 --order tp-pp-tp", "--order");
  expect_rejected(kBase + "--tp 8 --pp 16 --zero 4", "--zero: must be 0, 1, 2 or 3");
  expect_rejected(kBase + "--tp 8 --pp 16 --recompute some", "--recompute");
  expect_rejected(kBase + "--tp 8 --pp 16 --bogus", "--bogus");
  expect_rejected(kBase + "--tp abc --pp 16", "--tp");
  expect_rejected("predict --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 8 --pp 1", "--model: is required");
  expect_rejected("predict --model nope --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 8 --pp 1",
                  "--model: \"nope\" is neither a zoo model");
}

TEST_CASE("model file rules name the file and the JSON pointer") {
  const std::string tail = " --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 1 --pp 1";
  auto base = zoo_json("gpt2-124m");
  REQUIRE(base.is_object());
  {
    auto p = temp_file("malformed.json", "{\"name\": ");
    expect_rejected("predict --model " + p + tail, "malformed JSON");
  }
  {
    auto j = base;
    j["colour"] = "blue";
    expect_rejected("predict --model " + model_file("unknown.json", j) + tail, "/colour: unknown field");
  }
  {
    auto j = base;
    j["layers"] = "twelve";
    expect_rejected("predict --model " + model_file("type.json", j) + tail, "/layers: must be an integer");
  }
  {
    auto j = base;
    j.erase("hidden");
    expect_rejected("predict --model " + model_file("missing.json", j) + tail, "/hidden: required field is missing");
  }
  {
    auto j = base;
    j["heads"] = 0;
    expect_rejected("predict --model " + model_file("zero.json", j) + tail, "/heads: must be >= 1");
  }
  {
    auto j = base;
    j["vocab"] = -5;
    expect_rejected("predict --model " + model_file("negative.json", j) + tail, "/vocab: must be >= 1");
  }
  {
    auto p = temp_file("nan.json", "{\"name\": \"x\", \"layers\": NaN}");
    expect_rejected("predict --model " + p + tail, "malformed JSON");
  }
  {
    // 1e400 overflows a double: the loader must call it out, not carry an infinity.
    auto p = temp_file("inf.json", std::string(base.dump()).replace(1, 0, "\"norm_eps\": 1e400, "));
    expect_rejected("predict --model " + p + tail, "malformed JSON: number overflow");
  }
  {
    auto j = base;
    j["heads"] = 7;
    expect_rejected("predict --model " + model_file("heads.json", j) + tail, "/heads: must divide hidden");
  }
  {
    auto j = zoo_json("llama3-8b");
    j["kv_heads"] = 5;
    expect_rejected("predict --model " + model_file("kv.json", j) + tail, "/kv_heads: must divide heads");
  }
  {
    auto j = base;
    j["family"] = "mamba";
    expect_rejected("predict --model " + model_file("family.json", j) + tail, "/family: must be one of gpt, llama");
  }
}

TEST_CASE("a Hugging Face config.json is a model; unused keys are listed once") {
  const std::string tail = " --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 1 --pp 1 --json";
  LoomRun r = run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/gpt2_config.json" + tail);
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["params"] == 124'439'808);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find("keys not used by loom") != std::string::npos);
  LoomRun l = run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/llama3_8b_config.json" + tail);
  REQUIRE(l.code == 0);
  CHECK(nlohmann::json::parse(l.out)["params"] == 8'030'261'248);
}

TEST_CASE("plan file rules name the file and the JSON pointer inside it") {
  auto path = temp_file("plan_ok.json", "");
  REQUIRE(run_loom(kBase + "--tp 8 --pp 16 -o " + path).code == 0);
  auto plan = nlohmann::json::parse(slurp(path));
  {
    auto j = plan;
    j["parallel"]["tp"] = 0;
    expect_rejected("predict --plan " + temp_file("p1.json", j.dump()), "p1.json: /parallel/tp: must be >= 1");
  }
  {
    auto j = plan;
    j["model"]["layers"] = 97;
    expect_rejected("predict --plan " + temp_file("p2.json", j.dump()), "p2.json: /parallel/pp: pp x vpp must divide layers");
  }
  {
    auto j = plan;
    j["layout"]["layers"][0]["stage"] = 3;
    expect_rejected("predict --plan " + temp_file("p3.json", j.dump()), "p3.json: /layout: does not match");
  }
  {
    auto j = plan;
    j["train"]["global_batch"] = 1001;
    expect_rejected("predict --plan " + temp_file("p4.json", j.dump()), "p4.json: /train/global_batch: must be a multiple");
  }
  {
    auto j = plan;
    j["cluster"]["gpu"]["hbm_bytes_per_s"] = "fast";
    expect_rejected("predict --plan " + temp_file("p5.json", j.dump()), "p5.json: /cluster/gpu/hbm_bytes_per_s: must be a number");
  }
}
