#include "executor/cpu/gpt.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "executor/cpu/attention.hpp"
#include "executor/cpu/crossentropy.hpp"
#include "executor/cpu/encoder.hpp"
#include "executor/cpu/gelu.hpp"
#include "executor/cpu/layernorm.hpp"
#include "executor/cpu/matmul.hpp"
#include "executor/cpu/residual.hpp"
#include "executor/cpu/rmsnorm.hpp"
#include "executor/cpu/rng.hpp"
#include "executor/cpu/rope.hpp"
#include "executor/cpu/swiglu.hpp"

namespace loom::cpu {

// The model says its RoPE base (ModelSpec::rope_theta, from the zoo file or the Hugging Face
// config's rope_theta); no guessing from names.
double default_rope_theta(const ModelSpec& spec) { return spec.rope_theta; }

Status validate_for_cpu_model(const ModelSpec& spec, const GptOptions& options) {
  const auto positive = [](int64_t v) { return v > 0; };
  const std::pair<const char*, int64_t> sizes[] = {
      {"layers", spec.layers},     {"hidden", spec.hidden},         {"heads", spec.heads},
      {"kv_heads", spec.kv_heads}, {"ffn_hidden", spec.ffn_hidden}, {"vocab", spec.vocab},
      {"seq_len", spec.seq_len}};
  for (const auto& [field, value] : sizes) {
    if (!positive(value)) {
      return make_error(std::string("model.") + field,
                        "must be a positive integer (got " + std::to_string(value) + ")");
    }
  }
  if (spec.hidden % spec.heads != 0) {
    return make_error("model.hidden", "must be divisible by heads (got " +
                                          std::to_string(spec.hidden) + " and " +
                                          std::to_string(spec.heads) + ")");
  }
  if (spec.heads % spec.kv_heads != 0) {
    return make_error("model.kv_heads", "must divide heads (got " + std::to_string(spec.kv_heads) +
                                            " and " + std::to_string(spec.heads) + ")");
  }
  if (spec.family == Family::llama && spec.head_dim() % 2 != 0) {
    return make_error("model.hidden", "hidden / heads must be even for RoPE (got " +
                                          std::to_string(spec.head_dim()) + ")");
  }
  if (spec.vocab > INT32_MAX) {
    return make_error("model.vocab", "must fit int32 token ids");
  }
  if (options.padded_vocab != 0 && options.padded_vocab < spec.vocab) {
    return make_error("padded_vocab", "must be 0 or >= vocab (got " +
                                          std::to_string(options.padded_vocab) + " < " +
                                          std::to_string(spec.vocab) + ")");
  }
  if (options.rope_theta < 0) {
    return make_error("rope_theta", "must be > 0, or 0 for the family default");
  }
  return validate_moe_model(spec);
}

template <class Real>
Expected<GptModel<Real>> GptModel<Real>::create(const ModelSpec& spec, const GptOptions& options) {
  if (Status s = validate_for_cpu_model(spec, options); !s) return s.error();
  GptModel m;
  m.spec_ = spec;
  m.options_ = options;
  m.padded_vocab_ = options.padded_vocab != 0 ? options.padded_vocab : spec.vocab;
  m.rope_theta_ = options.rope_theta != 0 ? options.rope_theta : default_rope_theta(spec);
  m.build_layout();
  m.params_.assign(static_cast<size_t>(m.num_elements()), Real{0});
  m.grads_.assign(static_cast<size_t>(m.num_elements()), Real{0});
  m.init_params();
  return m;
}

template <class Real>
Expected<GptModel<Real>> GptModel<Real>::layout_only(const ModelSpec& spec, const GptOptions& options) {
  if (Status s = validate_for_cpu_model(spec, options); !s) return s.error();
  GptModel m;
  m.spec_ = spec;
  m.options_ = options;
  m.padded_vocab_ = options.padded_vocab != 0 ? options.padded_vocab : spec.vocab;
  m.rope_theta_ = options.rope_theta != 0 ? options.rope_theta : default_rope_theta(spec);
  m.build_layout();
  return m;
}

template <class Real>
int64_t GptModel<Real>::num_elements() const {
  return tensors_.empty() ? 0 : tensors_.back().offset + tensors_.back().numel;
}

// Draw j of stream Rng(s) reads next_u64 twice, at states s + 2j g and s + (2j + 1) g (g the
// splitmix64 increment): a stream started at s + 2j g draws it first.
template <class Real>
Real GptModel<Real>::init_value(size_t i, int64_t j) const {
  const TensorInfo& t = tensors_[i];
  if (j >= init_rows_[i] * (t.numel / t.shape[0])) return Real{0};  // padding rows
  if (init_std_[i] <= 0) return init_std_[i] < 0 ? Real{1} : Real{0};
  Rng rng(mix(options_.seed, i) + 2 * static_cast<uint64_t>(j) * 0x9e3779b97f4a7c15ULL);
  return static_cast<Real>(init_std_[i] * rng.normal());
}

// MoE: router (E, C) replicated over tp; shared experts (Fs, C | C, Fs) split over tp as the
// dense MLP; experts (E, Fe, C | E, C, Fe) split over ep by expert and over etp along Fe.
// Initialised as the MLP they replace. `add` is build_layout's tensor adder.
template <class Real>
template <class Add>
void GptModel<Real>::add_moe_tensors(Add& add, LayerOffsets& o, const std::string& pre, int64_t l, double std_w,
                                     double std_res) {
  const bool gpt = spec_.family == Family::gpt;
  const int64_t C = spec_.hidden, E = spec_.experts, Fe = spec_.expert_ffn_hidden, Fs = spec_.shared_experts * Fe;
  const std::string in = gpt ? "fc" : "gate", out = gpt ? "proj" : "down";
  o.router_w = add(pre + "mlp.router.weight", {E, C}, l, -1, std_w);
  o.efc_w = add(pre + "mlp.experts." + in + ".weight", {E, Fe, C}, l, 0, std_w);
  tensors_.back().experts = E;
  if (!gpt) {
    o.eup_w = add(pre + "mlp.experts.up.weight", {E, Fe, C}, l, 0, std_w);
    tensors_.back().experts = E;
  }
  o.eproj_w = add(pre + "mlp.experts." + out + ".weight", {E, C, Fe}, l, 1, std_res);
  tensors_.back().experts = E;
  if (Fs == 0) return;
  o.sfc_w = add(pre + "mlp.shared." + in + ".weight", {Fs, C}, l, 0, std_w);
  if (!gpt) o.sup_w = add(pre + "mlp.shared.up.weight", {Fs, C}, l, 0, std_w);
  o.sproj_w = add(pre + "mlp.shared." + out + ".weight", {C, Fs}, l, 1, std_res);
}

// Layer-major layout (all of layer 0, then layer 1, ...) so that a pipeline stage's or an FSDP
// unit's parameters are one contiguous range.
template <class Real>
void GptModel<Real>::build_layout() {
  const bool gpt = spec_.family == Family::gpt;
  const int64_t C = spec_.hidden, Q = spec_.heads * spec_.head_dim(), KV = spec_.kv_dim();
  const int64_t F = spec_.ffn_hidden, Vp = padded_vocab_;
  // GPT-2 init: normal(0, 0.02); the two projections into the residual stream scaled by
  // 1/sqrt(2 * layers) (Radford et al. 2019, section 2.3); biases 0, norm weights 1.
  const double std_w = 0.02;
  const double std_res = 0.02 / std::sqrt(2.0 * static_cast<double>(spec_.layers));
  int64_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, int64_t layer, int split,
                 double init_std, int64_t init_rows = -1) {
    TensorInfo t;
    t.name = std::move(name);
    t.offset = offset;
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= d;
    t.layer = layer;
    t.weight_decay = t.shape.size() >= 2;
    t.tp_split_dim = split;
    init_rows_.push_back(init_rows < 0 ? t.shape[0] : init_rows);
    init_std_.push_back(init_std);
    offset += t.numel;
    tensors_.push_back(std::move(t));
    return tensors_.back().offset;
  };
  constexpr double kZeros = 0, kOnes = -1;
  wte_ = add("tok_emb.weight", {Vp, C}, -1, 0, std_w, spec_.vocab);
  if (gpt) wpe_ = add("pos_emb.weight", {spec_.seq_len, C}, -1, -1, std_w);
  for (int64_t l = 0; l < spec_.layers; l++) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.norm1_w = add(pre + "norm1.weight", {C}, l, -1, kOnes);
    if (gpt) o.norm1_b = add(pre + "norm1.bias", {C}, l, -1, kZeros);
    o.q_w = add(pre + "attn.q.weight", {Q, C}, l, 0, std_w);
    if (gpt) o.q_b = add(pre + "attn.q.bias", {Q}, l, 0, kZeros);
    o.k_w = add(pre + "attn.k.weight", {KV, C}, l, 0, std_w);
    if (gpt) o.k_b = add(pre + "attn.k.bias", {KV}, l, 0, kZeros);
    o.v_w = add(pre + "attn.v.weight", {KV, C}, l, 0, std_w);
    if (gpt) o.v_b = add(pre + "attn.v.bias", {KV}, l, 0, kZeros);
    o.o_w = add(pre + "attn.o.weight", {C, Q}, l, 1, std_res);
    if (gpt) o.o_b = add(pre + "attn.o.bias", {C}, l, -1, kZeros);
    o.norm2_w = add(pre + "norm2.weight", {C}, l, -1, kOnes);
    if (gpt) o.norm2_b = add(pre + "norm2.bias", {C}, l, -1, kZeros);
    if (moe_layer(spec_, l)) {
      add_moe_tensors(add, o, pre, l, std_w, std_res);
    } else if (gpt) {
      o.fc_w = add(pre + "mlp.fc.weight", {F, C}, l, 0, std_w);
      o.fc_b = add(pre + "mlp.fc.bias", {F}, l, 0, kZeros);
      o.proj_w = add(pre + "mlp.proj.weight", {C, F}, l, 1, std_res);
      o.proj_b = add(pre + "mlp.proj.bias", {C}, l, -1, kZeros);
    } else {
      o.fc_w = add(pre + "mlp.gate.weight", {F, C}, l, 0, std_w);
      o.up_w = add(pre + "mlp.up.weight", {F, C}, l, 0, std_w);
      o.proj_w = add(pre + "mlp.down.weight", {C, F}, l, 1, std_res);
    }
    layer_offsets_.push_back(o);
  }
  normf_w_ = add("norm_f.weight", {C}, -1, -1, kOnes);
  if (gpt) normf_b_ = add("norm_f.bias", {C}, -1, -1, kZeros);
  head_ = spec_.tied_embeddings ? wte_ : add("lm_head.weight", {Vp, C}, -1, 0, std_w, spec_.vocab);
}

template <class Real>
void GptModel<Real>::init_params() {
  for (size_t i = 0; i < tensors_.size(); i++) {
    const TensorInfo& t = tensors_[i];
    Real* w = params_.data() + t.offset;
    const int64_t drawn = init_rows_[i] * (t.numel / t.shape[0]);  // rows past it: padding, 0
    if (init_std_[i] > 0) {
      Rng rng(mix(options_.seed, i));
      for (int64_t j = 0; j < drawn; j++) w[j] = static_cast<Real>(init_std_[i] * rng.normal());
    } else {
      const Real value = init_std_[i] < 0 ? Real{1} : Real{0};
      for (int64_t j = 0; j < drawn; j++) w[j] = value;
    }
  }
}

template <class Real>
int64_t GptModel<Real>::num_params() const {
  int64_t n = 0;
  for (size_t i = 0; i < tensors_.size(); i++) {
    n += init_rows_[i] * (tensors_[i].numel / tensors_[i].shape[0]);
  }
  return n;
}

template <class Real>
const TensorInfo* GptModel<Real>::find(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

template <class Real>
typename GptModel<Real>::LayerActs GptModel<Real>::make_layer_acts(bool for_grads) const {
  const bool gpt = spec_.family == Family::gpt;
  const int64_t N = B_ * T_, C = spec_.hidden, Q = spec_.heads * spec_.head_dim();
  const int64_t KV = spec_.kv_dim(), F = spec_.ffn_hidden;
  auto vec = [](int64_t n) { return std::vector<Real>(static_cast<size_t>(n), Real{0}); };
  LayerActs a;
  a.ln1 = vec(N * C);
  a.q = vec(N * Q);
  a.k = vec(N * KV);
  a.v = vec(N * KV);
  if (!gpt) {
    a.q_rope = vec(N * Q);
    a.k_rope = vec(N * KV);
  }
  a.atty = vec(N * Q);
  a.attproj = vec(N * C);
  a.res2 = vec(N * C);
  a.ln2 = vec(N * C);
  a.fch = vec(N * F);
  if (!gpt) a.up = vec(N * F);
  a.fch_act = vec(N * F);
  a.fcproj = vec(N * C);
  a.res3 = vec(N * C);
  if (!for_grads) {  // saved statistics: backward reads them, nothing differentiates them
    if (gpt) {
      a.ln1_mean = vec(N);
      a.ln2_mean = vec(N);
    }
    a.ln1_rstd = vec(N);
    a.ln2_rstd = vec(N);
    a.att = vec(B_ * spec_.heads * T_ * T_);
  }
  return a;
}

template <class Real>
void GptModel<Real>::resize_activations(int64_t B, int64_t T) {
  if (B == B_ && T == T_ && !layers_.empty()) return;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = spec_.hidden, Vp = padded_vocab_;
  layers_.clear();
  dlayers_.clear();
  for (int64_t l = 0; l < spec_.layers; l++) {
    layers_.push_back(make_layer_acts(false));
    dlayers_.push_back(make_layer_acts(true));
  }
  auto vec = [](int64_t n) { return std::vector<Real>(static_cast<size_t>(n), Real{0}); };
  top_ = TopActs{vec(N * C), vec(N * C), vec(N), vec(N), vec(N * Vp), vec(N * Vp), vec(N)};
  dtop_ = TopActs{vec(N * C), vec(N * C), {}, {}, vec(N * Vp), {}, vec(N)};
}

template <class Real>
void GptModel<Real>::norm_forward(Real* out, Real* mean, Real* rstd, const Real* inp, int64_t w,
                                  int64_t b) {
  const int64_t N = B_ * T_, C = spec_.hidden;
  if (spec_.family == Family::gpt) {
    layernorm_forward(out, mean, rstd, inp, p(w), p(b), N, C, spec_.norm_eps);
  } else {
    rmsnorm_forward(out, rstd, inp, p(w), N, C, spec_.norm_eps);
  }
}

template <class Real>
void GptModel<Real>::norm_backward(Real* dinp, const Real* dout, const Real* inp, const Real* mean,
                                   const Real* rstd, int64_t w, int64_t b) {
  const int64_t N = B_ * T_, C = spec_.hidden;
  if (spec_.family == Family::gpt) {
    layernorm_backward(dinp, g(w), g(b), dout, inp, p(w), mean, rstd, N, C);
  } else {
    rmsnorm_backward(dinp, g(w), dout, inp, p(w), rstd, N, C);
  }
}

template <class Real>
Expected<Real> GptModel<Real>::forward(const int32_t* tokens, const int32_t* targets, int64_t B,
                                       int64_t T, FlopCounter& flops) {
  if (B < 1) return make_error("forward", "batch B must be >= 1 (got " + std::to_string(B) + ")");
  if (T < 1 || T > spec_.seq_len) {
    return make_error("forward",
                      "sequence T must be in [1, seq_len = " + std::to_string(spec_.seq_len) +
                          "] (got " + std::to_string(T) + ")");
  }
  for (int64_t i = 0; i < B * T; i++) {
    if (tokens[i] < 0 || tokens[i] >= spec_.vocab || targets[i] < 0 || targets[i] >= spec_.vocab) {
      return make_error(
          "forward", "token ids and targets must be in [0, vocab = " + std::to_string(spec_.vocab) +
                         ") (position " + std::to_string(i) + ")");
    }
  }
  resize_activations(B, T);
  tokens_.assign(tokens, tokens + B * T);
  targets_.assign(targets, targets + B * T);
  const int64_t N = B * T, C = spec_.hidden, Vp = padded_vocab_;

  encoder_forward(top_.encoded.data(), tokens, p(wte_), p(wpe_), B, T, C);
  for (int64_t l = 0; l < spec_.layers; l++) {
    const Real* x = l == 0 ? top_.encoded.data() : layers_[l - 1].res3.data();
    layer_forward(l, x, flops);
  }
  const Real* x_last = layers_.back().res3.data();
  norm_forward(top_.lnf.data(), top_.lnf_mean.data(), top_.lnf_rstd.data(), x_last, normf_w_,
               normf_b_);
  matmul_forward(top_.logits.data(), top_.lnf.data(), p(head_), static_cast<const Real*>(nullptr),
                 N, C, Vp, flops);
  crossentropy_forward(top_.losses.data(), top_.probs.data(), top_.logits.data(), targets, N,
                       spec_.vocab, Vp);
  double sum = 0;  // in order, in double: the mean does not depend on N's rounding drift
  for (int64_t i = 0; i < N; i++) sum += static_cast<double>(top_.losses[i]);
  have_forward_ = true;
  return static_cast<Real>(sum / static_cast<double>(N));
}

template <class Real>
void GptModel<Real>::layer_forward(int64_t l, const Real* x, FlopCounter& flops) {
  const bool gpt = spec_.family == Family::gpt;
  const int64_t B = B_, T = T_, N = B * T, C = spec_.hidden, hd = spec_.head_dim();
  const int64_t H = spec_.heads, Hkv = spec_.kv_heads, Q = H * hd, KV = Hkv * hd;
  const int64_t F = spec_.ffn_hidden;
  const LayerOffsets& o = layer_offsets_[l];
  LayerActs& a = layers_[l];

  norm_forward(a.ln1.data(), gpt ? a.ln1_mean.data() : nullptr, a.ln1_rstd.data(), x, o.norm1_w,
               o.norm1_b);
  matmul_forward(a.q.data(), a.ln1.data(), p(o.q_w), p(o.q_b), N, C, Q, flops);
  matmul_forward(a.k.data(), a.ln1.data(), p(o.k_w), p(o.k_b), N, C, KV, flops);
  matmul_forward(a.v.data(), a.ln1.data(), p(o.v_w), p(o.v_b), N, C, KV, flops);
  const Real* q = a.q.data();
  const Real* k = a.k.data();
  if (!gpt) {
    rope_forward(a.q_rope.data(), a.q.data(), B, T, H, hd, rope_theta_);
    rope_forward(a.k_rope.data(), a.k.data(), B, T, Hkv, hd, rope_theta_);
    q = a.q_rope.data();
    k = a.k_rope.data();
  }
  attention_forward(a.atty.data(), a.att.data(), q, k, a.v.data(), B, T, H, Hkv, hd, flops);
  matmul_forward(a.attproj.data(), a.atty.data(), p(o.o_w), p(o.o_b), N, Q, C, flops);
  residual_forward(a.res2.data(), x, a.attproj.data(), N * C);

  norm_forward(a.ln2.data(), gpt ? a.ln2_mean.data() : nullptr, a.ln2_rstd.data(), a.res2.data(),
               o.norm2_w, o.norm2_b);
  if (o.router_w >= 0) {  // one rank holds every expert: the exchange is a copy
    LocalExchange local;
    (void)moe_forward(a.fcproj.data(), a.ln2.data(), moe_tensors(o, params_), moe_dims(), a.moe, local, flops);
    residual_forward(a.res3.data(), a.res2.data(), a.fcproj.data(), N * C);
    return;
  }
  matmul_forward(a.fch.data(), a.ln2.data(), p(o.fc_w), p(o.fc_b), N, C, F, flops);
  if (gpt) {
    gelu_forward(a.fch_act.data(), a.fch.data(), N * F);
  } else {
    matmul_forward(a.up.data(), a.ln2.data(), p(o.up_w), static_cast<const Real*>(nullptr), N, C, F,
                   flops);
    swiglu_forward(a.fch_act.data(), a.fch.data(), a.up.data(), N * F);
  }
  matmul_forward(a.fcproj.data(), a.fch_act.data(), p(o.proj_w), p(o.proj_b), N, F, C, flops);
  residual_forward(a.res3.data(), a.res2.data(), a.fcproj.data(), N * C);
}

template <class Real>
Status GptModel<Real>::backward(FlopCounter& flops, double loss_scale) {
  if (!have_forward_) return make_error("backward", "needs a forward first");
  const int64_t N = B_ * T_, C = spec_.hidden, Vp = padded_vocab_;
  // Activation gradients start at 0 because every op's backward adds into its d-inputs.
  auto zero = [](std::vector<Real>& v) { std::fill(v.begin(), v.end(), Real{0}); };
  for (LayerActs& d : dlayers_) {
    for (auto* v : {&d.ln1, &d.q, &d.k, &d.v, &d.q_rope, &d.k_rope, &d.atty, &d.attproj, &d.res2,
                    &d.ln2, &d.fch, &d.up, &d.fch_act, &d.fcproj, &d.res3}) {
      zero(*v);
    }
  }
  for (auto* v : {&dtop_.encoded, &dtop_.lnf, &dtop_.logits}) zero(*v);

  // mean loss: each position's loss enters with weight loss_scale / N
  std::fill(dtop_.losses.begin(), dtop_.losses.end(),
            static_cast<Real>(loss_scale / static_cast<double>(N)));
  crossentropy_backward(dtop_.logits.data(), dtop_.losses.data(), top_.probs.data(),
                        targets_.data(), N, spec_.vocab, Vp);
  Real* dx_last = dlayers_.back().res3.data();
  matmul_backward(dtop_.lnf.data(), g(head_), static_cast<Real*>(nullptr), dtop_.logits.data(),
                  top_.lnf.data(), p(head_), N, C, Vp, flops);
  norm_backward(dx_last, dtop_.lnf.data(), layers_.back().res3.data(), top_.lnf_mean.data(),
                top_.lnf_rstd.data(), normf_w_, normf_b_);
  for (int64_t l = spec_.layers - 1; l >= 0; l--) {
    const Real* x = l == 0 ? top_.encoded.data() : layers_[l - 1].res3.data();
    Real* dx = l == 0 ? dtop_.encoded.data() : dlayers_[l - 1].res3.data();
    layer_backward(l, x, dx, flops);
  }
  encoder_backward(g(wte_), g(wpe_), dtop_.encoded.data(), tokens_.data(), B_, T_, C);
  return ok_status();
}

// The forward in reverse; the gradient of the layer output is in dlayers_[l].res3, and the
// gradient of its input x is added into dx.
template <class Real>
void GptModel<Real>::layer_backward(int64_t l, const Real* x, Real* dx, FlopCounter& flops) {
  const bool gpt = spec_.family == Family::gpt;
  const int64_t B = B_, T = T_, N = B * T, C = spec_.hidden, hd = spec_.head_dim();
  const int64_t H = spec_.heads, Hkv = spec_.kv_heads, Q = H * hd, KV = Hkv * hd;
  const int64_t F = spec_.ffn_hidden;
  const LayerOffsets& o = layer_offsets_[l];
  const LayerActs& a = layers_[l];
  LayerActs& d = dlayers_[l];

  residual_backward(d.res2.data(), d.fcproj.data(), d.res3.data(), N * C);
  if (o.router_w >= 0) {
    LocalExchange local;
    (void)moe_backward(d.ln2.data(), moe_tensors(o, grads_), d.fcproj.data(), a.ln2.data(), moe_tensors(o, params_),
                       moe_dims(), a.moe, local, flops);
  } else {
  matmul_backward(d.fch_act.data(), g(o.proj_w), g(o.proj_b), d.fcproj.data(), a.fch_act.data(),
                  p(o.proj_w), N, F, C, flops);
  if (gpt) {
    gelu_backward(d.fch.data(), a.fch.data(), d.fch_act.data(), N * F);
  } else {
    swiglu_backward(d.fch.data(), d.up.data(), d.fch_act.data(), a.fch.data(), a.up.data(), N * F);
    matmul_backward(d.ln2.data(), g(o.up_w), static_cast<Real*>(nullptr), d.up.data(), a.ln2.data(),
                    p(o.up_w), N, C, F, flops);
  }
  matmul_backward(d.ln2.data(), g(o.fc_w), g(o.fc_b), d.fch.data(), a.ln2.data(), p(o.fc_w), N, C,
                  F, flops);
  }
  norm_backward(d.res2.data(), d.ln2.data(), a.res2.data(), gpt ? a.ln2_mean.data() : nullptr,
                a.ln2_rstd.data(), o.norm2_w, o.norm2_b);

  residual_backward(dx, d.attproj.data(), d.res2.data(), N * C);
  matmul_backward(d.atty.data(), g(o.o_w), g(o.o_b), d.attproj.data(), a.atty.data(), p(o.o_w), N,
                  Q, C, flops);
  if (gpt) {
    attention_backward(d.q.data(), d.k.data(), d.v.data(), d.atty.data(), a.att.data(), a.q.data(),
                       a.k.data(), a.v.data(), B, T, H, Hkv, hd, flops);
  } else {
    attention_backward(d.q_rope.data(), d.k_rope.data(), d.v.data(), d.atty.data(), a.att.data(),
                       a.q_rope.data(), a.k_rope.data(), a.v.data(), B, T, H, Hkv, hd, flops);
    rope_backward(d.q.data(), d.q_rope.data(), B, T, H, hd, rope_theta_);
    rope_backward(d.k.data(), d.k_rope.data(), B, T, Hkv, hd, rope_theta_);
  }
  matmul_backward(d.ln1.data(), g(o.q_w), g(o.q_b), d.q.data(), a.ln1.data(), p(o.q_w), N, C, Q,
                  flops);
  matmul_backward(d.ln1.data(), g(o.k_w), g(o.k_b), d.k.data(), a.ln1.data(), p(o.k_w), N, C, KV,
                  flops);
  matmul_backward(d.ln1.data(), g(o.v_w), g(o.v_b), d.v.data(), a.ln1.data(), p(o.v_w), N, C, KV,
                  flops);
  norm_backward(dx, d.ln1.data(), x, gpt ? a.ln1_mean.data() : nullptr, a.ln1_rstd.data(),
                o.norm1_w, o.norm1_b);
}

template <class Real>
MoeDims GptModel<Real>::moe_dims() const {
  MoeDims d;
  d.rows = B_ * T_;
  d.C = spec_.hidden;
  d.E = spec_.experts;
  d.k = spec_.experts_per_token;
  d.Fe = spec_.expert_ffn_hidden;
  d.Fs = spec_.shared_experts * spec_.expert_ffn_hidden;
  d.swiglu = spec_.family == Family::llama;
  return d;
}

template <class Real>
MoeTensors<Real> GptModel<Real>::moe_tensors(const LayerOffsets& o, std::vector<Real>& buf) {
  auto at = [&](int64_t off) { return off < 0 ? nullptr : buf.data() + off; };
  return {at(o.router_w), at(o.efc_w), at(o.eup_w), at(o.eproj_w), at(o.sfc_w), at(o.sup_w), at(o.sproj_w)};
}

template <class Real>
void GptModel<Real>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), Real{0});
}

template <class Real>
void GptModel<Real>::update(const AdamWConfig& config, int64_t step) {
  if (adam_m_.empty()) {
    adam_m_.assign(params_.size(), Real{0});
    adam_v_.assign(params_.size(), Real{0});
  }
  for (const TensorInfo& t : tensors_) {
    AdamWConfig c = config;
    if (!t.weight_decay) c.weight_decay = 0;
    adamw_step(params_.data() + t.offset, grads_.data() + t.offset, adam_m_.data() + t.offset,
               adam_v_.data() + t.offset, t.numel, step, c);
  }
}

template class GptModel<float>;
template class GptModel<double>;

}  // namespace loom::cpu
