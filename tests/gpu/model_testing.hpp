// Helpers of the whole-model GPU tests (test_model.cpp, test_llama.cpp): the tiny GPT both use,
// the GPU model's parameters read back in the CPU reference model's layout, and the checks both
// make of the CUDA model against the fp32 CPU reference (executor/cpu/gpt.hpp).
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "executor/cpu/gpt.hpp"
#include "executor/cuda/gpt.cuh"
#include "gpu_testing.hpp"

namespace loom::cuda::testing {

// Two layers of hidden 128, two heads (head size 64, as the CUDA attention needs), seq 128.
inline loom::ModelSpec tiny_gpt() {
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

// The GPU's flat fp32 buffer in the CPU model's layout: q, k, v are consecutive row blocks of
// attn.qkv, gate and up of mlp.gate_up.
inline std::vector<float> to_cpu_layout(const Gpt& gpu, const std::vector<float>& flat, const loom::cpu::Gpt& cpu) {
  std::map<std::string, const ParamTensor*> by_name;
  for (const ParamTensor& t : gpu.tensors()) by_name[t.name] = &t;
  struct Fused {
    const char* fused;
    std::vector<const char*> parts;
  };
  const std::vector<Fused> groups{{".attn.qkv.", {".attn.q.", ".attn.k.", ".attn.v."}},
                                  {".mlp.gate_up.", {".mlp.gate.", ".mlp.up."}}};
  std::vector<float> out(cpu.params().size(), 0.0f);
  for (const loom::cpu::TensorInfo& t : cpu.tensors()) {
    std::string name = t.name;
    int64_t skip = 0;
    for (const Fused& f : groups) {
      for (size_t i = 0; i < f.parts.size(); i++) {
        const auto pos = t.name.find(f.parts[i]);
        if (pos == std::string::npos) continue;
        for (size_t j = 0; j < i; j++) {  // the parts before it, same layer and suffix
          std::string before = t.name;
          before.replace(pos, std::string(f.parts[i]).size(), f.parts[j]);
          skip += cpu.find(before)->numel;
        }
        name.replace(pos, std::string(f.parts[i]).size(), f.fused);
      }
    }
    INFO(t.name);
    REQUIRE(by_name.count(name) == 1);
    const ParamTensor& g = *by_name[name];
    REQUIRE(skip + t.numel <= g.numel);
    for (int64_t i = 0; i < t.numel; i++) out[t.offset + i] = flat[g.offset + skip + i];
  }
  return out;
}

inline std::vector<float> download(const float* p, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(v.data(), p, sizeof(float) * v.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  return v;
}

// Init: the same draws; only libm's last bit may differ.
inline void check_same_init(const Gpt& gpu, const loom::cpu::Gpt& cpu) {
  const auto init = to_cpu_layout(gpu, download(gpu.master(), gpu.num_param_elements()), cpu);
  CHECK(rel_error(init, cpu.params()) < 1e-7);
}

// The first step's gradients, before any update. bf16 activations through two layers (and, in
// the llama family, RoPE's extra rounding of q and k): a few 1e-3 per tensor; 3e-2 over all and
// 1e-1 per tensor leave room and still catch any layout, pairing or head-mapping error (those
// give errors of order 1).
inline void check_first_grads(const Gpt& gpu, const loom::cpu::Gpt& cpu) {
  const auto g = to_cpu_layout(gpu, download(gpu.grads(), gpu.num_param_elements()), cpu);
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

// One step's loss and gradient norm on the GPU against the CPU's: the loss is a mean over B T
// positions of bf16 logits, 1e-2 relative; the norm 3e-2.
inline void check_step(double gpu_loss, double cpu_loss, double gpu_norm, double cpu_norm) {
  CHECK(std::abs(gpu_loss - cpu_loss) < 1e-2 * cpu_loss);
  CHECK(std::abs(gpu_norm - cpu_norm) < 3e-2 * cpu_norm);
}

}  // namespace loom::cuda::testing
