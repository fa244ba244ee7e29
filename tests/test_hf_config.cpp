// Hugging Face config.json as a model: parameter counts equal the published ones (biases and
// tied embeddings included), and fields loom cannot price refuse the file.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "run_loom.hpp"
#include "sim/model_math.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

std::string hf(const std::string& file) { return std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/" + file; }

ModelSpec load_hf(const std::string& file) {
  std::vector<std::string> ignored;
  auto m = load_model(hf(file), "test", &ignored);
  INFO(file << ": " << (m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  return *m;
}

std::string refusal(const std::string& file) {
  auto m = load_model(hf(file), "test", nullptr);
  REQUIRE_FALSE(m.ok());
  return m.error().message;
}

}  // namespace

// Published counts: the model cards and safetensors index totals of each checkpoint.
TEST_CASE("Hugging Face configs give the published parameter counts") {
  CHECK(total_params(load_hf("gpt2_config.json")) == 124'439'808);
  CHECK(total_params(load_hf("llama2_7b_config.json")) == 6'738'415'616);
  CHECK(total_params(load_hf("llama3_8b_config.json")) == 8'030'261'248);
  CHECK(total_params(load_hf("mistral_7b_config.json")) == 7'241'732'096);
  auto l32 = load_hf("llama3.2_1b_config.json");
  CHECK(l32.tied_embeddings);
  CHECK(total_params(l32) == 1'235'814'400);
  auto q2 = load_hf("qwen2_7b_config.json");
  CHECK(q2.qkv_bias);
  CHECK_FALSE(q2.tied_embeddings);
  CHECK(q2.sliding_window == 0);  // use_sliding_window false
  CHECK(total_params(q2) == 7'615'616'512);
  auto q25 = load_hf("qwen2.5_0.5b_config.json");
  CHECK(q25.qkv_bias);
  CHECK(q25.tied_embeddings);
  CHECK(total_params(q25) == 494'032'768);
  // Llama 3.1 8B: Llama 3 8B's shapes with RoPE scaling to 128k positions (rope_scaling changes
  // positions, not parameters): the model card's 8.03B, the safetensors total 8,030,261,248.
  CHECK(total_params(load_hf("llama3.1_8b_config.json")) == 8'030'261'248);
  // Qwen2.5 7B: Qwen2 7B's shapes and q/k/v biases (model card: 7.61B).
  auto q257 = load_hf("qwen2.5_7b_config.json");
  CHECK(q257.qkv_bias);
  CHECK(total_params(q257) == 7'615'616'512);
}

TEST_CASE("Hugging Face fields that loom prices are read") {
  auto l3 = load_hf("llama3_8b_config.json");
  CHECK(l3.rope_theta == 500000.0);
  CHECK(l3.seq_len_is_limit);
  CHECK_FALSE(l3.qkv_bias);
  CHECK(load_hf("mistral_7b_config.json").sliding_window == 4096);
  CHECK(load_hf("qwen2_7b_config.json").norm_eps == 1e-6);
}

TEST_CASE("ignored Hugging Face keys are listed with the reason") {
  std::vector<std::string> ignored;
  REQUIRE(load_model(hf("llama3.2_1b_config.json"), "test", &ignored).ok());
  bool rope_scaling = false;
  for (auto& k : ignored)
    if (k.rfind("rope_scaling (", 0) == 0 && k.find("not parameters or FLOPs") != std::string::npos) rope_scaling = true;
  CHECK(rope_scaling);
}

TEST_CASE("a mixture-of-experts config labelled mistral is refused, not planned dense") {
  CHECK(refusal("mixtral_8x7b_as_mistral.json").find("/num_local_experts: mixture-of-experts layers are not "
                                                     "modelled yet (got 8)") != std::string::npos);
}

TEST_CASE("a head_dim other than hidden_size / heads is refused") {
  auto j = nlohmann::json::parse(slurp(hf("llama3_8b_config.json")));
  j["head_dim"] = 256;
  auto path = temp_file("hf_head_dim.json", j.dump());
  auto m = load_model(path, "test", nullptr);
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().message.find("/head_dim: loom assumes head_dim = hidden_size / num_attention_heads = 128 (got 256)") !=
        std::string::npos);
}

TEST_CASE("q/k/v/o biases on a llama config are refused; Qwen2's q/k/v biases are counted") {
  auto j = nlohmann::json::parse(slurp(hf("llama3_8b_config.json")));
  j["attention_bias"] = true;
  auto m = load_model(temp_file("hf_attn_bias.json", j.dump()), "test", nullptr);
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().message.find("/attention_bias:") != std::string::npos);
}

TEST_CASE("a Hugging Face config needs --seq; a sequence longer than a sliding window is refused") {
  const std::string tail = " --cluster dgx-a100 --gpus 8 --global-batch 8 --tp 1 --pp 1 --json";
  LoomRun r = run_loom("predict --model " + hf("qwen2_7b_config.json") + tail);
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --seq: is required for a Hugging Face config (max_position_embeddings 131072") == 0);
  LoomRun ok = run_loom("predict --model " + hf("qwen2_7b_config.json") + tail + " --seq 4096");
  CHECK(ok.code == 0);
  CHECK(nlohmann::json::parse(ok.out)["params"] == 7'615'616'512);
  LoomRun w = run_loom("predict --model " + hf("mistral_7b_config.json") + tail + " --seq 8192");
  CHECK(w.code == 2);
  CHECK(w.err.find("loom: --seq: must be <= the model's sliding_window 4096") == 0);
  // GPT-2 learns n_positions positions and trained at that length: it is the default.
  CHECK(run_loom("predict --model " + hf("gpt2_config.json") + tail).code == 0);
}
