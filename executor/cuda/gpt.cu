#include "executor/cuda/gpt.cuh"

#include <cmath>

#include "executor/cuda/attention.cuh"
#include "executor/cuda/crossentropy.cuh"
#include "executor/cuda/encoder.cuh"
#include "executor/cuda/grad_norm.cuh"
#include "executor/cuda/init.cuh"
#include "executor/cuda/layernorm.cuh"

namespace loom::cuda {
namespace {
constexpr int64_t kTensorAlign = 128;  // elements
constexpr int64_t kBufferAlign = 256;  // bytes
int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// The CPU reference's splitmix64 stream mixer (executor/cpu/rng.hpp), for the init streams.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
uint64_t mix(uint64_t seed, uint64_t stream) {
  return splitmix64(seed ^ splitmix64(stream + 0x632be59bd9b4e019ULL));
}
}  // namespace

// Buffers are registered (slot, bytes, category), summed, then bound to one allocation: the
// prediction and the allocation come from the same list, so they cannot disagree.
class Gpt::Arena {
 public:
  enum Category { kWeights, kGrads, kOptimizer, kActivations, kLogits, kWorkspace };
  template <class T>
  void add(T** slot, int64_t count, Category category) {
    entries_.push_back({reinterpret_cast<void**>(slot), round_up(count * int64_t(sizeof(T)), kBufferAlign), category});
  }
  int64_t total() const {
    int64_t t = 0;
    for (const Entry& e : entries_) t += e.bytes;
    return t;
  }
  MemoryBytes by_category() const {
    MemoryBytes m;
    for (const Entry& e : entries_) {
      switch (e.category) {
        case kWeights: m.weights += e.bytes; break;
        case kGrads: m.grads += e.bytes; break;
        case kOptimizer: m.optimizer += e.bytes; break;
        case kActivations: m.activations += e.bytes; break;
        case kLogits: m.logits += e.bytes; break;
        case kWorkspace: m.workspace += e.bytes; break;
      }
    }
    m.workspace += static_cast<int64_t>(Gemm::kWorkspaceBytes);
    return m;
  }
  void bind(void* base) {
    int64_t offset = 0;
    for (const Entry& e : entries_) {
      *e.slot = static_cast<char*>(base) + offset;
      offset += e.bytes;
    }
  }

 private:
  struct Entry {
    void** slot;
    int64_t bytes;
    Category category;
  };
  std::vector<Entry> entries_;
};

int64_t padded_vocab(int64_t vocab) { return round_up(vocab, 128); }

Status validate_for_cuda_model(const ModelSpec& s, int64_t B, int64_t T) {
  const auto rule = [](const std::string& field, const std::string& r) { return make_error(field, r); };
  if (s.family != Family::gpt) return rule("model.family", "the CUDA backend runs the gpt family only (llama: not yet)");
  if (s.layers < 1 || s.hidden < 1 || s.heads < 1 || s.vocab < 1 || s.ffn_hidden < 1) {
    return rule("model", "layers, hidden, heads, ffn_hidden and vocab must be positive");
  }
  if (s.kv_heads != s.heads) return rule("model.kv_heads", "must equal heads on the CUDA backend (no GQA for gpt)");
  if (s.hidden % s.heads != 0 || s.hidden / s.heads != kAttentionHeadSize) {
    return rule("model.hidden", "hidden / heads must be 64, the attention kernel's head size (got " +
                                    std::to_string(s.hidden / std::max<int64_t>(1, s.heads)) + ")");
  }
  if (s.hidden % 8 != 0 || s.ffn_hidden % 8 != 0) return rule("model.hidden", "hidden and ffn_hidden must be multiples of 8");
  if (B < 1) return rule("parallel.micro_batch", "must be >= 1");
  if (T < kAttentionBlock || T % kAttentionBlock != 0 || T > s.seq_len) {
    return rule("train.seq", "must be a multiple of 64 in [64, seq_len = " + std::to_string(s.seq_len) +
                                 "] on the CUDA backend (got " + std::to_string(T) + ")");
  }
  return ok_status();
}

void Gpt::build_layout() {
  const int64_t C = C_, F = F_, Vp = Vp_;
  int64_t offset = 0;
  int cpu = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, int cpu_index) {
    ParamTensor t;
    t.name = std::move(name);
    t.offset = offset;
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= d;
    t.decay = t.shape.size() >= 2;
    offset = round_up(offset + t.numel, kTensorAlign);
    tensors_.push_back(std::move(t));
    cpu_index_.push_back(cpu_index);
    return tensors_.back().offset;
  };
  wte_ = add("tok_emb.weight", {Vp, C}, cpu++);
  wpe_ = add("pos_emb.weight", {spec_.seq_len, C}, cpu++);
  for (int64_t l = 0; l < L_; l++) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    const int base = cpu;  // the CPU layout's 16 tensors of this layer start here
    LayerOffsets o;
    o.ln1_w = add(pre + "norm1.weight", {C}, base + 0);
    o.ln1_b = add(pre + "norm1.bias", {C}, base + 1);
    o.qkv_w = add(pre + "attn.qkv.weight", {3 * C, C}, base + 2);  // q.w, k.w, v.w: base + 2, 4, 6
    o.qkv_b = add(pre + "attn.qkv.bias", {3 * C}, base + 3);
    o.o_w = add(pre + "attn.o.weight", {C, C}, base + 8);
    o.o_b = add(pre + "attn.o.bias", {C}, base + 9);
    o.ln2_w = add(pre + "norm2.weight", {C}, base + 10);
    o.ln2_b = add(pre + "norm2.bias", {C}, base + 11);
    o.fc_w = add(pre + "mlp.fc.weight", {F, C}, base + 12);
    o.fc_b = add(pre + "mlp.fc.bias", {F}, base + 13);
    o.proj_w = add(pre + "mlp.proj.weight", {C, F}, base + 14);
    o.proj_b = add(pre + "mlp.proj.bias", {C}, base + 15);
    layer_.push_back(o);
    cpu += 16;
  }
  lnf_w_ = add("norm_f.weight", {C}, cpu++);
  lnf_b_ = add("norm_f.bias", {C}, cpu++);
  head_ = spec_.tied_embeddings ? wte_ : add("lm_head.weight", {Vp, C}, cpu++);
  num_params_padded_ = offset;
}

int64_t Gpt::num_params() const {
  int64_t n = 0;
  for (const ParamTensor& t : tensors_) n += t.numel;
  const int64_t vocab_tables = spec_.tied_embeddings ? 1 : 2;
  return n - vocab_tables * (Vp_ - spec_.vocab) * C_;
}

Status Gpt::plan_buffers(Arena& a) {
  const int64_t P = num_params_padded_, N = N_, C = C_, F = F_;
  a.add(&params_, P, Arena::kWeights);
  a.add(&grads_, P, Arena::kGrads);
  a.add(&master_, P, Arena::kOptimizer);
  a.add(&adam_m_, P, Arena::kOptimizer);
  a.add(&adam_v_, P, Arena::kOptimizer);
  acts_.assign(static_cast<size_t>(L_), LayerActs{});
  a.add(&encoded_, N * C, Arena::kActivations);
  for (LayerActs& x : acts_) {
    a.add(&x.ln1, N * C, Arena::kActivations);
    a.add(&x.ln1_mean, N, Arena::kActivations);
    a.add(&x.ln1_rstd, N, Arena::kActivations);
    a.add(&x.qkv, N * 3 * C, Arena::kActivations);
    a.add(&x.atty, N * C, Arena::kActivations);
    a.add(&x.lse, N * NH_, Arena::kActivations);
    a.add(&x.res2, N * C, Arena::kActivations);
    a.add(&x.ln2, N * C, Arena::kActivations);
    a.add(&x.ln2_mean, N, Arena::kActivations);
    a.add(&x.ln2_rstd, N, Arena::kActivations);
    a.add(&x.fch, N * F, Arena::kActivations);
    a.add(&x.fch_gelu, N * F, Arena::kActivations);
    a.add(&x.res3, N * C, Arena::kActivations);
  }
  a.add(&lnf_, N * C, Arena::kActivations);
  a.add(&lnf_mean_, N, Arena::kActivations);
  a.add(&lnf_rstd_, N, Arena::kActivations);
  a.add(&proj_out_, N * C, Arena::kActivations);
  a.add(&dres_, N * C, Arena::kActivations);
  a.add(&dln_, N * C, Arena::kActivations);
  a.add(&datty_, N * C, Arena::kActivations);
  a.add(&dqkv_, N * 3 * C, Arena::kActivations);
  a.add(&dfch_, N * F, Arena::kActivations);
  a.add(&delta_, N * NH_, Arena::kActivations);
  a.add(&logits_, N * Vp_, Arena::kLogits);
  a.add(&losses_, N, Arena::kLogits);
  int64_t scratch = kGradNormBlocks;
  for (int64_t oc : {3 * C, C, F, Vp_}) scratch = std::max(scratch, bias_scratch_floats(N, oc));
  scratch = std::max(scratch, layernorm_scratch_floats(N, C));
  a.add(&reduce_scratch_, scratch, Arena::kWorkspace);
  a.add(&scalars_, 4, Arena::kWorkspace);
  std::vector<TensorRange> ranges;
  for (const ParamTensor& t : tensors_) ranges.push_back({t.offset, t.numel, t.decay});
  host_chunks_ = adamw_chunks(ranges, 1.0f);  // decay flag as 1/0; the rate is applied per step
  num_chunks_ = static_cast<int64_t>(host_chunks_.size());
  a.add(&chunks_, num_chunks_, Arena::kWorkspace);
  return ok_status();
}

Expected<MemoryBytes> Gpt::memory_needed(const ModelSpec& spec, int64_t B, int64_t T) {
  LOOM_TRY(validate_for_cuda_model(spec, B, T));
  Gpt m;
  m.spec_ = spec;
  m.B_ = B, m.T_ = T, m.N_ = B * T, m.C_ = spec.hidden, m.NH_ = spec.heads;
  m.F_ = spec.ffn_hidden, m.L_ = spec.layers, m.Vp_ = cuda::padded_vocab(spec.vocab);
  m.build_layout();
  Arena arena;
  LOOM_TRY(m.plan_buffers(arena));
  return arena.by_category();
}

Expected<std::unique_ptr<Gpt>> Gpt::create(const ModelSpec& spec, int64_t B, int64_t T,
                                           uint64_t seed, cudaStream_t stream) {
  LOOM_TRY(validate_for_cuda_model(spec, B, T));
  std::unique_ptr<Gpt> m(new Gpt());
  m->spec_ = spec;
  m->B_ = B, m->T_ = T, m->N_ = B * T, m->C_ = spec.hidden, m->NH_ = spec.heads;
  m->F_ = spec.ffn_hidden, m->L_ = spec.layers, m->Vp_ = cuda::padded_vocab(spec.vocab);
  m->stream_ = stream;
  m->build_layout();
  Arena arena;
  LOOM_TRY(m->plan_buffers(arena));
  m->memory_ = arena.by_category();
  auto gemm = Gemm::create();
  if (!gemm) return gemm.error();
  m->gemm_ = std::move(gemm.value());
  const int64_t bytes = arena.total();
  LOOM_TRY(cuda_status(cudaMalloc(&m->arena_, static_cast<size_t>(bytes)), "model buffers", {{"bytes", bytes}}));
  arena.bind(m->arena_);
  LOOM_TRY(cuda_status(cudaMemsetAsync(m->grads_, 0, sizeof(float) * m->num_params_padded_, stream),
                       "zero gradients", {{"params", m->num_params_padded_}}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(m->adam_m_, 0, sizeof(float) * m->num_params_padded_, stream), "zero m", {}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(m->adam_v_, 0, sizeof(float) * m->num_params_padded_, stream), "zero v", {}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(m->master_, 0, sizeof(float) * m->num_params_padded_, stream), "zero master", {}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(m->scalars_, 0, 4 * sizeof(float), stream), "zero scalars", {}));
  LOOM_TRY(m->init_params(seed));
  LOOM_TRY(cuda_status(cudaStreamSynchronize(stream), "model init", {}));
  return std::move(m);
}

Gpt::~Gpt() {
  if (arena_) cudaFree(arena_);
}

// GPT-2 init as the CPU reference: normal(0, 0.02); the two projections into the residual
// stream 0.02 / sqrt(2 layers) (Radford et al. 2019, section 2.3); biases 0; norm weights 1;
// padded vocabulary rows 0.
Status Gpt::init_params(uint64_t seed) {
  const double std_w = 0.02, std_res = 0.02 / std::sqrt(2.0 * static_cast<double>(L_));
  constexpr double kZeros = 0, kOnes = -1;
  for (size_t i = 0; i < tensors_.size(); i++) {
    const ParamTensor& t = tensors_[i];
    const int cpu = static_cast<int>(cpu_index_[i]);
    float* dst = master_ + t.offset;
    const std::string& n = t.name;
    auto ends_with = [&](const char* s) {
      const std::string suffix(s);
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (n == "tok_emb.weight" || n == "lm_head.weight") {
      LOOM_TRY(init_tensor(dst, spec_.vocab * C_, mix(seed, cpu), 0, std_w, stream_));
    } else if (ends_with("attn.qkv.weight")) {
      for (int part = 0; part < 3; part++) {  // q, k, v: CPU tensors base+2, base+4, base+6
        LOOM_TRY(init_tensor(dst + part * C_ * C_, C_ * C_, mix(seed, cpu + 2 * part), 0, std_w, stream_));
      }
    } else if (ends_with("attn.o.weight") || ends_with("mlp.proj.weight")) {
      LOOM_TRY(init_tensor(dst, t.numel, mix(seed, cpu), 0, std_res, stream_));
    } else if (t.shape.size() >= 2) {
      LOOM_TRY(init_tensor(dst, t.numel, mix(seed, cpu), 0, std_w, stream_));
    } else if (ends_with(".weight")) {
      LOOM_TRY(init_tensor(dst, t.numel, 0, 0, kOnes, stream_));
    } else {
      LOOM_TRY(init_tensor(dst, t.numel, 0, 0, kZeros, stream_));
    }
  }
  return copy_to_bf16(params_, master_, num_params_padded_, stream_);
}

Status Gpt::forward_backward(const int32_t* tokens, const int32_t* targets, float loss_scale) {
  LOOM_TRY(forward(tokens, targets, loss_scale));
  return backward(tokens);
}

Status Gpt::forward(const int32_t* tokens, const int32_t* targets, float loss_scale) {
  const int64_t N = N_, C = C_;
  const double eps = spec_.norm_eps;
  LOOM_TRY(encoder_forward(encoded_, tokens, p(wte_), p(wpe_), B_, T_, C, stream_));
  LOOM_TRY(layernorm_forward(nullptr, acts_[0].ln1, acts_[0].ln1_mean, acts_[0].ln1_rstd, encoded_,
                             nullptr, p(layer_[0].ln1_w), p(layer_[0].ln1_b), N, C, eps, stream_));
  for (int64_t l = 0; l < L_; l++) LOOM_TRY(layer_forward(l));
  LOOM_TRY(matmul_forward(*gemm_, logits_, nullptr, lnf_, p(head_), nullptr, N, C, Vp_, stream_));
  // d(loss_scale * mean loss) / d(loss_n) = loss_scale / N for every position
  const float dloss = loss_scale / static_cast<float>(N);
  LOOM_TRY(crossentropy_forward_backward(losses_, logits_, targets, dloss, N, spec_.vocab, Vp_, stream_));
  return accumulate_loss(scalars_, losses_, N, dloss, stream_);
}

Status Gpt::layer_forward(int64_t l) {
  const int64_t N = N_, C = C_, F = F_;
  const double eps = spec_.norm_eps;
  const LayerOffsets& o = layer_[l];
  LayerActs& a = acts_[l];
  const bf16* x = l == 0 ? encoded_ : acts_[l - 1].res3;
  LOOM_TRY(matmul_forward(*gemm_, a.qkv, nullptr, a.ln1, p(o.qkv_w), p(o.qkv_b), N, C, 3 * C, stream_));
  LOOM_TRY(attention_forward(a.atty, a.lse, a.qkv, B_, T_, NH_, stream_));
  LOOM_TRY(matmul_forward(*gemm_, proj_out_, nullptr, a.atty, p(o.o_w), p(o.o_b), N, C, C, stream_));
  LOOM_TRY(layernorm_forward(a.res2, a.ln2, a.ln2_mean, a.ln2_rstd, x, proj_out_, p(o.ln2_w),
                             p(o.ln2_b), N, C, eps, stream_));
  LOOM_TRY(matmul_forward(*gemm_, a.fch_gelu, a.fch, a.ln2, p(o.fc_w), p(o.fc_b), N, C, F, stream_));
  LOOM_TRY(matmul_forward(*gemm_, proj_out_, nullptr, a.fch_gelu, p(o.proj_w), p(o.proj_b), N, F, C, stream_));
  // res3 = res2 + MLP branch, normalized at once by the next layer's LN1 (or the final LN)
  const bool last = l + 1 == L_;
  LayerActs* next = last ? nullptr : &acts_[l + 1];
  return layernorm_forward(a.res3, last ? lnf_ : next->ln1, last ? lnf_mean_ : next->ln1_mean,
                           last ? lnf_rstd_ : next->ln1_rstd, a.res2, proj_out_,
                           p(last ? lnf_w_ : layer_[l + 1].ln1_w),
                           p(last ? lnf_b_ : layer_[l + 1].ln1_b), N, C, eps, stream_);
}

Status Gpt::backward(const int32_t* tokens) {
  const int64_t N = N_, C = C_;
  // logits_ now holds dlogits
  LOOM_TRY(matmul_backward_weight(*gemm_, g(head_), nullptr, reduce_scratch_, logits_, lnf_, N, C, Vp_, stream_));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, logits_, p(head_), nullptr, N, C, Vp_, stream_));
  LOOM_TRY(cuda_status(cudaMemsetAsync(dres_, 0, sizeof(bf16) * N * C, stream_), "zero dresidual", {{"N", N}, {"C", C}}));
  LOOM_TRY(layernorm_backward(dres_, g(lnf_w_), g(lnf_b_), reduce_scratch_, dln_, acts_[L_ - 1].res3,
                              p(lnf_w_), lnf_mean_, lnf_rstd_, N, C, stream_));
  for (int64_t l = L_ - 1; l >= 0; l--) LOOM_TRY(layer_backward(l));
  return encoder_backward(g(wte_), g(wpe_), dres_, tokens, B_, T_, C, stream_);
}

// dres_ holds the gradient of the layer's output on entry and of its input on exit.
Status Gpt::layer_backward(int64_t l) {
  const int64_t N = N_, C = C_, F = F_;
  const LayerOffsets& o = layer_[l];
  const LayerActs& a = acts_[l];
  const bf16* x = l == 0 ? encoded_ : acts_[l - 1].res3;
  float* scratch = reduce_scratch_;
  // MLP: proj (input fch_gelu), GELU fused into the proj input gradient, fc (input ln2)
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.proj_w), g(o.proj_b), scratch, dres_, a.fch_gelu, N, F, C, stream_));
  LOOM_TRY(matmul_backward_input(*gemm_, dfch_, dres_, p(o.proj_w), a.fch, N, F, C, stream_));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.fc_w), g(o.fc_b), scratch, dfch_, a.ln2, N, C, F, stream_));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, dfch_, p(o.fc_w), nullptr, N, C, F, stream_));
  LOOM_TRY(layernorm_backward(dres_, g(o.ln2_w), g(o.ln2_b), scratch, dln_, a.res2, p(o.ln2_w),
                              a.ln2_mean, a.ln2_rstd, N, C, stream_));
  // attention: output projection (input atty), the attention core, QKV (input ln1)
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.o_w), g(o.o_b), scratch, dres_, a.atty, N, C, C, stream_));
  LOOM_TRY(matmul_backward_input(*gemm_, datty_, dres_, p(o.o_w), nullptr, N, C, C, stream_));
  LOOM_TRY(attention_backward(dqkv_, delta_, datty_, a.qkv, a.atty, a.lse, B_, T_, NH_, stream_));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.qkv_w), g(o.qkv_b), scratch, dqkv_, a.ln1, N, C, 3 * C, stream_));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, dqkv_, p(o.qkv_w), nullptr, N, C, 3 * C, stream_));
  return layernorm_backward(dres_, g(o.ln1_w), g(o.ln1_b), scratch, dln_, x, p(o.ln1_w),
                            a.ln1_mean, a.ln1_rstd, N, C, stream_);
}

Status Gpt::update(const AdamWHyper& hyper, float max_norm, int64_t step) {
  LOOM_TRY(grad_norm(scalars_ + 1, reduce_scratch_, grads_, num_params_padded_, max_norm, stream_));
  // The chunk table carries the decay rate per chunk; it is rewritten when the rate changes.
  if (hyper.weight_decay != applied_weight_decay_) {
    std::vector<AdamWChunk> table = host_chunks_;  // decay flags as 1 / 0
    for (AdamWChunk& c : table) c.weight_decay *= hyper.weight_decay;
    LOOM_TRY(cuda_status(cudaMemcpyAsync(chunks_, table.data(), sizeof(AdamWChunk) * table.size(),
                                         cudaMemcpyHostToDevice, stream_),
                         "adamw chunk table", {{"chunks", num_chunks_}}));
    LOOM_TRY(cuda_status(cudaStreamSynchronize(stream_), "adamw chunk table", {}));
    applied_weight_decay_ = hyper.weight_decay;
  }
  return adamw_update(params_, master_, grads_, adam_m_, adam_v_, chunks_, num_chunks_, scalars_ + 2,
                      hyper, step, stream_);
}

Expected<std::pair<float, float>> Gpt::take_loss_and_norm() {
  float host[3];
  LOOM_TRY(cuda_status(cudaMemcpyAsync(host, scalars_, sizeof(host), cudaMemcpyDeviceToHost, stream_), "read loss", {}));
  LOOM_TRY(cuda_status(cudaStreamSynchronize(stream_), "training step", {{"B", B_}, {"T", T_}}));
  LOOM_TRY(cuda_status(cudaMemsetAsync(scalars_, 0, sizeof(float), stream_), "zero loss", {}));
  return std::make_pair(host[0], host[1]);
}

}  // namespace loom::cuda
