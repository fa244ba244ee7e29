// Mixture of experts (sim/moe.hpp): parameter counts against the published ones, the
// all-to-all bytes and the expert memory against their formulas (exact), the planner's EP
// plans, and bad input refused in one line.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>

#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/model_math.hpp"
#include "sim/moe.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

std::string hf(const std::string& file) { return std::string(LOOM_SOURCE_DIR) + "/tests/data/hf/" + file; }

ModelSpec load(const std::string& name_or_path) {
  std::vector<std::string> ignored;
  auto m = load_model(name_or_path, "test", &ignored);
  INFO(name_or_path << ": " << (m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  return *m;
}

std::string zoo_text(const std::string& name) {
  for (const auto& e : model_zoo())
    if (e.name == name) return std::string(e.json);
  FAIL("no zoo model " << name);
  return {};
}

std::string refusal(const std::string& path) {
  auto m = load_model(path, "test", nullptr);
  REQUIRE_FALSE(m.ok());
  return m.error().message;
}

// Within half the published precision (46.7B published to 0.1B: +- 0.05B).
bool published(int64_t count, double value, double precision) {
  return std::fabs(static_cast<double>(count) - value) <= precision / 2;
}

}  // namespace

TEST_CASE("moe: total and activated parameters equal the published ones", "[moe]") {
  // Mixtral 8x7B (Mistral AI, "Mixtral of experts", 2023: 46.7B total, 12.9B per token). Per
  // layer: attention 2 h^2 + 2 h kv = 41,943,040, two norms 8,192, router h E = 32,768, 8
  // experts of 3 h f = 176,160,768 each; embedding and output 32000 x 4096 each, final norm.
  const ModelSpec mixtral = load(hf("mixtral_8x7b_config.json"));
  CHECK(mixtral.experts == 8);
  CHECK(mixtral.experts_per_token == 2);
  CHECK(mixtral.expert_ffn_hidden == 14336);
  CHECK(moe_layer_total(mixtral) == 32);
  CHECK(total_params(mixtral) == int64_t{32} * (41'943'040 + 8'192 + 32'768 + 8 * 176'160'768) + 2 * 131'072'000 + 4'096);
  CHECK(total_params(mixtral) == 46'702'792'704);
  CHECK(active_params(mixtral) == 46'702'792'704 - int64_t{32} * 6 * 176'160'768);
  CHECK(published(total_params(mixtral), 46.7e9, 0.1e9));
  CHECK(published(active_params(mixtral), 12.9e9, 0.1e9));

  // Qwen1.5-MoE-A2.7B (model card: 14.3B total, 2.7B activated): 60 experts of 1408, top-4,
  // a shared expert of 5632 = 4 x 1408 with its sigmoid gate (shared_expert_gate, hidden x 1:
  // 2,048 a layer, 49,152 in all; transformers' Qwen2MoeSparseMoeBlock), q/k/v biases.
  const ModelSpec qwen15 = load(hf("qwen1.5_moe_a2.7b_config.json"));
  CHECK(qwen15.experts == 60);
  CHECK(qwen15.shared_experts == 4);
  CHECK(qwen15.shared_expert_gate);
  CHECK(qwen15.expert_ffn_hidden == 1408);
  CHECK(qwen15.qkv_bias);
  CHECK(total_params(qwen15) == 14'315'735'040 + 24 * 2'048);
  CHECK(total_params(qwen15) == 14'315'784'192);
  CHECK(active_params(qwen15) == 14'315'784'192 - 24 * 56 * int64_t{3 * 2048 * 1408});
  CHECK(published(total_params(qwen15), 14.3e9, 0.1e9));
  CHECK(published(active_params(qwen15), 2.7e9, 0.1e9));

  // Qwen3-30B-A3B (model card: 30.5B total, 3.3B activated): 128 experts of 768, top-8,
  // head_dim 128 (q is 4096 wide at hidden 2048), q/k norms.
  const ModelSpec qwen3 = load(hf("qwen3_30b_a3b_config.json"));
  CHECK(qwen3.experts == 128);
  CHECK(qwen3.experts_per_token == 8);
  CHECK(total_params(qwen3) == 30'532'122'624);
  CHECK(active_params(qwen3) == 30'532'122'624 - 48 * 120 * int64_t{3 * 2048 * 768});
  CHECK(published(total_params(qwen3), 30.5e9, 0.1e9));
  // The card's "3.3B activated" truncates 3.35B (the model's name rounds it to A3B).
  CHECK(active_params(qwen3) >= 3.3e9);
  CHECK(active_params(qwen3) < 3.4e9);

  // The zoo's Mixtral is the same model.
  const ModelSpec zoo = load("mixtral-8x7b");
  CHECK(total_params(zoo) == total_params(mixtral));
  CHECK(published(active_params(zoo), zoo.published_active_params, zoo.published_active_params_precision));
  // A dense model activates every parameter.
  const ModelSpec dense = load("llama3-8b");
  CHECK(active_params(dense) == total_params(dense));
}

TEST_CASE("moe: which layers are MoE follows first_k_dense_replace and moe_layer_freq", "[moe]") {
  ModelSpec m = load("mixtral-8x7b");
  m.dense_layers = 1;
  m.moe_layer_interval = 2;  // layers 2, 4, ..., 30 (DeepSeek's layer_idx % freq == 0)
  CHECK_FALSE(is_moe_layer(m, 0));
  CHECK_FALSE(is_moe_layer(m, 1));
  CHECK(is_moe_layer(m, 2));
  CHECK_FALSE(is_moe_layer(m, 3));
  CHECK(moe_layer_total(m) == 15);
  CHECK(moe_layers_in(m, 0, 8) == 3);   // 2, 4, 6
  CHECK(moe_layers_in(m, 8, 8) == 4);   // 8, 10, 12, 14
}

TEST_CASE("moe: dispatch and combine all-to-all bytes and expert memory equal the formulas", "[moe]") {
  const ModelSpec m = load("mixtral-8x7b");
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, 64, "test").ok());
  TrainSpec t;
  t.global_batch = 256;
  t.seq = 4096;
  t.dp_bucket_bytes = 40'000'000 * 2;
  ParallelConfig p;
  p.tp = 2, p.sp = true, p.dp = 32, p.pp = 1, p.ep = 8, p.etp = 1, p.zero = 1, p.micro_batch = 1;
  REQUIRE(validate_config(m, *c, t, p, [](const std::string& f) { return f; }).ok());
  const StageWork w = build_stage_work(m, *c, t, p, 0);

  // Tokens a rank routes: b s / t = 2048 (sequence parallel). Capacity per expert (Switch
  // Transformer, factor 1.25): ceil(1.25 x 2048 x 2 / 8) = 640. Dispatch buffer per rank:
  // E C h e = 8 x 640 x 4096 x 2 bytes; each all-to-all sends 7/8 of it.
  const int64_t C = 640, dispatch = 8 * C * 4096 * 2;
  CHECK(dispatch == 41'943'040);
  const Message* a2a = nullptr;
  int64_t a2a_calls = 0;
  for (const Message& msg : w.messages)
    if (msg.group == Group::ep) {
      a2a = &msg;
      CHECK(msg.kind == MessageKind::all_to_all);
      CHECK(msg.bytes == dispatch);
      a2a_calls += msg.count;
    }
  REQUIRE(a2a != nullptr);
  CHECK(a2a_calls == 4 * 32);  // dispatch and combine, forward and backward, 32 MoE layers
  const int64_t micro_batches = 256 / 32;
  const CostModel cm(m, *c, t);
  const Estimate e = cm.evaluate(p);
  CHECK(e.comm.ep == micro_batches * 4 * 32 * (7 * (dispatch / 8)));
  CHECK(e.comm.ep == 37'580'963'840);
  CHECK(e.time.ep_comm_s > 0);

  // Expert weights: 32 layers x 8/8 experts x 3 h f / etp = 5,637,144,576 on each rank; their
  // ZeRO-1 optimizer shard is over the expert-data-parallel group tp dp / (ep etp) = 8, the
  // rest's over dp = 32 (12 bytes per parameter of mixed-precision Adam, ZeRO paper Sec. 3.1).
  CHECK(w.expert_params == 5'637'144'576);
  const int64_t dense = w.params - w.expert_params;
  const MemoryBytes mem = w.memory();
  CHECK(mem.weights == 2 * w.params);
  CHECK(mem.grads == 2 * w.params);
  CHECK(mem.optimizer == 12 * ((dense + 31) / 32) + 12 * ((w.expert_params + 7) / 8));
  // Dense part: attention (41,943,040 / tp) and two norms, router h E replicated, per layer;
  // the vocab-parallel embedding and output layer (32000 / 2 rows each) and the final norm.
  CHECK(dense == 32 * (41'943'040 / 2 + 8'192 + 32'768) + 2 * 16'000 * 4096 + 4'096);

  // Expert gradients reduce over edp = 8 once per step (ZeRO-1: reduce-scatter, then the
  // updated weights' all-gather): (n - 1) ceil(S / n) bytes each.
  const Message* eg = nullptr;
  for (const Message& msg : w.messages)
    if (msg.group == Group::edp && msg.kind == MessageKind::reduce_scatter) eg = &msg;
  REQUIRE(eg != nullptr);
  CHECK(eg->bytes == 2 * w.expert_params);
  CHECK(message_send_bytes(*eg, 8) == 7 * ((2 * w.expert_params + 7) / 8));

  // The rank's one expert (8 / ep) multiplies ep etp C = 8 x 640 = 5120 rows: a grouped GEMM
  // of one product per local expert, FLOPs 2 x 5120 x 2 f x h each.
  const Op* up = nullptr;
  for (const Op& o : w.ops)
    if (std::string(o.name) == "expert gate|up" && o.pass == Pass::forward) up = &o;
  REQUIRE(up != nullptr);
  CHECK(up->m == 5120);
  CHECK(up->batch == 1);
  CHECK(up->flops == FlopCount{2} * 5120 * 2 * 14336 * 4096);
}

TEST_CASE("moe: each local expert is its own product of a grouped GEMM, one launch", "[moe]") {
  const ModelSpec m = load("mixtral-8x7b");
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, 64, "test").ok());
  TrainSpec t;
  t.global_batch = 256, t.seq = 4096, t.dp_bucket_bytes = 40'000'000 * 2;
  ParallelConfig p;
  p.tp = 2, p.sp = true, p.dp = 32, p.ep = 2, p.zero = 1;
  REQUIRE(validate_config(m, *c, t, p, [](const std::string& f) { return f; }).ok());
  const StageWork w = build_stage_work(m, *c, t, p, 0);
  const Op* up = nullptr;
  for (const Op& o : w.ops)
    if (std::string(o.name) == "expert gate|up" && o.pass == Pass::forward) up = &o;
  REQUIRE(up != nullptr);
  // 4 local experts of ep etp C = 2 x 640 rows each: the same FLOPs as one 5120-row product.
  CHECK(up->batch == 4);
  CHECK(up->m == 1280);
  CHECK(up->flops == FlopCount{2} * 5120 * 2 * 14336 * 4096);
  // Time: each product's time less its launch, four times, plus one launch; slower than one
  // 5120-row GEMM (the efficiency curve of smaller products), faster than four launches.
  const OpTimer op = OpTimer::of(*c, t);
  // (The launch inside `one` is the cluster's GEMM model's where it has one.)
  const double one = op.gemm(1280, 2 * 14336, 4096), launch = op.gemm_launch_s(1280, 2 * 14336, 4096);
  CHECK(launch == (c->gemm_model ? c->gemm_model->c.launch_s : c->efficiency.kernel_launch_s));
  CHECK(op.op(*up) == Approx(4 * (one - launch) + launch).epsilon(1e-12));
  CHECK(op.op(*up) > op.gemm(5120, 2 * 14336, 4096));
  CHECK(op.op(*up) < 4 * one);
}

TEST_CASE("moe: the all-to-all crosses the NICs when the ep group spans nodes", "[moe]") {
  AllToAllLinks in_node;
  in_node.size = 8, in_node.ranks_per_node = 8, in_node.gpus_per_node = 8;
  in_node.intra_bytes_per_s = 360e9, in_node.nic_bytes_per_s = 8 * 40e9, in_node.latency_s = 0;
  // 8 ranks in one node: 7/8 of S over NVLink.
  CHECK(all_to_all_time_s(8e9, in_node) == Approx(7e9 / 360e9).epsilon(1e-12));
  AllToAllLinks across = in_node;
  across.size = 16, across.nodes_spanned = 2;
  // 16 ranks, 8 a node: 8/16 of S leaves each GPU, 8 GPUs a node share the NICs.
  CHECK(all_to_all_time_s(8e9, across) == Approx(std::max(8e9 * 7 / 16 / 360e9, 8 * 8e9 * 8 / 16 / 320e9)).epsilon(1e-12));
  CHECK(all_to_all_send_bytes(1000, 8) == 7 * 125);
  CHECK(all_to_all_send_bytes(1001, 8) == 7 * 126);
  CHECK(all_to_all_send_bytes(1000, 1) == 0);
}

TEST_CASE("moe: loom plan gives an expert-parallel plan for Mixtral 8x7B on 64 H100s", "[moe]") {
  const auto r = run_loom("plan --model " + hf("mixtral_8x7b_config.json") +
                          " --cluster dgx-h100 --gpus 64 --global-batch 256 --seq 4096 --top 1 --refine 0 --json");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  const auto& best = j.at("top").at(0);
  CHECK(best.value("ep", int64_t{1}) > 1);
  CHECK(best.at("comm_bytes").value("ep", int64_t{0}) > 0);
  CHECK(best.at("fits").get<bool>());
}

TEST_CASE("moe: bad input is refused in one line", "[moe]") {
  // --ep on a dense model, an ep that does not divide the experts, etp above tp.
  auto r = run_loom("predict --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 8 --tp 1 --pp 1 --ep 2");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --ep: needs a mixture-of-experts model (got ep 2)\n");
  r = run_loom("plan --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 8 --ep 2");
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --ep: needs a mixture-of-experts model") == 0);
  r = run_loom("predict --model mixtral-8x7b --cluster dgx-h100 --gpus 8 --global-batch 8 --seq 4096 --tp 1 --pp 1 "
               "--ep 3");
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --ep: must divide experts (8 % 3 != 0)") == 0);
  r = run_loom("predict --model mixtral-8x7b --cluster dgx-h100 --gpus 8 --global-batch 8 --seq 4096 --tp 2 --sp "
               "--pp 1 --etp 4");
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --etp: must be <= tp (4 > 2)") == 0);
  r = run_loom("predict --model mixtral-8x7b --cluster dgx-h100 --gpus 8 --global-batch 8 --seq 4096 --tp 2 --pp 1");
  CHECK(r.code == 2);
  CHECK(r.err.find("loom: --sp: mixture-of-experts layers with tensor parallelism need sequence parallelism") == 0);

  // Model files: top-k above the experts; a MoE key on a dense model.
  nlohmann::json j = nlohmann::json::parse(zoo_text("mixtral-8x7b"));
  j["experts_per_token"] = 9;
  auto bad = model_from_json(j, "m.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "m.json: /experts_per_token: must be <= 8 (got 9)");
  j = nlohmann::json::parse(zoo_text("llama3-8b"));
  j["experts_per_token"] = 2;
  bad = model_from_json(j, "m.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "m.json: /experts_per_token: needs experts > 0 (got 2 with experts 0)");

  // Hugging Face: Qwen dense exceptions; a shared expert size that is not a multiple of the
  // expert size. (DeepSeek's latent attention is read: tests/test_mla.cpp.)
  auto q = nlohmann::json::parse(slurp(hf("qwen1.5_moe_a2.7b_config.json")));
  q["mlp_only_layers"] = {0, 1};
  auto qm = model_from_json(q, "q.json");
  REQUIRE_FALSE(qm.ok());
  CHECK(qm.error().message.find("q.json: /mlp_only_layers: dense exceptions among the MoE layers are not modelled") == 0);
  q = nlohmann::json::parse(slurp(hf("qwen1.5_moe_a2.7b_config.json")));
  q["shared_expert_intermediate_size"] = 5000;
  qm = model_from_json(q, "q.json");
  REQUIRE_FALSE(qm.ok());
  CHECK(qm.error().message.find("q.json: /shared_expert_intermediate_size: must be a multiple of") == 0);
}

TEST_CASE("moe: a Mixtral config labelled mistral is read as MoE, not dense", "[moe]") {
  const ModelSpec m = load(hf("mixtral_8x7b_as_mistral.json"));
  CHECK(m.experts == 8);
  CHECK(total_params(m) == 46'702'792'704);
}
