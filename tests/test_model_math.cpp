// Parameter counts and FLOPs: exact values.
#include <catch2/catch.hpp>

#include <cmath>

#include "sim/model_math.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {
ModelSpec zoo(const std::string& name) {
  auto m = load_model(name, "test", nullptr);
  REQUIRE(m.ok());
  return *m;
}
}  // namespace

TEST_CASE("every zoo model's parameter count equals the published one") {
  for (const auto& e : model_zoo()) {
    ModelSpec m = zoo(std::string(e.name));
    INFO(m.name << " computed " << total_params(m) << " published " << m.published_params << " +- "
                << m.published_params_precision / 2);
    REQUIRE(m.published_params > 0);
    CHECK(std::fabs(static_cast<double>(total_params(m)) - m.published_params) <= m.published_params_precision / 2);
  }
}

TEST_CASE("exact parameter counts of GPT-2 and Llama 3 (Hugging Face checkpoints)") {
  CHECK(total_params(zoo("gpt2-124m")) == 124'439'808);
  CHECK(total_params(zoo("gpt2-1.5b")) == 1'557'611'200);
  CHECK(total_params(zoo("llama3-8b")) == 8'030'261'248);
  CHECK(total_params(zoo("llama3-70b")) == 70'553'706'496);
  CHECK(total_params(zoo("llama3-405b")) == 405'853'388'800);
}

TEST_CASE("GPT-3 175B model state is 2.8 TB at 16 bytes per parameter") {
  const int64_t p = total_params(zoo("gpt3-175b"));
  CHECK(p == 174'604'259'328);
  CHECK(16 * p == 2'793'668'149'248);  // 2.79 TB: the ZeRO paper's 16 bytes per parameter (Rajbhandari et al. 2020, sec. 3.1)
}

TEST_CASE("GPT FLOPs equal Narayanan et al.'s formulas to the FLOP (GPT-3 175B)") {
  const ModelSpec m = zoo("gpt3-175b");
  const FlopCount B = 1536, s = 2048, l = m.layers, h = m.hidden, V = m.vocab;
  // 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) = 72 B s l h^2 + 12 B s^2 l h + 6 B s h V
  const FlopCount model = 72 * B * s * l * h * h + 12 * B * s * s * l * h + 6 * B * s * h * V;
  CHECK(model_flops(m, 1536, 2048, AttentionFlops::full) == model);
  // 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) = 96 B s l h^2 + 16 B s^2 l h + 6 B s h V
  const FlopCount full = 96 * B * s * l * h * h + 16 * B * s * s * l * h + 6 * B * s * h * V;
  CHECK(hardware_flops(m, 1536, 2048, Recompute::full, AttentionFlops::full) == full);
  // Selective recompute reruns the forward of the attention core, QK^T and softmax x V:
  // 4 B s^2 h per layer. (Korthikanti et al.'s eq. 8, 72 B s l h^2 (1 + s/(3h) + ...), adds
  // 12 B s^2 l h, three times that: loom counts the op shapes it recomputes.)
  const FlopCount selective = model + 4 * B * s * s * l * h;
  CHECK(hardware_flops(m, 1536, 2048, Recompute::selective, AttentionFlops::full) == selective);
  CHECK(hardware_flops(m, 1536, 2048, Recompute::none, AttentionFlops::full) == model);
  // The figure itself: 3.39e18 FLOPs per step.
  CHECK(static_cast<double>(model) == Approx(3.3860e18).epsilon(1e-4));
}

TEST_CASE("Causal attention counts half of the s x s work: 6 B s^2 l h instead of 12 B s^2 l h (GPT-3 175B)") {
  const ModelSpec m = zoo("gpt3-175b");
  const FlopCount B = 1536, s = 2048, l = m.layers, h = m.hidden, V = m.vocab;
  const FlopCount causal = 72 * B * s * l * h * h + 6 * B * s * s * l * h + 6 * B * s * h * V;
  CHECK(model_flops(m, 1536, 2048, AttentionFlops::causal) == causal);
  CHECK(hardware_flops(m, 1536, 2048, Recompute::selective, AttentionFlops::causal) == causal + 2 * B * s * s * l * h);
  // At 128k tokens the two conventions differ by more than 40% for Llama 3 8B.
  const ModelSpec ll = zoo("llama3-8b");
  const double ratio = static_cast<double>(model_flops(ll, 1, 131072, AttentionFlops::full)) /
                       static_cast<double>(model_flops(ll, 1, 131072, AttentionFlops::causal));
  CHECK(ratio > 1.4);
}

TEST_CASE("GQA and SwiGLU FLOPs come from op shapes (Llama 3 8B)") {
  const ModelSpec m = zoo("llama3-8b");
  const FlopCount T = 2048, h = 4096, kv = 1024, f = 14336;
  const LayerFlops lf = layer_forward_flops(m, 1, 2048);
  CHECK(lf.gemm == 2 * T * h * (h + 2 * kv) + 2 * T * h * h + 3 * 2 * T * h * f);
  CHECK(lf.attention == 4 * T * 2048 * h);
}
