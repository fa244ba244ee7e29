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

TEST_CASE("a mixture-of-experts config labelled mistral is read as MoE, not planned dense") {
  const ModelSpec m = load_hf("mixtral_8x7b_as_mistral.json");
  CHECK(m.experts == 8);
  CHECK(m.experts_per_token == 2);
  CHECK(m.expert_ffn_hidden == 14336);
}

TEST_CASE("a head_dim other than hidden_size / heads sets the head size") {
  auto j = nlohmann::json::parse(slurp(hf("llama3_8b_config.json")));
  j["head_dim"] = 256;  // q and o become 32 x 256 = 8192 wide, k and v 8 x 256 = 2048
  auto m = load_model(temp_file("hf_head_dim.json", j.dump()), "test", nullptr);
  REQUIRE(m.ok());
  CHECK(m->head_size == 256);
  CHECK(m->q_dim() == 8192);
  CHECK(m->kv_dim() == 2048);
  // Llama 3 8B's 8,030,261,248 plus, over 32 layers, q and o growing by 2 x 4096 x 4096 and
  // k and v by 2 x 4096 x 1024.
  CHECK(total_params(*m) == 8'030'261'248 + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024));
}

TEST_CASE("a rule a Hugging Face config breaks names the config's own key") {
  auto j = nlohmann::json::parse(slurp(hf("llama3_8b_config.json")));
  j["num_key_value_heads"] = 5;
  const std::string path = temp_file("hf_kv5.json", j.dump());
  auto m = load_model(path, "test", nullptr);
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().message == path + ": /num_key_value_heads: must divide heads (32 % 5 != 0)");
  // GPT2Config's keys are n_*.
  auto g = nlohmann::json::parse(slurp(hf("gpt2_config.json")));
  g["n_embd"] = 770;
  const std::string gpath = temp_file("hf_gpt2_770.json", g.dump());
  auto gm = load_model(gpath, "test", nullptr);
  REQUIRE_FALSE(gm.ok());
  CHECK(gm.error().message.rfind(gpath + ": /n_head: must divide hidden", 0) == 0);
}

// Qwen3 (model cards: 0.6B with 0.44B non-embedding; 8.2B with 6.95B non-embedding): explicit
// head_dim 128 (for 0.6B not hidden / heads = 64), q_norm and k_norm of head_dim each, no biases.
// Gemma 2 (2.61B and 9.24B, the safetensors totals 2,614,341,888 and 9,241,705,984): head_dim
// 256, four RMSNorms a layer, GeGLU, tied embeddings.
TEST_CASE("Qwen3 and Gemma 2 configs give the published parameter counts") {
  auto q06 = load_hf("qwen3_0.6b_config.json");
  CHECK(q06.qk_norm);
  CHECK_FALSE(q06.qkv_bias);
  CHECK(q06.head_dim() == 128);
  CHECK(q06.tied_embeddings);
  CHECK(total_params(q06) == 596'049'920);
  CHECK(total_params(q06) - embedding_params(q06) == 440'467'456);  // 0.44B
  auto q8 = load_hf("qwen3_8b_config.json");
  CHECK(total_params(q8) == 8'190'735'360);
  CHECK(total_params(q8) - embedding_params(q8) - output_params(q8) == 6'946'075'648);  // 6.95B
  auto g2 = load_hf("gemma2_2b_config.json");
  CHECK(g2.post_norms);
  CHECK(g2.gated_gelu);
  CHECK(g2.tied_embeddings);
  CHECK(g2.q_dim() == 2048);
  CHECK(total_params(g2) == 2'614'341'888);
  CHECK(total_params(load_hf("gemma2_9b_config.json")) == 9'241'705'984);
}

TEST_CASE("Gemma 2's soft-capping is listed as ignored with the reason, its window is kept") {
  std::vector<std::string> ignored;
  auto m = load_model(hf("gemma2_9b_config.json"), "test", &ignored);
  REQUIRE(m.ok());
  CHECK(m->sliding_window == 4096);
  int listed = 0;
  for (auto& k : ignored)
    if (k.rfind("attn_logit_softcapping", 0) == 0 || k.rfind("final_logit_softcapping", 0) == 0 ||
        k.rfind("sliding_window_size (same as sliding_window)", 0) == 0)
      ++listed;
  CHECK(listed == 3);
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
