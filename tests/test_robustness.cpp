// Inputs that used to wrap around, hang, crash or mean something other than what they read:
// size bounds and the 128-bit checks of what the cost model multiplies, divisors by factoring,
// duplicate JSON keys, oversized files, numeric flags, and the one-line internal error.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "run_loom.hpp"
#include "sim/json_reader.hpp"
#include "sim/model_math.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

nlohmann::json zoo_model(const std::string& name) {
  for (const auto& e : model_zoo())
    if (e.name == name) return nlohmann::json::parse(e.json);
  return {};
}

std::string error_of(const nlohmann::json& model) {
  auto m = model_from_json(model, "m.json");
  return m ? std::string() : m.error().message;
}

const FieldNamer as_is = [](const std::string& f) { return f; };

size_t lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace

TEST_CASE("sizes: every model field has a stated bound", "[robustness]") {
  const std::pair<const char*, int64_t> bounds[] = {
      {"layers", limits::kLayers}, {"hidden", limits::kHidden},      {"heads", limits::kHeads},
      {"kv_heads", limits::kHeads}, {"ffn_hidden", limits::kFfnHidden}, {"vocab", limits::kVocab},
      {"seq_len", limits::kSeq}};
  for (const auto& [field, bound] : bounds)
    for (int64_t v : {bound + 1, int64_t{1'000'000'000'000}, int64_t{1} << 62, INT64_MAX}) {
      auto j = zoo_model("gpt2-124m");
      j[field] = v;
      INFO(field << " = " << v);
      CHECK(error_of(j) ==
            "m.json: /" + std::string(field) + ": must be <= " + std::to_string(bound) + " (got " + std::to_string(v) + ")");
    }
  // The bound itself is accepted where the other rules allow it.
  auto j = zoo_model("gpt2-124m");
  j["layers"] = limits::kLayers;
  CHECK(error_of(j).empty());
  // A float beyond int64 is refused as too large, never rounded into range.
  j["layers"] = 1e20;
  CHECK(error_of(j) == "m.json: /layers: must be <= 1048576 (got 1e+20)");
  j["layers"] = nlohmann::json::parse("18446744073709551615");
  CHECK(error_of(j) == "m.json: /layers: must be <= 1048576 (got 18446744073709551615)");
}

TEST_CASE("sizes: a Hugging Face config is bounded under its own key names", "[robustness]") {
  nlohmann::json hf = {{"model_type", "llama"}, {"num_hidden_layers", 32}, {"hidden_size", 4096},
                       {"num_attention_heads", 32}, {"intermediate_size", 11008}, {"vocab_size", int64_t{1} << 62},
                       {"max_position_embeddings", 4096}};
  std::vector<std::string> ignored;
  auto m = model_from_json(hf, "config.json", &ignored);
  REQUIRE(!m);
  CHECK(m.error().message == "config.json: /vocab_size: must be <= 67108864 (got 4611686018427387904)");
}

// Property: over a grid of sizes up to every bound, a model is accepted exactly when its
// parameter count (formed here in 128 bits) is within kParams, and then total_params (int64)
// equals it: no accepted model wraps around.
TEST_CASE("sizes: the parameter count is exact or refused", "[robustness]") {
  int accepted = 0, refused = 0;
  for (int64_t layers : {int64_t{1}, int64_t{96}, int64_t{1} << 14, limits::kLayers})
    for (int64_t hidden : {int64_t{64}, int64_t{12288}, int64_t{1} << 17, limits::kHidden})
      for (int64_t vocab : {int64_t{1}, int64_t{50257}, limits::kVocab})
        for (const char* family : {"gpt", "llama"}) {
          auto j = zoo_model("gpt2-124m");
          j["family"] = family;
          j["layers"] = layers;
          j["hidden"] = hidden;
          j["heads"] = 64;
          j["kv_heads"] = 64;
          j["ffn_hidden"] = 4 * hidden;
          j["vocab"] = vocab;
          j["tied_embeddings"] = false;
          ModelSpec m;
          m.family = family == std::string("gpt") ? Family::gpt : Family::llama;
          m.layers = layers, m.hidden = hidden, m.heads = m.kv_heads = 64, m.ffn_hidden = 4 * hidden;
          m.vocab = vocab, m.seq_len = j["seq_len"].get<int64_t>(), m.tied_embeddings = false;
          const __int128 exact = __int128(layers) * layer_params(m).total() + embedding_params(m) +
                                 final_norm_params(m) + output_params(m);
          const std::string e = error_of(j);
          INFO(family << " layers " << layers << " hidden " << hidden << " vocab " << vocab << ": " << e);
          if (exact <= limits::kParams) {
            CHECK(e.empty());
            CHECK(__int128(total_params(m)) == exact);
            ++accepted;
          } else {
            CHECK(e.find("m.json: /layers: the parameter count must be <= 1125899906842624") == 0);
            ++refused;
          }
        }
  CHECK(accepted > 0);
  CHECK(refused > 0);
}

TEST_CASE("sizes: tokens, activations and FLOPs of a step are representable", "[robustness]") {
  auto gpt3 = load_model("gpt3-175b", "--model", nullptr);
  REQUIRE(gpt3);
  TrainSpec t;
  t.global_batch = 1536, t.seq = 2048, t.dp_bucket_bytes = 80'000'000;
  CHECK(check_train_sizes(*gpt3, t, as_is));
  t.global_batch = limits::kGlobalBatch, t.seq = limits::kSeq;
  auto st = check_train_sizes(*gpt3, t, as_is);
  REQUIRE(!st);
  CHECK(st.error().message == "global_batch: tokens per step (global_batch x seq) must be <= 1099511627776 (got "
                              "73786976294838206464)");
  t.global_batch = int64_t{1} << 20, t.seq = int64_t{1} << 20;  // 2^40 tokens: the activations overflow
  st = check_train_sizes(*gpt3, t, as_is);
  REQUIRE(!st);
  CHECK(st.error().message.find("seq: the activations of one step must be <= 72057594037927936 bytes") == 0);
  t.global_batch = int64_t{1} << 41, t.seq = 1;
  st = check_train_sizes(*gpt3, t, as_is);
  REQUIRE(!st);
  CHECK(st.error().message == "global_batch: must be <= 1099511627776 (got 2199023255552)");
}

TEST_CASE("sizes: products of parallel sizes are checked before they are formed", "[robustness]") {
  auto m = load_model("gpt2-124m", "--model", nullptr);
  REQUIRE(m);
  ClusterSpec c;
  c.gpus = limits::kGpus, c.nodes = 1, c.gpus_per_node = limits::kGpus, c.max_nodes = 1;
  TrainSpec t;
  t.global_batch = int64_t{1} << 30, t.seq = 1, t.dp_bucket_bytes = 1;
  ParallelConfig p;
  p.dp = limits::kGpus;
  p.micro_batch = limits::kGlobalBatch;  // dp x micro_batch = 2^64: wrapped to 0, a division by zero
  auto st = validate_config(*m, c, t, p, as_is);
  REQUIRE(!st);
  CHECK(st.error().message ==
        "global_batch: must be a multiple of dp x micro_batch (1073741824 % 18446744073709551616 != 0)");
  p.dp = int64_t{1} << 32, p.tp = int64_t{1} << 32;  // dp x tp = 2^64 wraps around to 0
  st = validate_config(*m, c, t, p, as_is);
  REQUIRE(!st);
  CHECK(st.error().message == "dp: must be <= 16777216 (got 4294967296)");
}

TEST_CASE("sizes: cluster sizes have stated bounds", "[robustness]") {
  auto doc = nlohmann::json::parse(std::string(cluster_zoo().front().json));
  doc["runtime_memory"]["nccl_bytes_per_communicator"] = int64_t{1} << 62;
  auto c = cluster_from_json(doc, "c.json");
  REQUIRE(!c);
  CHECK(c.error().message ==
        "c.json: /runtime_memory/nccl_bytes_per_communicator: must be <= 1125899906842624 (got 4611686018427387904)");
  doc = nlohmann::json::parse(std::string(cluster_zoo().front().json));
  doc["gpu"]["memory_bytes"] = int64_t{1} << 62;
  c = cluster_from_json(doc, "c.json");
  REQUIRE(!c);
  CHECK(c.error().message == "c.json: /gpu/memory_bytes: must be <= 1125899906842624 (got 4611686018427387904)");
}

TEST_CASE("divisors: by factoring, in sqrt(n) steps", "[robustness]") {
  CHECK(divisors(0).empty());
  CHECK(divisors(-4).empty());
  CHECK(divisors(1) == std::vector<int64_t>{1});
  CHECK(divisors(12) == std::vector<int64_t>{1, 2, 3, 4, 6, 12});
  for (int64_t n = 1; n <= 3000; ++n) {  // property: the same list as counting to n
    std::vector<int64_t> counted;
    for (int64_t d = 1; d <= n; ++d)
      if (n % d == 0) counted.push_back(d);
    REQUIRE(divisors(n) == counted);
  }
  const auto start = std::chrono::steady_clock::now();
  const auto pow2 = divisors(int64_t{1} << 62);
  REQUIRE(pow2.size() == 63);
  CHECK(pow2.back() == int64_t{1} << 62);
  CHECK(divisors(limits::kGlobalBatch).size() == 41);
  CHECK(divisors(1099511627689) == std::vector<int64_t>{1, 1099511627689});  // the largest prime below 2^40
  const auto d = divisors(int64_t{2} * 3 * 5 * 7 * 11 * 13 * 17 * 19 * 23 * 29 * 31 * 37 * 41 * 43 * 47);
  CHECK(d.size() == (size_t{1} << 15));
  CHECK(std::is_sorted(d.begin(), d.end()));
  // Counting to 2^62 would never end; factoring takes at most 2^20 steps within the bound.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
}

TEST_CASE("json: a key given twice is refused with its pointer", "[robustness]") {
  auto j = parse_json_text(R"({"a": {"b": 1, "b": 2}})", "f.json");
  REQUIRE(!j);
  CHECK(j.error().message == "f.json: /a/b: duplicate key (each key may appear once)");
  j = parse_json_text(R"({"x": [{"k": 1}, [0, {"k/~": 1, "k/~": 2}]]})", "f.json");
  REQUIRE(!j);
  CHECK(j.error().message == "f.json: /x/1/1/k~1~0: duplicate key (each key may appear once)");
  // The same key in sibling objects is fine.
  CHECK(parse_json_text(R"([{"k": 1}, {"k": 2}, {"k": {"k": 3}}])", "f.json"));
  // So is every model in the zoo.
  for (const auto& e : model_zoo()) CHECK(parse_json_text(std::string(e.json), std::string(e.name)));
  // Nesting beyond kMaxJsonDepth is refused (and never built in memory).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  j = parse_json_text(deep, "f.json");
  REQUIRE(!j);
  CHECK(j.error().message.find("nested deeper than 64 levels") != std::string::npos);
}

TEST_CASE("json: a duplicate key in a model file is one line, exit 2", "[robustness][cli]") {
  const std::string path = temp_file("dup_model.json", R"({"name": "a", "name": "b"})");
  LoomRun r = run_loom("predict --model " + path + " --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 1 --pp 1");
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err == "loom: " + path + ": /name: duplicate key (each key may appear once)\n");
}

TEST_CASE("json: a file over 16 MiB is refused before it is read", "[robustness][cli]") {
  const std::string path = temp_file("huge_model.json", "");
  std::filesystem::resize_file(path, 200'000'000);  // sparse: nothing is written
  const auto start = std::chrono::steady_clock::now();
  auto j = read_json_file(path);
  const auto took = std::chrono::steady_clock::now() - start;
  REQUIRE(!j);
  CHECK(j.error().message == path + ": file is larger than loom reads (16 MiB; got 200000000 bytes)");
  CHECK(took < std::chrono::milliseconds(100));  // reading 200 MB would take far longer
  LoomRun r = run_loom("predict --model " + path + " --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 1 --pp 1");
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find("file is larger than loom reads") != std::string::npos);
  std::filesystem::remove(path);
}

TEST_CASE("flags: numbers mean what they read", "[robustness][cli]") {
  const std::string base = "predict --model gpt2-124m --cluster dgx-a100 --tp 1 --pp 1 ";
  // "010" is ten (CLI11's strtoll base 0 read it as octal eight, which ran as 8 GPUs).
  LoomRun r = run_loom(base + "--gpus 010 --global-batch 16");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --gpus: more than one node must be whole nodes: 10 is not a multiple of 8 GPUs per node\n");
  r = run_loom(base + "--gpus 08 --global-batch 016");  // 16 sequences on 8 GPUs
  CHECK(r.code == 0);
  CHECK(r.out.find("global batch 16 ") != std::string::npos);
  const std::pair<const char*, const char*> refused[] = {
      {"--gpus 0x8 --global-batch 8", "loom: --gpus: must be an integer in [1, 16777216] in decimal digits (got 0x8)"},
      {"--gpus 8 --global-batch 99999999999999999999", "loom: --global-batch: must be <= 1099511627776 (got 99999999999999999999)"},
      {"--gpus 8 --global-batch 9223372036854775807", "loom: --global-batch: must be <= 1099511627776"},
      {"--gpus 8 --global-batch 8 --grad-compression nan", "loom: --grad-compression: must be a finite decimal number (got nan)"},
      {"--gpus 8 --global-batch 8 --grad-compression inf", "loom: --grad-compression: must be a finite decimal number (got inf)"},
      {"--gpus 8 --global-batch 8 --grad-compression 0x1p3", "loom: --grad-compression: must be a finite decimal number"},
      {"--gpus 8 --global-batch 8 --grad-compression 0.5", "loom: --grad-compression: must be >= 1 (got 0.5)"},
      {"--gpus 8 --global-batch 8 --memory-headroom nan", "loom: --memory-headroom: must be a finite decimal number (got nan)"},
      {"--gpus 8 --global-batch 8 --seq 1e3", "loom: --seq: must be an integer"},
      {"--gpus 8 --global-batch 8 --zero 010", "loom: --zero: must be 0, 1, 2 or 3"},  // ten, not octal eight
      {"--gpus 8 --global-batch 8 --zero 4294967296", "loom: --zero: must be <= 2147483647"},  // never cast to 0
  };
  for (const auto& [args, line] : refused) {
    INFO(args);
    r = run_loom(base + args);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find(line) == 0);
  }
}

TEST_CASE("plan: a global batch past its bound is refused before the search", "[robustness][cli]") {
  const auto start = std::chrono::steady_clock::now();
  // Counting divisors to 2^63 - 1 never ended; the bound refuses it at once.
  LoomRun r = run_loom("plan --model gpt2-124m --cluster dgx-a100 --gpus 8 --global-batch 9223372036854775807");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --global-batch: must be <= 1099511627776 (got 9223372036854775807)\n");
  // Within the bounds the search factors the batch: 2^35 sequences would take ~3e10 steps counted.
  r = run_loom("plan --model gpt2-124m --cluster dgx-a100 --gpus 8 --global-batch 34359738368 --seq 1 --refine 0 "
               "--threads 1 --top 1");
  CHECK(r.code == 0);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  // The step's arithmetic is checked before the search too: one line, exit 2.
  r = run_loom("plan --model gpt3-175b --cluster dgx-a100 --gpus 8 --global-batch 1099511627776");
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --global-batch: tokens per step (global_batch x seq) must be <= 1099511627776") == 0);
}

// A simulation of 65,536 micro-batches on 4 stages (about 1.6 million tasks, under the task
// limit) needs a few hundred MB; under a 100 MB address-space limit its allocation fails. The
// std::bad_alloc used to reach std::terminate (abort, exit 134); main now prints one line and
// exits 3. (The loader needs about 13 MB, so the limit leaves main running.)
TEST_CASE("main: an exception no library caught is one line and exit 3, never an abort", "[robustness][cli]") {
  auto dir = std::filesystem::temp_directory_path() / ("loom_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string plan = (dir / "big_plan.json").string(), err = (dir / "internal_err").string();
  const std::string make = std::string(LOOM_BIN) +
                           " predict --model gpt2-124m --cluster dgx-a100 --gpus 4 --tp 1 --pp 4 --global-batch 65536"
                           " --seq 1024 -o " + plan + " >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  const std::string cmd = "ulimit -v 100000; " + std::string(LOOM_BIN) + " simulate " + plan + " >/dev/null 2>" + err;
  const int status = std::system(("sh -c '" + cmd + "'").c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  const std::string text = slurp(err);
  INFO(text);
  CHECK(code == 3);
  CHECK(lines(text) == 1);
  CHECK(text.find("loom: internal error: ") == 0);
  CHECK(text.find("(this is a bug; please report it)") != std::string::npos);
}
