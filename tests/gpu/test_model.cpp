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
#include "model_testing.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom::cuda;
using namespace loom::cuda::testing;

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

  check_same_init(gpu, cpu);

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
    if (step == 1) check_first_grads(gpu, cpu);  // before any update
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
    check_step(loss_norm->first, *cpu_loss, loss_norm->second, cpu_norm);
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
