// cpu::Gpt: the fp32 single-rank reference model of both families, assembled from the ops in this
// folder (llm.c's train_gpt2.c in spirit). All parameters live in one contiguous buffer described
// by a table of named tensors (name, offset, shape), so parallel code can shard them by name;
// gradients use the same layout. The class is a template on the scalar type only so that tests
// can run the identical code in double for finite-difference checks; `Gpt` is the fp32 model.
//
// family gpt:   x = wte[tok] + wpe[t]; per layer: x += o(attn(LN1(x)));
//               x += proj(gelu(fc(LN2(x)))), biases on every linear; logits = LNf(x) @ head^T.
// family llama: x = wte[tok]; per layer: x += o(attn(rope(q), rope(k), v)(RMS1(x)));
//               x += down(silu(gate(RMS2(x))) * up(RMS2(x))), no biases; logits = RMSf(x) @ head^T.
// head is wte itself when spec.tied_embeddings. Dropout is ignored (treated as 0).
// MoE layers (moe_layer(spec, l), cpu/moe.hpp) replace the MLP by x += moe(norm2(x)).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "executor/cpu/adamw.hpp"
#include "executor/cpu/flop_counter.hpp"
#include "executor/cpu/moe.hpp"
#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom::cpu {

// One named tensor of the flat parameter buffer (and of the gradient buffer, same layout).
struct TensorInfo {
  std::string name;            // e.g. "layers.0.attn.q.weight"
  int64_t offset = 0;          // index of the first element in params() / grads()
  std::vector<int64_t> shape;  // row-major; linear weights are (out, in) as nn.Linear
  int64_t numel = 0;
  int64_t layer = -1;         // transformer layer, -1 for embeddings, final norm and head
  bool weight_decay = false;  // true for matrices and embeddings (nanoGPT's dim >= 2 rule)
  // Megatron tensor-parallel split: 0 = split rows (column-parallel linears, vocab-parallel
  // embedding and head), 1 = split columns (row-parallel linears), -1 = replicated.
  int tp_split_dim = -1;
  // MoE expert weights (cpu/moe.hpp): a stack of `experts` matrices, shape {experts, rows, cols},
  // split over ep by whole experts and each matrix over etp (expert tensor parallelism) along
  // tp_split_dim. 0 for every other tensor.
  int64_t experts = 0;
};

struct GptOptions {
  uint64_t seed = 1337;      // init: tensor i draws from stream mix(seed, i)
  double rope_theta = 0;     // llama only; 0 = default_rope_theta(spec)
  int64_t padded_vocab = 0;  // rows of wte and head (>= vocab); 0 = vocab. Padded rows start at
                             // 0, get no gradient from the masked loss, and are not counted in
                             // num_params().
};

// 500000 for Llama 3 models (name starting "llama3" / "llama-3", any case), else 10000.
double default_rope_theta(const ModelSpec& spec);

// The checks create() applies, as one line naming the field and the rule.
Status validate_for_cpu_model(const ModelSpec& spec, const GptOptions& options);

template <class Real>
class GptModel {
 public:
  static Expected<GptModel> create(const ModelSpec& spec, const GptOptions& options = {});
  // The tensors and their initialisation without the parameter and gradient arrays (a plan's
  // whole model need not fit one host: the parallel trainer builds only its rank's slices, each
  // element from init_value). params() and grads() are empty; nothing else may be called.
  static Expected<GptModel> layout_only(const ModelSpec& spec, const GptOptions& options = {});
  // Element j of tensor i as create() initialises it (the same bits: its stream's draw j).
  Real init_value(size_t i, int64_t j) const;
  int64_t num_elements() const;  // of all tensors

  // tokens, targets (B, T), values in [0, vocab), 1 <= T <= seq_len. Returns the mean loss over
  // the B*T positions. Activation buffers are (re)sized on the first call with a new (B, T).
  Expected<Real> forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T,
                         FlopCounter& flops);
  // grads += d(loss_scale * mean loss)/d(params) for the last forward; loss_scale = 1/m averages
  // m accumulated micro-batches. Error if no forward came first.
  Status backward(FlopCounter& flops, double loss_scale = 1.0);
  void zero_grad();
  // One AdamW step (step counts from 1) on every tensor, weight decay only where
  // TensorInfo::weight_decay.
  void update(const AdamWConfig& config, int64_t step);

  const ModelSpec& spec() const { return spec_; }
  int64_t padded_vocab() const { return padded_vocab_; }
  double rope_theta() const { return rope_theta_; }
  int64_t num_params() const;  // the model's parameters, padded rows excluded
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent

  std::vector<Real>& params() { return params_; }
  const std::vector<Real>& params() const { return params_; }
  std::vector<Real>& grads() { return grads_; }
  const std::vector<Real>& grads() const { return grads_; }
  const std::vector<Real>& logits() const { return top_.logits; }  // (B, T, padded_vocab)
  const std::vector<Real>& losses() const { return top_.losses; }  // (B, T)

 private:
  // Offsets of one layer's tensors in the flat buffer; -1 where the family has none.
  // gpt: fc/proj; llama: fc = gate, up, proj = down.
  struct LayerOffsets {
    int64_t norm1_w = -1, norm1_b = -1;
    int64_t q_w = -1, q_b = -1, k_w = -1, k_b = -1, v_w = -1, v_b = -1, o_w = -1, o_b = -1;
    int64_t norm2_w = -1, norm2_b = -1;
    int64_t fc_w = -1, fc_b = -1, up_w = -1, proj_w = -1, proj_b = -1;
    // MoE layers (cpu/moe.hpp) in place of the MLP: router, experts, shared experts.
    int64_t router_w = -1, efc_w = -1, eup_w = -1, eproj_w = -1, sfc_w = -1, sup_w = -1, sproj_w = -1;
  };
  // What one layer keeps for backward (and, in dlayers_, the gradients of the same buffers).
  // N = B*T rows; C = hidden; Q = heads*head_dim (= C); KV = kv_heads*head_dim; F = ffn_hidden.
  struct LayerActs {
    std::vector<Real> ln1;       // (N, C) norm1 output
    std::vector<Real> ln1_mean;  // (N) LayerNorm only; not in dlayers_
    std::vector<Real> ln1_rstd;  // (N) not in dlayers_
    std::vector<Real> q;         // (N, Q) before RoPE
    std::vector<Real> k;         // (N, KV) before RoPE
    std::vector<Real> v;         // (N, KV)
    std::vector<Real> q_rope;    // (N, Q) llama only
    std::vector<Real> k_rope;    // (N, KV) llama only
    std::vector<Real> att;       // (B, heads, T, T) softmax probabilities; not in dlayers_
    std::vector<Real> atty;      // (N, Q) attention output before the projection
    std::vector<Real> attproj;   // (N, C)
    std::vector<Real> res2;      // (N, C) x + attention branch
    std::vector<Real> ln2;       // (N, C)
    std::vector<Real> ln2_mean;  // (N) LayerNorm only; not in dlayers_
    std::vector<Real> ln2_rstd;  // (N) not in dlayers_
    std::vector<Real> fch;       // (N, F) fc output (gpt) / gate output (llama)
    std::vector<Real> up;        // (N, F) llama only
    std::vector<Real> fch_act;   // (N, F) gelu(fch) / silu(gate) * up
    std::vector<Real> fcproj;    // (N, C)
    std::vector<Real> res3;      // (N, C) layer output = next layer's input
    MoeState<Real> moe;          // MoE layers: what the block keeps; not in dlayers_
  };
  struct TopActs {
    std::vector<Real> encoded;   // (N, C)
    std::vector<Real> lnf;       // (N, C)
    std::vector<Real> lnf_mean;  // (N) not in dtop_
    std::vector<Real> lnf_rstd;  // (N) not in dtop_
    std::vector<Real> logits;    // (N, Vp)
    std::vector<Real> probs;     // (N, Vp) not in dtop_
    std::vector<Real> losses;    // (N)
  };

  GptModel() = default;
  void build_layout();
  template <class Add>
  void add_moe_tensors(Add& add, LayerOffsets& o, const std::string& pre, int64_t l, double std_w, double std_res);
  void init_params();
  void resize_activations(int64_t B, int64_t T);
  LayerActs make_layer_acts(bool for_grads) const;
  Real* p(int64_t offset) { return offset < 0 ? nullptr : params_.data() + offset; }
  Real* g(int64_t offset) { return offset < 0 ? nullptr : grads_.data() + offset; }
  void norm_forward(Real* out, Real* mean, Real* rstd, const Real* inp, int64_t w, int64_t b);
  void norm_backward(Real* dinp, const Real* dout, const Real* inp, const Real* mean,
                     const Real* rstd, int64_t w, int64_t b);
  void layer_forward(int64_t l, const Real* x, FlopCounter& flops);
  void layer_backward(int64_t l, const Real* x, Real* dx, FlopCounter& flops);
  MoeDims moe_dims() const;
  MoeTensors<Real> moe_tensors(const LayerOffsets& o, std::vector<Real>& buf);

  ModelSpec spec_;
  GptOptions options_;
  int64_t padded_vocab_ = 0;
  double rope_theta_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<int64_t> init_rows_;  // per tensor: leading rows drawn at init (rest padding)
  std::vector<double> init_std_;    // per tensor: > 0 normal(0, std); 0 zeros; < 0 ones
  int64_t wte_ = -1, wpe_ = -1, normf_w_ = -1, normf_b_ = -1, head_ = -1;
  std::vector<LayerOffsets> layer_offsets_;
  std::vector<Real> params_;  // (num elements of all tensors)
  std::vector<Real> grads_;   // same layout as params_
  std::vector<Real> adam_m_;  // same layout; allocated by the first update()
  std::vector<Real> adam_v_;

  int64_t B_ = 0, T_ = 0;  // shape the activations are sized for
  bool have_forward_ = false;
  std::vector<int32_t> tokens_, targets_;  // (B, T) of the last forward
  std::vector<LayerActs> layers_, dlayers_;
  TopActs top_, dtop_;
};

using Gpt = GptModel<float>;
extern template class GptModel<float>;
extern template class GptModel<double>;

}  // namespace loom::cpu
