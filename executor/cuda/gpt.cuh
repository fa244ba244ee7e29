// cuda::Gpt: both model families of executor/cpu/gpt.hpp trained on one GPU in bf16 with fp32
// master weights, fp32 gradients and fp32 AdamW state. The same model as the CPU reference (same
// init, same parameter names, same masked padded vocabulary, same loss), with Q, K and V fused
// into one (Q + 2 KV, C) projection, as llm.c, and, for llama, gate and up fused into one (2F, C)
// projection, as Megatron-core's linear_fc1 with gated linear units.
//   gpt:   learned positions, LayerNorm, GELU, biases, multi-head attention.
//   llama: RoPE on q and k, RMSNorm, SwiGLU, no biases, grouped-query attention (kv_heads
//          dividing heads), lm_head untied unless spec.tied_embeddings.
//
// One micro-step reads top to bottom in forward_backward(): embedding, per layer
// norm1 -> QKV (-> RoPE) -> attention -> proj -> (+residual, norm2) -> MLP -> proj -> (+residual,
// next norm), logits, fused softmax cross-entropy, then the same in reverse; update() is grad
// norm + AdamW. Every buffer comes from one allocation whose size is known before it is made
// (memory_needed), so a run that does not fit is refused before anything is allocated.
//
// Full activation recompute (Recompute::full; Chen et al. 2016, Megatron's
// --recompute-granularity full): forward keeps only each layer's input (the previous layer's
// output) and writes every other activation into one layer's worth of buffers shared by all
// layers; backward rebuilds a layer's activations from its input, with the same kernels (so the
// same bits), just before that layer's backward. Recompute::selective is Recompute::none here:
// the fused attention stores no T x T tensor to drop.
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
#include "executor/cuda/step_marks.cuh"
#include "sim/estimate.hpp"
#include "sim/specs.hpp"

namespace loom::cuda {

struct ParamTensor {
  std::string name;            // as executor/cpu/gpt.hpp, with attn.qkv.{weight,bias} for q, k, v
                               // and (llama) mlp.gate_up.weight for gate, up, rows concatenated
  int64_t offset = 0;          // elements into the flat buffers (a multiple of 128: 256-byte
                               // aligned for cuBLASLt and 16-byte vector access)
  std::vector<int64_t> shape;  // row-major; linear weights (out, in)
  int64_t numel = 0;
  bool decay = false;          // matrices and embeddings (nanoGPT's dim >= 2 rule)
};

// Why a model cannot run on this backend, or ok (one line naming the field and the rule):
// head_dim 64, T a multiple of 64 up to seq_len, hidden and ffn_hidden multiples of 8;
// gpt: kv_heads == heads; llama: kv_heads divides heads, rope_theta > 0.
Status validate_for_cuda_model(const ModelSpec& spec, int64_t B, int64_t T);

// The vocabulary rounded up to a multiple of 128 (tensor-core friendly rows; 50257 -> 50304).
int64_t padded_vocab(int64_t vocab);

class Gpt {
 public:
  // Every byte create() will allocate, by the cost model's categories (GPU workspace included,
  // CUDA context not). `recompute` full keeps one layer's activations instead of every layer's.
  static Expected<MemoryBytes> memory_needed(const ModelSpec& spec, int64_t B, int64_t T,
                                             Recompute recompute = Recompute::none);
  static Expected<std::unique_ptr<Gpt>> create(const ModelSpec& spec, int64_t B, int64_t T,
                                               uint64_t seed, cudaStream_t stream,
                                               Recompute recompute = Recompute::none);
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
  // Marks every kernel and phase of the following calls on `marks` (nullptr: none); the caller
  // sets the micro-batch and reads the spans after synchronizing.
  void set_marks(StepMarks* marks) { marks_ = marks; }

  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  int64_t num_param_elements() const { return num_params_padded_; }
  int64_t num_params() const;   // the model's parameters, vocabulary padding excluded
  const float* master() const { return master_; }
  const float* grads() const { return grads_; }
  const MemoryBytes& memory() const { return memory_; }
  int64_t padded_vocab() const { return Vp_; }
  double rope_theta() const { return rope_theta_; }  // llama: cpu::default_rope_theta(spec)
  bool recompute_full() const { return recompute_full_; }

 private:
  // Offsets into the flat parameter buffers; -1 where the family has none (llama: every bias).
  // llama: fc = the fused gate|up weight (2F, C), proj = down (C, F).
  struct LayerOffsets {
    int64_t ln1_w = -1, ln1_b = -1, qkv_w = -1, qkv_b = -1, o_w = -1, o_b = -1;
    int64_t ln2_w = -1, ln2_b = -1, fc_w = -1, fc_b = -1, proj_w = -1, proj_b = -1;
  };
  // What one layer keeps for backward; N = B*T rows, QKV = (NH + 2 NKV) * 64. With full
  // recompute every pointer but res3 is the same for all layers (one layer's worth, rebuilt).
  struct LayerActs {
    bf16* ln1;           // (N, C) norm1 output
    float *ln1_mean, *ln1_rstd;  // (N); mean LayerNorm only (nullptr for llama)
    bf16* qkv;           // (N, QKV) laid out (B, T, NH + 2 NKV, 64); llama: q, k after RoPE
    bf16* atty;          // (N, C) attention output
    float* lse;          // (B, NH, T) attention log-sum-exp
    bf16* res2;          // (N, C) x + attention branch
    bf16* ln2;           // (N, C)
    float *ln2_mean, *ln2_rstd;  // (N); mean LayerNorm only
    bf16* fch;           // gpt: (N, F) fc output before GELU; llama: (N, 2F) gate|up, which
                         // backward overwrites with its own gradient (not read again after)
    bf16* fch_act;       // (N, F) gelu(fch) / silu(gate) * up: the down projection's input
    bf16* res3;          // (N, C) layer output = the next layer's input
  };
  // One initializer of a parameter tensor: `count` elements from CPU-layout tensor `cpu_index`'s
  // stream (executor/cpu/gpt.cpp init_params); std > 0 normal(0, std), 0 zeros, < 0 ones.
  struct InitPart {
    int64_t cpu_index;
    int64_t count;
    double std;
  };
  class Arena;

  Gpt() = default;
  static std::unique_ptr<Gpt> configure(const ModelSpec& spec, int64_t B, int64_t T,
                                        Recompute recompute);
  void build_layout();
  Status plan_buffers(Arena& arena);
  void share_layer_buffers();
  Status init_params(uint64_t seed);
  Status forward(const int32_t* tokens, const int32_t* targets, float loss_scale);
  Status backward(const int32_t* tokens);
  Status layer_forward(int64_t l);
  Status layer_forward_core(int64_t l);
  Status recompute_layer(int64_t l);
  Status layer_backward(int64_t l);
  Status embed(const int32_t* tokens);
  // LayerNorm (gpt) or RMSNorm (llama) with the fused residual add; w, b parameter offsets.
  Status norm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                      const bf16* b, int64_t w, int64_t bias);
  Status norm_backward(bf16* dinp, const bf16* dout, const bf16* inp, const float* mean,
                       const float* rstd, int64_t w, int64_t bias);
  const bf16* layer_input(int64_t l) const { return l == 0 ? encoded_ : acts_[l - 1].res3; }
  bf16* p(int64_t offset) const { return offset < 0 ? nullptr : params_ + offset; }
  float* g(int64_t offset) const { return offset < 0 ? nullptr : grads_ + offset; }

  ModelSpec spec_;
  bool llama_ = false;
  bool recompute_full_ = false;
  double rope_theta_ = 0;
  int64_t B_ = 0, T_ = 0, N_ = 0, C_ = 0, NH_ = 0, NKV_ = 0, F_ = 0, L_ = 0, Vp_ = 0;
  int64_t QKV_ = 0;  // rows of the fused projection: (NH + 2 NKV) * 64
  int64_t FC_ = 0;   // rows of the first MLP projection: F (gpt) or 2F (llama: gate|up)
  cudaStream_t stream_ = nullptr;
  StepMarks* marks_ = nullptr;
  Status mark(const char* op) { return marks_ ? marks_->op(op, stream_) : ok_status(); }
  Status phase(const char* kind) { return marks_ ? marks_->phase(kind, stream_) : ok_status(); }
  std::unique_ptr<Gemm> gemm_;
  std::vector<ParamTensor> tensors_;
  std::vector<std::vector<InitPart>> init_;  // per tensor: its initializers, in row order
  std::vector<LayerOffsets> layer_;
  int64_t wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, head_ = -1;  // -1: not in the family
  int64_t num_params_padded_ = 0;
  MemoryBytes memory_;

  void* arena_ = nullptr;  // the one allocation; everything below points into it
  bf16* params_ = nullptr;  // (P) working copy the kernels read
  float* master_ = nullptr;  // (P) fp32 master weights
  float *grads_ = nullptr, *adam_m_ = nullptr, *adam_v_ = nullptr;  // (P)
  std::vector<LayerActs> acts_;
  bf16 *encoded_ = nullptr, *lnf_ = nullptr, *logits_ = nullptr;  // (N, C), (N, C), (N, Vp)
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr;  // (N); mean gpt only
  bf16* proj_out_ = nullptr;  // (N, C) attention/MLP projection output before the residual add
  // backward scratch
  bf16 *dres_ = nullptr, *dln_ = nullptr, *datty_ = nullptr;  // (N, C)
  bf16* dqkv_ = nullptr;  // (N, QKV)
  bf16* dfch_ = nullptr;  // (N, F): gpt the gradient of the GELU input, llama of silu(gate) * up
  float* delta_ = nullptr;  // (B, NH, T)
  float* reduce_scratch_ = nullptr;  // column sums, norm parameter sums, grad norm
  float* scalars_ = nullptr;  // [0] loss sum, [1] grad norm, [2] clip coefficient
  AdamWChunk* chunks_ = nullptr;
  int64_t num_chunks_ = 0;
  std::vector<AdamWChunk> host_chunks_;  // weight_decay holds 1 (decays) or 0
  float applied_weight_decay_ = -1;      // the rate in the device table; -1: not yet written
};

}  // namespace loom::cuda
