// cuda::Gpt: the GPT family (learned positions, LayerNorm, GELU, biases) trained on one GPU in
// bf16 with fp32 master weights, fp32 gradients and fp32 AdamW state. The same model as
// executor/cpu/gpt.hpp (same init, same masked padded vocabulary, same loss), with Q, K and V
// fused into one (3C, C) projection, as llm.c.
//
// One micro-step reads top to bottom in forward_backward(): embedding, per layer
// LN1 -> QKV -> attention -> proj -> (+residual, LN2) -> fc+GELU -> proj -> (+residual, next LN),
// logits, fused softmax cross-entropy, then the same in reverse; update() is grad norm + AdamW.
// Every buffer comes from one allocation whose size is known before it is made
// (memory_needed), so a run that does not fit is refused before anything is allocated.
//
// Parallelism: this class is one rank's model with dp = tp = pp = 1. The hooks a parallel
// version needs are the places where gradients are final (after backward: DP all-reduce or
// reduce-scatter of `grads`) and the layer loop (a stage's layer range for PP).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "executor/cuda/adamw.cuh"
#include "executor/cuda/common.cuh"
#include "executor/cuda/matmul.cuh"
#include "sim/estimate.hpp"
#include "sim/specs.hpp"

namespace loom::cuda {

struct ParamTensor {
  std::string name;            // as executor/cpu/gpt.hpp, with attn.qkv.{weight,bias} for q, k, v
  int64_t offset = 0;          // elements into the flat buffers (a multiple of 128: 256-byte
                               // aligned for cuBLASLt and 16-byte vector access)
  std::vector<int64_t> shape;  // row-major; linear weights (out, in)
  int64_t numel = 0;
  bool decay = false;          // matrices and embeddings (nanoGPT's dim >= 2 rule)
};

// Why a model cannot run on this backend, or ok. head_dim 64, T a multiple of 64, C a multiple
// of 8, kv_heads == heads, family gpt.
Status validate_for_cuda_model(const ModelSpec& spec, int64_t B, int64_t T);

// The vocabulary rounded up to a multiple of 128 (tensor-core friendly rows; 50257 -> 50304).
int64_t padded_vocab(int64_t vocab);

class Gpt {
 public:
  // Every byte create() will allocate, by the cost model's categories (GPU workspace included,
  // CUDA context not).
  static Expected<MemoryBytes> memory_needed(const ModelSpec& spec, int64_t B, int64_t T);
  static Expected<std::unique_ptr<Gpt>> create(const ModelSpec& spec, int64_t B, int64_t T,
                                               uint64_t seed, cudaStream_t stream);
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  // One micro-batch: forward, loss, backward. tokens, targets (B, T) int32 on the device.
  // Adds loss_scale * mean loss into loss_sum() and d(loss_scale * mean loss)/d(params) into
  // the gradients (loss_scale = 1/m averages m accumulated micro-batches).
  Status forward_backward(const int32_t* tokens, const int32_t* targets, float loss_scale);
  // Gradient norm, clipping to max_norm (<= 0: none), AdamW step (from 1), gradients zeroed.
  Status update(const AdamWHyper& hyper, float max_norm, int64_t step);
  // Copies the accumulated loss and gradient norm to the host (synchronizes) and zeroes the loss.
  Expected<std::pair<float, float>> take_loss_and_norm();

  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  int64_t num_param_elements() const { return num_params_padded_; }
  int64_t num_params() const;   // the model's parameters, vocabulary padding excluded
  const float* master() const { return master_; }
  const float* grads() const { return grads_; }
  const MemoryBytes& memory() const { return memory_; }
  int64_t padded_vocab() const { return Vp_; }

 private:
  struct LayerOffsets {  // into the flat parameter buffers
    int64_t ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
  };
  struct LayerActs {     // what one layer keeps for backward; N = B*T rows
    bf16* ln1;           // (N, C)
    float *ln1_mean, *ln1_rstd;  // (N)
    bf16* qkv;           // (N, 3C) laid out (B, T, 3, NH, 64)
    bf16* atty;          // (N, C) attention output
    float* lse;          // (B, NH, T) attention log-sum-exp
    bf16* res2;          // (N, C) x + attention branch
    bf16* ln2;           // (N, C)
    float *ln2_mean, *ln2_rstd;  // (N)
    bf16* fch;           // (N, 4C) fc output before GELU
    bf16* fch_gelu;      // (N, 4C)
    bf16* res3;          // (N, C) layer output
  };
  class Arena;

  Gpt() = default;
  void build_layout();
  Status plan_buffers(Arena& arena);
  Status init_params(uint64_t seed);
  Status forward(const int32_t* tokens, const int32_t* targets, float loss_scale);
  Status backward(const int32_t* tokens);
  Status layer_forward(int64_t l);
  Status layer_backward(int64_t l);
  bf16* p(int64_t offset) const { return params_ + offset; }
  float* g(int64_t offset) const { return grads_ + offset; }

  ModelSpec spec_;
  int64_t B_ = 0, T_ = 0, N_ = 0, C_ = 0, NH_ = 0, F_ = 0, L_ = 0, Vp_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  std::vector<ParamTensor> tensors_;
  std::vector<int64_t> cpu_index_;  // per tensor: index of its (first) CPU-layout tensor
  std::vector<LayerOffsets> layer_;
  int64_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0, head_ = 0;
  int64_t num_params_padded_ = 0;
  MemoryBytes memory_;

  void* arena_ = nullptr;  // the one allocation; everything below points into it
  bf16* params_ = nullptr;  // (P) working copy the kernels read
  float* master_ = nullptr;  // (P) fp32 master weights
  float *grads_ = nullptr, *adam_m_ = nullptr, *adam_v_ = nullptr;  // (P)
  std::vector<LayerActs> acts_;
  bf16 *encoded_ = nullptr, *lnf_ = nullptr, *logits_ = nullptr;  // (N, C), (N, C), (N, Vp)
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr;  // (N)
  bf16* proj_out_ = nullptr;  // (N, C) attention/MLP projection output before the residual add
  // backward scratch
  bf16 *dres_ = nullptr, *dln_ = nullptr, *datty_ = nullptr;  // (N, C)
  bf16* dqkv_ = nullptr;  // (N, 3C)
  bf16* dfch_ = nullptr;  // (N, 4C)
  float* delta_ = nullptr;  // (B, NH, T)
  float* reduce_scratch_ = nullptr;  // column sums, LayerNorm parameter sums, grad norm
  float* scalars_ = nullptr;  // [0] loss sum, [1] grad norm, [2] clip coefficient
  AdamWChunk* chunks_ = nullptr;
  int64_t num_chunks_ = 0;
  std::vector<AdamWChunk> host_chunks_;  // weight_decay holds 1 (decays) or 0
  float applied_weight_decay_ = -1;      // the rate in the device table; -1: not yet written
};

}  // namespace loom::cuda
