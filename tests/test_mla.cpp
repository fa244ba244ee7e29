// Multi-head latent attention (sim/mla.hpp): DeepSeek-V2-Lite, DeepSeek-V2 and DeepSeek-V3 from
// their Hugging Face configs with the published parameter counts, the attention's GEMMs, core
// and saved activations against their formulas (exact), loom plan's expert-parallel plans for
// DeepSeek-V2-Lite on 64 H100s with all-to-all bytes and memory equal to the formulas, the
// Megatron-LM round trip, and bad input refused in one line.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

#include "executor/cuda/plan_limits.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/mla.hpp"
#include "sim/model_math.hpp"
#include "sim/moe.hpp"
#include "sim/plan.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

std::string hf(const std::string& file) { return std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/" + file; }

ModelSpec load(const std::string& name_or_path, std::vector<std::string>* ignored = nullptr) {
  std::vector<std::string> unused;
  auto m = load_model(name_or_path, "test", ignored ? ignored : &unused);
  INFO(name_or_path << ": " << (m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  return *m;
}

std::string refusal(const nlohmann::json& j) {
  auto m = model_from_json(j, "m.json");
  REQUIRE_FALSE(m.ok());
  return m.error().message;
}

// Within half the published precision (15.7B published to 0.1B: +- 0.05B).
bool published(int64_t count, double value, double precision) {
  return std::fabs(static_cast<double>(count) - value) <= precision / 2;
}

const Op* find_op(const StageWork& w, const char* name, Pass pass) {
  for (const Op& o : w.ops)
    if (o.pass == pass && std::strcmp(o.name, name) == 0) return &o;
  return nullptr;
}

ClusterSpec h100s(int64_t gpus) {
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

}  // namespace

TEST_CASE("mla: DeepSeek-V2-Lite, V2 and V3 have the published parameter counts", "[mla]") {
  // DeepSeek-V2-Lite (arXiv 2405.04434, Appendix B: 15.7B total, 2.4B activated). Attention per
  // layer (modeling_deepseek.py DeepseekV2Attention, q_lora_rank null): q_proj 2048 x 16 x 192,
  // o_proj 16 x 128 x 2048 and kv_b_proj 512 x 16 x 256 split over tp; kv_a_proj_with_mqa
  // 2048 x 576 and kv_a_layernorm 512 replicated.
  const ModelSpec lite = load(hf("deepseek_v2_lite_config.json"));
  CHECK(lite.is_mla());
  CHECK(lite.q_lora_rank == 0);
  CHECK(lite.kv_lora_rank == 512);
  CHECK(lite.experts == 64);
  CHECK(lite.shared_experts == 2);
  CHECK(lite.dense_layers == 1);
  const LayerParams attn = mla_attention_params(lite);
  CHECK(attn.sharded == 6'291'456 + 2'097'152 + 4'194'304);
  CHECK(attn.replicated == 1'179'648 + 512);
  // 27 layers of attention and two norms; one dense MLP 3 x 2048 x 10944; 26 MoE layers of
  // router 2048 x 64, 64 + 2 experts of 3 x 2048 x 1408; embedding, output layer, final norm.
  const int64_t expert = 3 * 2048 * 1408;
  CHECK(total_params(lite) ==
        27 * (13'763'072 + 4'096) + 67'239'936 + 26 * (131'072 + 66 * expert) + 2 * 209'715'200 + 2'048);
  CHECK(total_params(lite) == 15'706'484'224);
  CHECK(active_params(lite) == 15'706'484'224 - 26 * 58 * int64_t{expert});
  CHECK(active_params(lite) == 2'661'150'208);
  CHECK(published(total_params(lite), 15.7e9, 0.1e9));
  // DeepSeek counts activated parameters without the input embedding, a lookup (DeepSeek-V3's
  // README: "36.6B activated, including 0.9B for the output head"): 2.45B, which the paper
  // truncates to 2.4B.
  const int64_t lite_active = active_params(lite) - embedding_params(lite);
  CHECK(lite_active == 2'451'435'008);
  CHECK(lite_active >= 2.4e9);
  CHECK(lite_active < 2.5e9);

  // DeepSeek-V2 (236B total, 21B activated): q through a 1536 latent.
  const ModelSpec v2 = load(hf("deepseek_v2_config.json"));
  CHECK(v2.q_lora_rank == 1536);
  CHECK(total_params(v2) == 235'741'434'880);
  CHECK(published(total_params(v2), 236e9, 1e9));
  CHECK(active_params(v2) - embedding_params(v2) == 20'851'512'320);
  CHECK(published(active_params(v2) - embedding_params(v2), 21e9, 1e9));

  // DeepSeek-V3 (arXiv 2412.19437: 671B total, 37B activated; its README: 36.6B). The 685B of
  // the Hugging Face checkpoint add the multi-token-prediction module, which
  // DeepseekV3ForCausalLM does not build and loom does not price: listed as ignored.
  std::vector<std::string> ignored;
  const ModelSpec v3 = load(hf("deepseek_v3_config.json"), &ignored);
  CHECK(v3.dense_layers == 3);
  CHECK(total_params(v3) == 671'026'404'352);
  CHECK(published(total_params(v3), 671e9, 1e9));
  CHECK(active_params(v3) - embedding_params(v3) == 36'625'603'584);
  CHECK(published(active_params(v3) - embedding_params(v3), 36.6e9, 0.1e9));
  CHECK(published(active_params(v3) - embedding_params(v3), 37e9, 1e9));
  bool mtp = false;
  for (const auto& k : ignored) mtp = mtp || k.rfind("num_nextn_predict_layers (the multi-token-prediction", 0) == 0;
  CHECK(mtp);

  // The zoo's entries are the same models.
  CHECK(total_params(load("deepseek-v2-lite")) == total_params(lite));
  CHECK(total_params(load("deepseek-v3")) == total_params(v3));
}

TEST_CASE("mla: the attention's GEMMs, core and FLOPs have their real shapes", "[mla]") {
  const ModelSpec m = load(hf("deepseek_v2_lite_config.json"));
  // Forward FLOPs of one layer, b = 1, s = 4096: q 2 T h H 192, kv down 2 T h 576, kv up
  // 2 T 512 H 256, o 2 T H 128 h, SwiGLU MLP 6 T h f; core (full s x s) 2 T s H (192 + 128).
  const FlopCount T = 4096;
  const LayerFlops f = layer_forward_flops(m, 1, 4096, AttentionFlops::full);
  CHECK(f.gemm == 2 * T * (2048 * 16 * 192 + 2048 * 576 + 512 * 16 * 256 + 16 * 128 * 2048) + 6 * T * 2048 * 10944);
  CHECK(f.attention == 2 * T * 4096 * 16 * (192 + 128));
  CHECK(layer_forward_flops(m, 1, 4096, AttentionFlops::causal).attention == f.attention / 2);

  // One tp = 2 rank (SP, as Megatron needs with experts): heads split, down-projection whole.
  const ClusterSpec c = h100s(16);
  TrainSpec t;
  t.global_batch = 16, t.seq = 4096, t.dp_bucket_bytes = 40'000'000 * 2;  // Megatron-core's 40M-element bucket
  ParallelConfig p;
  p.tp = 2, p.sp = true, p.dp = 8, p.ep = 8, p.zero = 1;
  REQUIRE(validate_config(m, c, t, p, [](const std::string& x) { return x; }).ok());
  const StageWork w = build_stage_work(m, c, t, p, 0);
  auto check_gemm = [&](const char* name, double M, double N, double K) {
    const Op* o = find_op(w, name, Pass::forward);
    INFO(name);
    REQUIRE(o != nullptr);
    CHECK(o->m == M);
    CHECK(o->n == N);
    CHECK(o->k == K);
    CHECK(o->count == 27);
    CHECK(o->flops == 2 * FlopCount(M) * FlopCount(N) * FlopCount(K));
    const Op* b = find_op(w, name, Pass::backward);
    REQUIRE(b != nullptr);
    CHECK(b->flops == 2 * o->flops);
  };
  check_gemm("mla q", 4096, 16 * 192 / 2, 2048);
  check_gemm("mla kv down", 4096, 512 + 64, 2048);
  check_gemm("mla kv up", 4096, 16 * 256 / 2, 512);
  check_gemm("attention projection", 4096, 2048, 16 * 128 / 2);
  CHECK(find_op(w, "qkv", Pass::forward) == nullptr);
  // Fused core: 8 heads a rank, timed at head size (192 + 128) / 2 so that 4 b H s^2 d is its
  // 2 b s^2 H (192 + 128).
  const Op* core = find_op(w, "attention", Pass::forward);
  REQUIRE(core != nullptr);
  CHECK(core->m == 8);
  CHECK(core->n == 4096);
  CHECK(core->k == 160);
  CHECK(core->flops == 2 * FlopCount(4096) * 4096 * 8 * 320);
}

TEST_CASE("mla: saved activations are the latents, q, k, v and the output", "[mla]") {
  const ModelSpec m = load(hf("deepseek_v2_lite_config.json"));
  // b = 1, s = 4096 (T = 4096), tp 2, no SP, bf16, fused attention. Replicated: both norm
  // inputs, the attention and MLP inputs, 4 e T h; sharded: SwiGLU's gate, up and product
  // 3 e T f / t; the core's q, k (192) and v, output (128) of 8 heads; the kv latent before and
  // after its norm, 2 e T 512, on every rank. Statistics: two RMSNorms' and the latent norm's
  // rstd (4 T each), the log-sum-exp of 8 heads (4 T each).
  const auto a = layer_activation_bytes(m, 1, 4096, 2, false, Recompute::none, Attention::fused, Dtype::bf16);
  CHECK(a.tensors == 4 * 2 * 4096 * 2048 + 3 * 2 * 4096 * 10944 / 2 + 2 * 4096 * 8 * (2 * 192 + 2 * 128) +
                         2 * 4096 * 1024);
  CHECK(a.tensors == 251'920'384);
  CHECK(a.statistics == 2 * 4 * 4096 + 4 * 4096 + 8 * 4 * 4096);
  const MlaActivationBytes mla = mla_activation_bytes(m, 4096, 2, 2);
  CHECK(mla.latents == 2 * 4096 * 1024);
  // With a q latent (DeepSeek-V2: 1536) its two copies too, and its norm's rstd.
  const ModelSpec v2 = load(hf("deepseek_v2_config.json"));
  const MlaActivationBytes q = mla_activation_bytes(v2, 4096, 8, 2);
  CHECK(q.latents == 2 * 4096 * (2 * 512 + 2 * 1536));
  CHECK(q.heads == 2 * 4096 * 16 * (2 * 192 + 2 * 128));
  CHECK(q.stats == 2 * 4 * 4096);
  // Full recompute keeps only the layer input.
  CHECK(layer_activation_bytes(m, 1, 4096, 2, false, Recompute::full, Attention::fused, Dtype::bf16).total() ==
        2 * 4096 * 2048);
}

TEST_CASE("mla: without SP the replicated down-projections' gradients are all-reduced over tp", "[mla]") {
  // A dense latent-attention model (V2-Lite's attention, no experts) at tp 2 without SP.
  ModelSpec m = load(hf("deepseek_v2_lite_config.json"));
  m.experts = m.experts_per_token = m.shared_experts = m.expert_ffn_hidden = m.dense_layers = 0;
  m.q_lora_rank = 1536;
  REQUIRE(check_model(m, "m").ok());
  const ClusterSpec c = h100s(8);
  TrainSpec t;
  t.global_batch = 8, t.seq = 4096, t.dp_bucket_bytes = 40'000'000 * 2;  // Megatron-core's 40M-element bucket
  ParallelConfig p;
  p.tp = 2, p.dp = 4;
  REQUIRE(validate_config(m, c, t, p, [](const std::string& x) { return x; }).ok());
  const StageWork w = build_stage_work(m, c, t, p, 0);
  const Message* g = w.find(Group::tp, "tp mla down-projection gradients");
  REQUIRE(g != nullptr);
  // q_a_proj 2048 x 1536 and its norm, kv_a_proj_with_mqa 2048 x 576 and its norm, 27 layers, bf16.
  CHECK(g->bytes == 2 * 27 * (2048 * 1536 + 1536 + 2048 * 576 + 512));
  CHECK(g->kind == MessageKind::all_reduce);
  CHECK(find_op(w, "mla q down", Pass::forward)->n == 1536);
  CHECK(find_op(w, "mla q up", Pass::forward)->n == 16 * 192 / 2);
  p.sp = true;
  CHECK(build_stage_work(m, c, t, p, 0).find(Group::tp, "tp mla down-projection gradients") == nullptr);
}

TEST_CASE("mla: loom plan prices expert-parallel plans for DeepSeek-V2-Lite on 64 H100s", "[mla]") {
  // The search evaluates ep > 1 and ranks them by step time. DeepSeek-V2-Lite (15.7B) fits
  // without expert parallelism; ep > 1 pays in-line all-to-alls and gains larger expert GEMMs
  // (each of 64 experts' grouped products has ep x more rows: sim/moe.cpp), so ep plans are
  // among the best few, within 2% of the best.
  const auto r = run_loom("plan --model " + hf("deepseek_v2_lite_config.json") +
                          " --cluster dgx-h100 --gpus 64 --global-batch 256 --seq 4096 --top 5 --refine 0 --json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  const nlohmann::json* ep_plan = nullptr;
  for (const auto& row : j.at("top"))
    if (!ep_plan && row.value("ep", int64_t{1}) > 1) ep_plan = &row;
  REQUIRE(ep_plan != nullptr);
  CHECK(ep_plan->at("comm_bytes").value("ep", int64_t{0}) > 0);
  CHECK(ep_plan->at("fits").get<bool>());
  CHECK(j.at("top").at(0).at("fits").get<bool>());
}

TEST_CASE("mla: DeepSeek-V2-Lite's all-to-all bytes and memory equal the formulas", "[mla]") {
  const ModelSpec m = load(hf("deepseek_v2_lite_config.json"));
  const ClusterSpec c = h100s(64);
  TrainSpec t;
  t.global_batch = 256, t.seq = 4096, t.dp_bucket_bytes = 40'000'000 * 2;  // Megatron-core's 40M-element bucket
  ParallelConfig p;
  p.dp = 64, p.ep = 64, p.zero = 1;
  REQUIRE(validate_config(m, c, t, p, [](const std::string& x) { return x; }).ok());
  const StageWork w = build_stage_work(m, c, t, p, 0);
  // Capacity (Switch Transformer, factor 1.25): ceil(1.25 x 4096 x 6 / 64) = 480 tokens per
  // expert; dispatch buffer E C h e = 64 x 480 x 2048 x 2; each all-to-all sends 63/64 of it;
  // dispatch and combine, forward and backward, 26 MoE layers, 4 micro-batches.
  const int64_t dispatch = 64 * 480 * 2048 * 2;
  CHECK(dispatch == 125'829'120);
  const Estimate e = CostModel(m, c, t).evaluate(p);
  CHECK(e.comm.ep == 4 * 4 * 26 * (63 * (dispatch / 64)));
  CHECK(e.comm.ep == 51'527'024'640);
  // One expert a rank: 26 x 3 h fe; the rest (attention, dense MLP, routers, shared experts,
  // embedding, output) whole on every rank, ZeRO-1 over dp = 64; the experts' optimizer state
  // over the expert-data-parallel group tp dp / ep = 1.
  CHECK(w.expert_params == 26 * 3 * 2048 * 1408);
  const int64_t dense = w.params - w.expert_params;
  CHECK(dense == 15'706'484'224 - 26 * 64 * int64_t{3 * 2048 * 1408});
  const MemoryBytes mem = w.memory();
  CHECK(mem.weights == 2 * w.params);
  CHECK(mem.optimizer == 12 * ((dense + 63) / 64) + 12 * w.expert_params);
}

TEST_CASE("mla: Megatron-LM export and import keep the latent attention", "[mla]") {
  const auto plan = temp_file("mla_plan.json", ""), args = temp_file("mla_megatron.sh", ""),
             back = temp_file("mla_imported.json", "");
  LoomRun pr = run_loom("predict --model " + hf("deepseek_v2_config.json") +
                        " --cluster dgx-h100 --gpus 64 --global-batch 64 --seq 4096 --tp 8 --sp --pp 4 --ep 16 "
                        "--zero 1 --recompute full -o " + plan);
  INFO(pr.err);
  REQUIRE(pr.code == 0);
  LoomRun e = run_loom("export " + plan + " --to megatron -o " + args);
  INFO(e.err);
  REQUIRE(e.code == 0);
  const std::string text = slurp(args);
  for (const char* flag : {"--multi-latent-attention", "--q-lora-rank 1536", "--kv-lora-rank 512", "--qk-head-dim 128",
                           "--qk-pos-emb-head-dim 64", "--v-head-dim 128"})
    CHECK(text.find(flag) != std::string::npos);
  LoomRun i = run_loom("import megatron " + args + " --cluster dgx-h100 --gpus 64 -o " + back);
  INFO(i.err);
  REQUIRE(i.code == 0);
  const auto a = nlohmann::json::parse(slurp(plan)), b = nlohmann::json::parse(slurp(back));
  for (const char* k : {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "heads",
                        "kv_heads"})
    CHECK(a["model"][k] == b["model"][k]);
  CHECK(a["prediction"]["step_time_s"] == b["prediction"]["step_time_s"]);
  // torchtitan: the shapes live in a deepseek_v3 flavor's code; said, not written.
  LoomRun tt = run_loom("export " + plan + " --to torchtitan");
  CHECK(tt.code == 0);
  CHECK(tt.err.find("multi-head latent attention (q_lora_rank 1536") != std::string::npos);
}

TEST_CASE("mla: bad input is refused in one line", "[mla]") {
  // An MLA key on a model without latent attention; a zero head size; a Hugging Face MLA key
  // on a model_type that has none; DeepSeek without kv_lora_rank.
  nlohmann::json j = {{"name", "x"}, {"family", "llama"}, {"layers", 2}, {"hidden", 256}, {"heads", 4},
                      {"ffn_hidden", 512}, {"vocab", 1000}, {"seq_len", 128}, {"tied_embeddings", false},
                      {"dropout", false}, {"v_head_dim", 64}};
  CHECK(refusal(j) == "m.json: /v_head_dim: needs kv_lora_rank > 0 (multi-head latent attention) (got 64)");
  j["kv_lora_rank"] = 64, j["qk_nope_head_dim"] = 32, j["qk_rope_head_dim"] = 0;
  CHECK(refusal(j) == "m.json: /qk_rope_head_dim: must be >= 1 with multi-head latent attention (got 0)");
  j["qk_rope_head_dim"] = 16, j["family"] = "gpt";
  CHECK(refusal(j).find("m.json: /kv_lora_rank: multi-head latent attention is modelled for the llama family") == 0);
  j["family"] = "llama";
  const ModelSpec ok = *model_from_json(j, "m.json");
  CHECK(to_json(*model_from_json(to_json(ok), "again")) == to_json(ok));

  auto llama = nlohmann::json::parse(slurp(hf("llama3_8b_config.json")));
  llama["kv_lora_rank"] = 512;
  CHECK(refusal(llama).find("/kv_lora_rank: multi-head latent attention is read for model_type deepseek_v2 and "
                            "deepseek_v3 only (got model_type llama)") != std::string::npos);
  auto ds = nlohmann::json::parse(slurp(hf("deepseek_v2_lite_config.json")));
  ds.erase("kv_lora_rank");
  CHECK(refusal(ds).find("/kv_lora_rank:") != std::string::npos);

  // The executors do not run it: one line, exit 2 (the CPU executor's check before MPI starts;
  // the CUDA backend's check_cuda_plan).
  const auto plan = temp_file("mla_cpu_plan.json", "");
  LoomRun pr = run_loom("predict --model " + temp_file("mla_tiny.json", j.dump()) +
                        " --cluster cpu-mpi --gpus 1 --global-batch 1 --seq 64 --tp 1 --pp 1 --dtype fp32 "
                        "--grad-dtype fp32 --attention unfused -o " + plan);
  INFO(pr.err);
  REQUIRE(pr.code == 0);
  LoomRun x = run_loom("execute " + plan + " --device cpu --steps 1");
  CHECK(x.code == 2);
  CHECK(x.err == "loom: model.kv_lora_rank: the CPU executor has no multi-head latent attention: must be 0 (got 64)\n");
  Plan cuda_plan;
  cuda_plan.model = ok;
  cuda_plan.train.global_batch = 1, cuda_plan.train.seq = 64;
  auto st = cuda::check_cuda_plan(cuda_plan);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("model.kv_lora_rank: the CUDA compute backend does not run it yet") == 0);
}
