// Bad input gets one line naming the field and the rule, exit code 2; never a crash.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <regex>
#include <sstream>
#include <vector>

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

TEST_CASE("predict --json has the Estimate field names (sim/estimate.hpp)") {
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
  // A flag the plan holds its own value for is refused, not silently overridden.
  LoomRun c = run_loom("predict --plan " + path + " --tp 4");
  CHECK(c.code == 2);
  CHECK(c.err == "loom: --tp: is the plan's own with --plan (edit the plan, or drop --plan to price flags); only "
                 "--memory-headroom, --json and -o go with it\n");
  // A file that is not one: said so, not "no such file".
  LoomRun d = run_loom("predict --plan " + std::filesystem::path(path).parent_path().string());
  CHECK(d.code == 2);
  CHECK(d.err.find(": is a directory, not a file") != std::string::npos);
}

TEST_CASE("-o naming a directory: one line, exit 2, nothing left beside it") {
  const std::filesystem::path dir = std::filesystem::path(temp_file("out_dir_marker", "")).parent_path() / "out_dir";
  std::filesystem::create_directories(dir);
  LoomRun r = run_loom(kBase + "--tp 8 --pp 16 -o " + dir.string());
  CHECK(r.code == 2);
  CHECK(r.err == "loom: " + dir.string() + ": is a directory: name a file to write\n");
  CHECK_FALSE(std::filesystem::exists(dir.string() + ".tmp"));
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
  LoomRun l = run_loom("predict --model " + std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/llama3_8b_config.json" + tail + " --seq 8192");
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

// ---- One set of parallel flags, one reader of plans, and answers that agree with themselves ----

TEST_CASE("predict takes --sp as plan does: on, off, or bare (on)", "[cli-flags]") {
  auto sp_of = [](const std::string& flag) {
    LoomRun r = run_loom(kBase + "--tp 8 --pp 16 --json " + flag);
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out)["sp"].get<bool>();
  };
  CHECK(sp_of("--sp on") == true);
  CHECK(sp_of("--sp off") == false);
  CHECK(sp_of("--sp=on") == true);
  CHECK(sp_of("--sp") == true);
  CHECK(sp_of("") == false);
  expect_rejected(kBase + "--tp 8 --pp 16 --sp maybe", "--sp");
  // plan: the same syntax (a bare --sp pins it on there too).
  LoomRun p = run_loom("plan --model gpt2-350m --cluster dgx-h100 --gpus 8 --global-batch 16 --tp 2 --pp 1 --sp "
                       "--top 3 --refine 0 --json");
  INFO("stderr: " << p.err);
  REQUIRE(p.code == 0);
  for (const auto& e : nlohmann::json::parse(p.out)["top"]) CHECK(e["sp"] == true);
}

TEST_CASE("predict takes --memory-headroom: fit is judged as plan judges it", "[cli-flags]") {
  auto usable = [](const std::string& flag) {
    LoomRun r = run_loom(kBase + "--tp 8 --pp 16 --json " + flag);
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    return std::pair{j["usable_bytes"].get<int64_t>(), j["capacity_bytes"].get<int64_t>()};
  };
  const auto [u, cap] = usable("--memory-headroom 0.5");
  CHECK(u == cap / 2);  // floor(capacity x (1 - 0.5)); A100 80 GB: an even byte count
  CHECK(usable("--memory-headroom 0").first == cap);
  expect_rejected(kBase + "--tp 8 --pp 16 --memory-headroom 1.5", "--memory-headroom");
  expect_rejected(kBase + "--tp 8 --pp 16 --memory-headroom 1", "--memory-headroom");
  expect_rejected(kBase + "--tp 8 --pp 16 --memory-headroom nan", "--memory-headroom");
  // A plan file's cluster too: the one flag --plan does not ignore.
  auto path = temp_file("headroom_plan.json", "");
  REQUIRE(run_loom(kBase + "--tp 8 --pp 16 -o " + path).code == 0);
  LoomRun r = run_loom("predict --json --memory-headroom 0.5 --plan " + path);
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["usable_bytes"].get<int64_t>() == cap / 2);
}

TEST_CASE("plan -o with no configuration that fits writes nothing and exits 2", "[cli-flags]") {
  const auto path = (std::filesystem::temp_directory_path() / ("loom_nofit_" + std::to_string(::getpid()) + ".json")).string();
  std::filesystem::remove(path);
  LoomRun r = run_loom("plan --model gpt3-175b --cluster h100-sxm --gpus 1 --global-batch 1 -o " + path);
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find("--out: no configuration fits") != std::string::npos);
  CHECK(r.out.find("no configuration fits") != std::string::npos);  // the rejections are still reported
  CHECK(!std::filesystem::exists(path));
  // Without -o, "nothing fits" is an answer: exit 0.
  CHECK(run_loom("plan --model gpt3-175b --cluster h100-sxm --gpus 1 --global-batch 1").code == 0);
}

TEST_CASE("plan whose pins break a rule for every candidate: one line with the rule, exit 2", "[cli-flags]") {
  LoomRun tp = run_loom("plan --model llama3-8b --cluster dgx-h100 --gpus 24 --global-batch 24 --tp 3");
  CHECK(tp.code == 2);
  CHECK(tp.out.empty());
  CHECK(tp.err == "loom: plan: no configuration is valid under these pins and this job: every candidate breaks a rule: "
                  "tp does not divide heads (160128)\n");
  LoomRun batch = run_loom("plan --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 1 --tp 1 --pp 1");
  CHECK(batch.code == 2);
  CHECK(batch.err == "loom: plan: no configuration is valid under these pins and this job: every candidate breaks a "
                     "rule: dp x micro-batch does not divide global batch (120)\n");
}

TEST_CASE("the plan table's tokens/s and MFU are at the step time it ranked by", "[cli-flags]") {
  // --refine re-ranks the best three by the simulated step (here about 0.1% longer than the
  // analytical one): their rows must show throughput at that time, not at the analytical one.
  const std::string cmd = "plan --model gpt2-1.5b --cluster dgx-h100 --gpus 16 --global-batch 256 --seq 1024 --top 3 --refine 3";
  const double tokens_per_step = 256.0 * 1024;
  LoomRun j = run_loom(cmd + " --json");
  LoomRun t = run_loom(cmd);
  INFO("stdout: " << t.out << "\nstderr: " << t.err);
  REQUIRE(j.code == 0);
  REQUIRE(t.code == 0);
  const auto top = nlohmann::json::parse(j.out)["top"];
  REQUIRE(top.size() == 3);
  std::istringstream in(t.out);
  std::string line;
  size_t rows = 0;
  while (std::getline(in, line) && rows < top.size()) {
    std::istringstream f(line);
    std::vector<std::string> w;
    for (std::string x; f >> x;) w.push_back(x);
    if (w.size() < 17 || w[0] != std::to_string(rows + 1)) continue;
    const auto& e = top[rows++];
    REQUIRE(e["simulated_step_time_s"].is_number());
    const double sim_s = e["simulated_step_time_s"].get<double>(), step_s = e["step_time_s"].get<double>();
    INFO(line);
    // tokens/s is printed to the token, MFU to 0.1 point.
    CHECK(std::abs(std::stod(w[14]) - tokens_per_step / sim_s) <= 0.5);
    CHECK(std::abs(std::stod(w[16]) - 100 * e["mfu"].get<double>() * step_s / sim_s) <= 0.05 + 1e-9);
  }
  CHECK(rows == 3);
}

TEST_CASE("export refuses a plan that does not fit unless --force, and says so either way", "[cli-flags]") {
  auto path = temp_file("nofit_plan.json", "");
  REQUIRE(run_loom("predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1024 --tp 1 --pp 1 -o " + path)
              .code == 0);
  expect_rejected("export " + path + " --to megatron", "does not fit");
  LoomRun f = run_loom("export " + path + " --to megatron --force");
  CHECK(f.code == 0);
  CHECK(!f.out.empty());
  CHECK(f.err.find("does not fit") != std::string::npos);
  // A plan that fits exports without a word about memory.
  auto ok = temp_file("fit_plan.json", "");
  REQUIRE(run_loom(kBase + "--tp 8 --pp 16 --zero 1 -o " + ok).code == 0);
  LoomRun g = run_loom("export " + ok + " --to megatron");
  CHECK(g.code == 0);
  CHECK(g.err.find("does not fit") == std::string::npos);
}

TEST_CASE("loom never links the CUDA runtime: the backend is a module loaded on demand", "[cli-flags]") {
  const auto readelf = std::filesystem::temp_directory_path() / ("loom_needed_" + std::to_string(::getpid()));
  REQUIRE(std::system(("readelf -d " + std::string(LOOM_BIN) + " > " + readelf.string()).c_str()) == 0);
  const std::string needed = slurp(readelf.string());
  CHECK(needed.find("NEEDED") != std::string::npos);
  CHECK(needed.find("libcudart") == std::string::npos);
  CHECK(needed.find("libcublas") == std::string::npos);
  // Where the module is not beside the binary (a build without nvcc), both commands that need it
  // say so in one line and exit 2, after reading nothing from a GPU.
  const auto module = std::filesystem::path(LOOM_BIN).parent_path() / "libloom_cuda.so";
  if (std::filesystem::exists(module)) return;
  auto plan = temp_file("cuda_plan.json", "");
  // A plan the CUDA backend's rules accept (no dropout, head size 64), so that what refuses it is
  // the missing module.
  REQUIRE(run_loom("predict --model tinyllama-1.1b --cluster h100-sxm --gpus 1 --global-batch 8 --tp 1 --pp 1 -o " + plan).code == 0);
  expect_rejected("execute " + plan + " --device cuda", "--device: the CUDA backend is not available: ");
  expect_rejected("calibrate --quick", "calibrate: the CUDA backend is not available: ");
  expect_rejected("execute " + plan + " --device tpu", "--device: must be cpu or cuda (got tpu)");
}

TEST_CASE("loom --version prints the project version and the commit it was built from", "[cli-version]") {
  LoomRun r = run_loom("--version");
  INFO("stdout: " << r.out << "stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());
  // The version is the one project() declares in CMakeLists.txt.
  const std::string cmake = slurp(std::string(LOOM_SOURCE_DIR) + "/CMakeLists.txt");
  std::smatch m;
  REQUIRE(std::regex_search(cmake, m, std::regex(R"(project\(loom VERSION ([0-9.]+))")));
  const std::string version = m[1];
  // The commit: 12 hex digits, "-dirty" when tracked files differ from it, or "unknown" outside
  // a git checkout. One line on stdout.
  CHECK(std::regex_match(r.out, std::regex("loom " + std::regex_replace(version, std::regex(R"(\.)"), R"(\.)") +
                                           R"( \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)\n)")));
}

TEST_CASE("JSON documents carry schema_version 1; readers refuse another version in one line", "[cli-schema]") {
  LoomRun p = run_loom(kBase + "--tp 8 --pp 16 --json");
  REQUIRE(p.code == 0);
  CHECK(nlohmann::json::parse(p.out)["schema_version"] == 1);
  const std::string path = temp_file("schema_plan.json", "");
  REQUIRE(run_loom(kBase + "--tp 8 --pp 16 -o " + path).code == 0);
  auto j = nlohmann::json::parse(slurp(path));
  CHECK(j["schema_version"] == 1);
  CHECK(j["prediction"]["schema_version"] == 1);
  // A plan written before the field existed is read as version 1.
  auto old = j;
  old.erase("schema_version");
  old["prediction"].erase("schema_version");
  CHECK(run_loom("predict --plan " + temp_file("schema_old.json", old.dump())).code == 0);
  auto newer = j;
  newer["schema_version"] = 2;
  expect_rejected("predict --plan " + temp_file("schema_v2.json", newer.dump()),
                  "schema_v2.json: /schema_version: unknown schema version: this loom reads version 1 (got 2)");
  newer = j;
  newer["prediction"]["schema_version"] = "1";
  expect_rejected("predict --plan " + temp_file("schema_str.json", newer.dump()),
                  "schema_str.json: /prediction/schema_version: unknown schema version: this loom reads version 1 (got \"1\")");
}

TEST_CASE("plan rows name an uneven stage split after the row, runs of equal stages folded", "[cli-plan-extras]") {
  LoomRun r = run_loom("plan --model gpt2-350m --cluster dgx-a100 --gpus 4 --global-batch 16 --pp 4 --tp 1 "
                       "--stage-layers 7,7,7,3 --top 1");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("  stages 7x3,3\n") != std::string::npos);
  // A dense, even plan's rows end at the memory column, as before.
  LoomRun even = run_loom("plan --model gpt2-350m --cluster dgx-a100 --gpus 4 --global-batch 16 --pp 1 --tp 1 --top 1");
  REQUIRE(even.code == 0);
  CHECK(even.out.find("  stages ") == std::string::npos);
  CHECK(even.out.find("  ep ") == std::string::npos);
}

TEST_CASE("an unknown command is named, with the commands there are") {
  LoomRun r = run_loom("frobnicate --tp 2");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: frobnicate: unknown command (commands: predict, plan, export, import, simulate, execute, compare, "
                 "validate, calibrate)\n");
}

TEST_CASE("another of loom's documents given as a plan says what it is") {
  const LoomRun predicted = run_loom(kBase + "--tp 8 --pp 16 --json");
  REQUIRE(predicted.code == 0);
  const std::string result = temp_file("result.json", predicted.out);
  LoomRun r = run_loom("predict --plan " + result);
  CHECK(r.code == 2);
  CHECK(r.err == "loom: " + result + ": is a predicted step result (predict --json, simulate --json or execute --report), "
                 "not a plan (predict -o or plan -o writes one)\n");
  LoomRun t = run_loom("simulate " + temp_file("trace.json", R"({"traceEvents": []})"));
  CHECK(t.code == 2);
  CHECK(t.err.find("is a Chrome trace (simulate or execute --trace), not a plan") != std::string::npos);
}
