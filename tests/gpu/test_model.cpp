// The whole CUDA model against the fp32 CPU reference model (executor/cpu/gpt.hpp) on a tiny GPT:
// same init (bit for bit but for libm's last bit), same loss, same gradients within bf16's
// precision, same losses after a few AdamW steps; and the executor's refusals.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>

#include "executor/cpu/gpt.hpp"
#include "executor/cpu/grad_norm.hpp"
#include "executor/cpu/synthetic_data.hpp"
#include "executor/cuda/cuda_executor.hpp"
#include "executor/cuda/gpt.cuh"
#include "gpu_testing.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom::cuda;
using namespace loom::cuda::testing;

namespace {

loom::ModelSpec tiny_gpt() {
  loom::ModelSpec s;
  s.name = "tiny-gpt";
  s.family = loom::Family::gpt;
  s.layers = 2;
  s.hidden = 128;
  s.heads = 2;
  s.kv_heads = 2;
  s.ffn_hidden = 512;
  s.vocab = 250;  // padded to 256 on both sides
  s.seq_len = 128;
  return s;
}

// The GPU's flat fp32 buffer rearranged into the CPU model's layout (q, k, v split apart).
std::vector<float> to_cpu_layout(const Gpt& gpu, const std::vector<float>& flat, const loom::cpu::Gpt& cpu) {
  std::map<std::string, const ParamTensor*> by_name;
  for (const ParamTensor& t : gpu.tensors()) by_name[t.name] = &t;
  std::vector<float> out(cpu.params().size(), 0.0f);
  for (const loom::cpu::TensorInfo& t : cpu.tensors()) {
    std::string name = t.name;
    int64_t skip = 0;
    for (const char* part : {"q", "k", "v"}) {
      const std::string key = std::string(".attn.") + part + ".";
      const auto pos = name.find(key);
      if (pos == std::string::npos) continue;
      const int64_t index = part[0] == 'q' ? 0 : part[0] == 'k' ? 1 : 2;
      skip = index * t.numel;  // q, k, v are consecutive blocks of the fused tensor
      name.replace(pos, key.size(), ".attn.qkv.");
    }
    INFO(t.name);
    REQUIRE(by_name.count(name) == 1);
    const ParamTensor& g = *by_name[name];
    for (int64_t i = 0; i < t.numel; i++) out[t.offset + i] = flat[g.offset + skip + i];
  }
  return out;
}

std::vector<float> download(const float* p, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(v.data(), p, sizeof(float) * v.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  return v;
}

}  // namespace

TEST_CASE("the CUDA GPT trains like the CPU reference model", "[gpu][model]") {
  const loom::ModelSpec spec = tiny_gpt();
  const int64_t B = 4, T = 128;
  const uint64_t seed = 1337;
  auto cpu_or = loom::cpu::Gpt::create(spec, {seed, 0, padded_vocab(spec.vocab)});
  REQUIRE(cpu_or.ok());
  loom::cpu::Gpt& cpu = cpu_or.value();
  auto gpu_or = Gpt::create(spec, B, T, seed, nullptr);
  REQUIRE(gpu_or.ok());
  Gpt& gpu = *gpu_or.value();
  CHECK(gpu.num_params() == cpu.num_params());

  // init: the same draws; only libm's last bit may differ
  const auto init = to_cpu_layout(gpu, download(gpu.master(), gpu.num_param_elements()), cpu);
  CHECK(rel_error(init, cpu.params()) < 1e-7);

  const loom::cpu::SyntheticStream data{spec.vocab, 7, T / 2};
  std::vector<int32_t> tokens(2 * B * T);
  DeviceBuffer<int32_t> d_tokens(2 * B * T);
  loom::cpu::AdamWConfig cpu_adam{1e-3, 0.9, 0.95, 1e-8, 0.1};
  AdamWHyper gpu_adam;
  gpu_adam.lr = 1e-3f;
  gpu_adam.weight_decay = 0.1f;
  loom::cpu::FlopCounter flops;
  std::vector<double> cpu_losses, gpu_losses;
  for (int64_t step = 1; step <= 6; step++) {
    loom::cpu::synthetic_batch(tokens.data(), tokens.data() + B * T, data, (step - 1) * B, B, T);
    d_tokens.upload(tokens);
    auto cpu_loss = cpu.forward(tokens.data(), tokens.data() + B * T, B, T, flops);
    REQUIRE(cpu_loss.ok());
    REQUIRE(cpu.backward(flops).ok());
    REQUIRE(gpu.forward_backward(d_tokens.get(), d_tokens.get() + B * T, 1.0f).ok());
    if (step == 1) {  // gradients of the first step, before any update
      const auto g = to_cpu_layout(gpu, download(gpu.grads(), gpu.num_param_elements()), cpu);
      // bf16 activations through two layers: a few 1e-3 per tensor; 3e-2 leaves room and still
      // catches any layout or indexing error (those give errors of order 1)
      CHECK(rel_error(g, cpu.grads()) < 3e-2);
      double total = 0;
      for (float x : cpu.grads()) total += static_cast<double>(x) * x;
      for (const auto& t : cpu.tensors()) {
        std::vector<float> a(g.begin() + t.offset, g.begin() + t.offset + t.numel);
        std::vector<float> r(cpu.grads().begin() + t.offset, cpu.grads().begin() + t.offset + t.numel);
        INFO(t.name);
        if (t.name.find("attn.k.bias") != std::string::npos) {
          // exactly 0 in exact arithmetic (a key bias adds q.b to every score of a row, which the
          // softmax cancels): only rounding noise, far below the gradient's scale
          double n = 0;
          for (float x : a) n += static_cast<double>(x) * x;
          CHECK(std::sqrt(n) < 1e-3 * std::sqrt(total));
        } else {
          CHECK(rel_error(a, r) < 1e-1);
        }
      }
    }
    const double cpu_norm = loom::cpu::clip_grad_norm(cpu.grads().data(), static_cast<int64_t>(cpu.grads().size()), 1.0);
    cpu.update(cpu_adam, step);
    cpu.zero_grad();
    REQUIRE(gpu.update(gpu_adam, 1.0f, step).ok());
    auto loss_norm = gpu.take_loss_and_norm();
    REQUIRE(loss_norm.ok());
    cpu_losses.push_back(*cpu_loss);
    gpu_losses.push_back(loss_norm->first);
    INFO("step " << step << " cpu loss " << *cpu_loss << " gpu loss " << loss_norm->first
                 << " cpu norm " << cpu_norm << " gpu norm " << loss_norm->second);
    // the loss is a mean over B*T positions of bf16 logits: 1e-2 relative
    CHECK(std::abs(loss_norm->first - *cpu_loss) < 1e-2 * *cpu_loss);
    CHECK(std::abs(loss_norm->second - cpu_norm) < 3e-2 * cpu_norm);
  }
  CHECK(gpu_losses.back() < gpu_losses.front());  // it learns
}

TEST_CASE("execute refuses plans it cannot run, before allocating, with the rule", "[gpu][executor]") {
  auto model = loom::load_model("gpt2-1.5b", "--model", nullptr);
  auto cluster = loom::load_cluster("h100-sxm", "--cluster");
  REQUIRE(model.ok());
  REQUIRE(cluster.ok());
  loom::Plan plan;
  plan.model = *model;
  plan.cluster = *cluster;
  REQUIRE(loom::size_cluster(plan.cluster, 1, "test").ok());
  plan.train.seq = 1024;
  plan.parallel.micro_batch = 256;  // activations alone far beyond one GPU
  plan.train.global_batch = 256;
  CudaOptions opt;
  opt.steps = 1;
  auto r = run_cuda(plan, opt);
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message);
  CHECK(r.error().message.find("are available") != std::string::npos);

  plan.parallel.micro_batch = 1;
  plan.train.global_batch = 1;
  plan.parallel.tp = 2;
  r = run_cuda(plan, opt);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("dp = tp = pp = 1") != std::string::npos);
}
