#include "executor/cuda/gpt.cuh"

#include <algorithm>
#include <cmath>

#include "executor/cpu/gpt.hpp"
#include "executor/cuda/attention.cuh"
#include "executor/cuda/crossentropy.cuh"
#include "executor/cuda/encoder.cuh"
#include "executor/cuda/grad_norm.cuh"
#include "executor/cuda/init.cuh"
#include "executor/cuda/layernorm.cuh"
#include "executor/cuda/rmsnorm.cuh"
#include "executor/cuda/rope.cuh"
#include "executor/cuda/swiglu.cuh"

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
  const auto str = [](auto v) { return std::to_string(v); };
  if (s.layers < 1 || s.hidden < 1 || s.heads < 1 || s.kv_heads < 1 || s.vocab < 1 || s.ffn_hidden < 1) {
    return rule("model", "layers, hidden, heads, kv_heads, ffn_hidden and vocab must be positive");
  }
  if (s.hidden % s.heads != 0 || s.hidden / s.heads != kAttentionHeadSize) {
    return rule("model.hidden", "hidden / heads must be 64, the attention kernel's head size (got " +
                                    str(s.hidden / s.heads) + ")");
  }
  if (s.family == Family::gpt && s.kv_heads != s.heads) {
    return rule("model.kv_heads", "must equal heads for the gpt family (got " + str(s.kv_heads) + " and " +
                                      str(s.heads) + "; grouped-query attention is the llama family's)");
  }
  if (s.heads % s.kv_heads != 0) {
    return rule("model.kv_heads", "must divide heads (got " + str(s.kv_heads) + " and " + str(s.heads) + ")");
  }
  if (s.hidden % 8 != 0 || s.ffn_hidden % 8 != 0) return rule("model.hidden", "hidden and ffn_hidden must be multiples of 8");
  if (s.family == Family::llama && !(cpu::default_rope_theta(s) > 0)) {
    return rule("model.rope_theta", "must be > 0 for the llama family (got " + str(cpu::default_rope_theta(s)) + ")");
  }
  if (B < 1) return rule("parallel.micro_batch", "must be >= 1");
  if (T < kAttentionBlock || T % kAttentionBlock != 0 || T > s.seq_len) {
    return rule("train.seq", "must be a multiple of 64 in [64, seq_len = " + str(s.seq_len) +
                                 "] on the CUDA backend (got " + str(T) + ")");
  }
  return ok_status();
}

std::unique_ptr<Gpt> Gpt::configure(const ModelSpec& spec, int64_t B, int64_t T, Recompute recompute) {
  std::unique_ptr<Gpt> m(new Gpt());
  m->spec_ = spec;
  m->llama_ = spec.family == Family::llama;
  m->recompute_full_ = recompute == Recompute::full;
  m->rope_theta_ = m->llama_ ? cpu::default_rope_theta(spec) : 0;  // the CPU reference's choice
  m->B_ = B, m->T_ = T, m->N_ = B * T, m->C_ = spec.hidden, m->NH_ = spec.heads, m->NKV_ = spec.kv_heads;
  m->F_ = spec.ffn_hidden, m->L_ = spec.layers, m->Vp_ = cuda::padded_vocab(spec.vocab);
  m->QKV_ = (spec.heads + 2 * spec.kv_heads) * kAttentionHeadSize;
  m->FC_ = m->llama_ ? 2 * spec.ffn_hidden : spec.ffn_hidden;
  m->build_layout();
  return m;
}

// The CPU layout (executor/cpu/gpt.cpp build_layout) with q, k, v (and llama's gate, up) fused,
// tensor for tensor in the same order. Each tensor lists the CPU tensors it is made of, whose
// init streams it draws from. GPT-2 init (Radford et al. 2019, section 2.3), as the CPU
// reference: normal(0, 0.02); the two projections into the residual stream (attn.o and
// mlp.proj / mlp.down) 0.02 / sqrt(2 layers); biases 0; norm weights 1; padded vocabulary rows 0.
void Gpt::build_layout() {
  const int64_t C = C_, F = F_, Vp = Vp_, V = spec_.vocab;
  const int64_t Q = NH_ * kAttentionHeadSize, KV = NKV_ * kAttentionHeadSize;
  const double std_w = 0.02, std_res = 0.02 / std::sqrt(2.0 * static_cast<double>(L_));
  constexpr double kZeros = 0, kOnes = -1;
  int64_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, std::vector<InitPart> parts) {
    ParamTensor t;
    t.name = std::move(name);
    t.offset = offset;
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= d;
    t.decay = t.shape.size() >= 2;
    offset = round_up(offset + t.numel, kTensorAlign);
    tensors_.push_back(std::move(t));
    init_.push_back(std::move(parts));
    return tensors_.back().offset;
  };
  int64_t cpu = 0;  // index of the next CPU-layout tensor
  wte_ = add("tok_emb.weight", {Vp, C}, {{cpu++, V * C, std_w}});
  if (!llama_) wpe_ = add("pos_emb.weight", {spec_.seq_len, C}, {{cpu++, spec_.seq_len * C, std_w}});
  for (int64_t l = 0; l < L_; l++) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    const int64_t c = cpu;  // the CPU layout's tensors of this layer start here
    LayerOffsets o;
    if (!llama_) {  // 16: norm1 w b, q w b, k w b, v w b, o w b, norm2 w b, fc w b, proj w b
      o.ln1_w = add(pre + "norm1.weight", {C}, {{c, C, kOnes}});
      o.ln1_b = add(pre + "norm1.bias", {C}, {{c + 1, C, kZeros}});
      o.qkv_w = add(pre + "attn.qkv.weight", {3 * C, C}, {{c + 2, C * C, std_w}, {c + 4, C * C, std_w}, {c + 6, C * C, std_w}});
      o.qkv_b = add(pre + "attn.qkv.bias", {3 * C}, {{c + 3, C, kZeros}, {c + 5, C, kZeros}, {c + 7, C, kZeros}});
      o.o_w = add(pre + "attn.o.weight", {C, C}, {{c + 8, C * C, std_res}});
      o.o_b = add(pre + "attn.o.bias", {C}, {{c + 9, C, kZeros}});
      o.ln2_w = add(pre + "norm2.weight", {C}, {{c + 10, C, kOnes}});
      o.ln2_b = add(pre + "norm2.bias", {C}, {{c + 11, C, kZeros}});
      o.fc_w = add(pre + "mlp.fc.weight", {F, C}, {{c + 12, F * C, std_w}});
      o.fc_b = add(pre + "mlp.fc.bias", {F}, {{c + 13, F, kZeros}});
      o.proj_w = add(pre + "mlp.proj.weight", {C, F}, {{c + 14, C * F, std_res}});
      o.proj_b = add(pre + "mlp.proj.bias", {C}, {{c + 15, C, kZeros}});
      cpu += 16;
    } else {  // 9: norm1, q, k, v, o, norm2, gate, up, down
      o.ln1_w = add(pre + "norm1.weight", {C}, {{c, C, kOnes}});
      o.qkv_w = add(pre + "attn.qkv.weight", {Q + 2 * KV, C}, {{c + 1, Q * C, std_w}, {c + 2, KV * C, std_w}, {c + 3, KV * C, std_w}});
      o.o_w = add(pre + "attn.o.weight", {C, Q}, {{c + 4, C * Q, std_res}});
      o.ln2_w = add(pre + "norm2.weight", {C}, {{c + 5, C, kOnes}});
      o.fc_w = add(pre + "mlp.gate_up.weight", {2 * F, C}, {{c + 6, F * C, std_w}, {c + 7, F * C, std_w}});
      o.proj_w = add(pre + "mlp.down.weight", {C, F}, {{c + 8, C * F, std_res}});
      cpu += 9;
    }
    layer_.push_back(o);
  }
  lnf_w_ = add("norm_f.weight", {C}, {{cpu++, C, kOnes}});
  if (!llama_) lnf_b_ = add("norm_f.bias", {C}, {{cpu++, C, kZeros}});
  head_ = spec_.tied_embeddings ? wte_ : add("lm_head.weight", {Vp, C}, {{cpu++, V * C, std_w}});
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
  // Every layer keeps its output (the next layer's input); the rest exists once per layer, or
  // once in all (acts_[0]'s, shared by share_layer_buffers) under full recompute.
  const int64_t full_layers = recompute_full_ ? 1 : L_;
  for (int64_t l = 0; l < L_; l++) {
    LayerActs& x = acts_[static_cast<size_t>(l)];
    if (l < full_layers) {
      a.add(&x.ln1, N * C, Arena::kActivations);
      if (!llama_) a.add(&x.ln1_mean, N, Arena::kActivations);
      a.add(&x.ln1_rstd, N, Arena::kActivations);
      a.add(&x.qkv, N * QKV_, Arena::kActivations);
      a.add(&x.atty, N * C, Arena::kActivations);
      a.add(&x.lse, N * NH_, Arena::kActivations);
      a.add(&x.res2, N * C, Arena::kActivations);
      a.add(&x.ln2, N * C, Arena::kActivations);
      if (!llama_) a.add(&x.ln2_mean, N, Arena::kActivations);
      a.add(&x.ln2_rstd, N, Arena::kActivations);
      a.add(&x.fch, N * FC_, Arena::kActivations);
      a.add(&x.fch_act, N * F, Arena::kActivations);
    }
    a.add(&x.res3, N * C, Arena::kActivations);
  }
  a.add(&lnf_, N * C, Arena::kActivations);
  if (!llama_) a.add(&lnf_mean_, N, Arena::kActivations);
  a.add(&lnf_rstd_, N, Arena::kActivations);
  a.add(&proj_out_, N * C, Arena::kActivations);
  a.add(&dres_, N * C, Arena::kActivations);
  a.add(&dln_, N * C, Arena::kActivations);
  a.add(&datty_, N * C, Arena::kActivations);
  a.add(&dqkv_, N * QKV_, Arena::kActivations);
  a.add(&dfch_, N * F, Arena::kActivations);
  a.add(&delta_, N * NH_, Arena::kActivations);
  a.add(&logits_, N * Vp_, Arena::kLogits);
  a.add(&losses_, N, Arena::kLogits);
  int64_t scratch = kGradNormBlocks;
  if (llama_) {  // no biases: only the norm weight sums and the grad norm use it
    scratch = std::max(scratch, rmsnorm_scratch_floats(N, C));
  } else {
    for (int64_t oc : {QKV_, C, F, Vp_}) scratch = std::max(scratch, bias_scratch_floats(N, oc));
    scratch = std::max(scratch, layernorm_scratch_floats(N, C));
  }
  a.add(&reduce_scratch_, scratch, Arena::kWorkspace);
  a.add(&scalars_, 4, Arena::kWorkspace);
  std::vector<TensorRange> ranges;
  for (const ParamTensor& t : tensors_) ranges.push_back({t.offset, t.numel, t.decay});
  host_chunks_ = adamw_chunks(ranges, 1.0f);  // decay flag as 1/0; the rate is applied per step
  num_chunks_ = static_cast<int64_t>(host_chunks_.size());
  a.add(&chunks_, num_chunks_, Arena::kWorkspace);
  return ok_status();
}

// Full recompute: every layer points at layer 0's buffers, its own output (res3) apart.
void Gpt::share_layer_buffers() {
  if (!recompute_full_) return;
  for (size_t l = 1; l < acts_.size(); l++) {
    bf16* own_output = acts_[l].res3;
    acts_[l] = acts_[0];
    acts_[l].res3 = own_output;
  }
}

Expected<MemoryBytes> Gpt::memory_needed(const ModelSpec& spec, int64_t B, int64_t T, Recompute recompute) {
  LOOM_TRY(validate_for_cuda_model(spec, B, T));
  std::unique_ptr<Gpt> m = configure(spec, B, T, recompute);
  Arena arena;
  LOOM_TRY(m->plan_buffers(arena));
  return arena.by_category();
}

Expected<std::unique_ptr<Gpt>> Gpt::create(const ModelSpec& spec, int64_t B, int64_t T,
                                           uint64_t seed, cudaStream_t stream, Recompute recompute) {
  LOOM_TRY(validate_for_cuda_model(spec, B, T));
  std::unique_ptr<Gpt> m = configure(spec, B, T, recompute);
  m->stream_ = stream;
  Arena arena;
  LOOM_TRY(m->plan_buffers(arena));
  m->memory_ = arena.by_category();
  auto gemm = Gemm::create();
  if (!gemm) return gemm.error();
  m->gemm_ = std::move(gemm.value());
  const int64_t bytes = arena.total();
  LOOM_TRY(cuda_status(cudaMalloc(&m->arena_, static_cast<size_t>(bytes)), "model buffers", {{"bytes", bytes}}));
  arena.bind(m->arena_);
  m->share_layer_buffers();
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

// Each tensor's parts from their CPU tensors' streams (build_layout); the master buffer starts
// at 0, so padded vocabulary rows and alignment gaps stay 0.
Status Gpt::init_params(uint64_t seed) {
  for (size_t i = 0; i < tensors_.size(); i++) {
    int64_t at = tensors_[i].offset;
    for (const InitPart& part : init_[i]) {
      LOOM_TRY(init_tensor(master_ + at, part.count, mix(seed, static_cast<uint64_t>(part.cpu_index)), 0,
                           part.std, stream_));
      at += part.count;
    }
  }
  return copy_to_bf16(params_, master_, num_params_padded_, stream_);
}

// llama's embedding: out (N, C) = wte[tokens], no position table (executor/cpu/encoder.cpp with
// wpe == nullptr; encoder.cu is the gpt family's, with learned positions). One thread per
// 16 bytes.
__global__ void token_embedding_kernel(bf16* out, const int32_t* tokens, const bf16* wte,
                                       int64_t vectors, int C) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const int64_t bt = v / (C / 8);
  const int c = static_cast<int>(v % (C / 8)) * 8;
  *reinterpret_cast<int4*>(out + bt * C + c) =
      *reinterpret_cast<const int4*>(wte + static_cast<int64_t>(tokens[bt]) * C + c);
}

Status Gpt::embed(const int32_t* tokens) {
  if (!llama_) return encoder_forward(encoded_, tokens, p(wte_), p(wpe_), B_, T_, C_, stream_);
  const int64_t vectors = N_ * C_ / 8;
  token_embedding_kernel<<<static_cast<unsigned>(ceil_div(vectors, 256)), 256, 0, stream_>>>(
      encoded_, tokens, p(wte_), vectors, static_cast<int>(C_));
  return check_launch("token_embedding_forward", {{"B", B_}, {"T", T_}, {"C", C_}});
}

Status Gpt::norm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                         const bf16* b, int64_t w, int64_t bias) {
  if (llama_) return rmsnorm_forward(residual, out, rstd, a, b, p(w), N_, C_, spec_.norm_eps, stream_);
  return layernorm_forward(residual, out, mean, rstd, a, b, p(w), p(bias), N_, C_, spec_.norm_eps, stream_);
}

Status Gpt::norm_backward(bf16* dinp, const bf16* dout, const bf16* inp, const float* mean,
                          const float* rstd, int64_t w, int64_t bias) {
  if (llama_) return rmsnorm_backward(dinp, g(w), reduce_scratch_, dout, inp, p(w), rstd, N_, C_, stream_);
  return layernorm_backward(dinp, g(w), g(bias), reduce_scratch_, dout, inp, p(w), mean, rstd, N_, C_, stream_);
}

Status Gpt::forward_backward(const int32_t* tokens, const int32_t* targets, float loss_scale) {
  LOOM_TRY(forward(tokens, targets, loss_scale));
  return backward(tokens);
}

Status Gpt::forward(const int32_t* tokens, const int32_t* targets, float loss_scale) {
  const int64_t N = N_, C = C_;
  LOOM_TRY(phase("F"));
  LOOM_TRY(mark("embedding"));
  LOOM_TRY(embed(tokens));
  const LayerActs& a0 = acts_[0];
  LOOM_TRY(mark("norm"));
  LOOM_TRY(norm_forward(nullptr, a0.ln1, a0.ln1_mean, a0.ln1_rstd, encoded_, nullptr, layer_[0].ln1_w, layer_[0].ln1_b));
  for (int64_t l = 0; l < L_; l++) LOOM_TRY(layer_forward(l));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_forward(*gemm_, logits_, nullptr, lnf_, p(head_), nullptr, N, C, Vp_, stream_));
  // d(loss_scale * mean loss) / d(loss_n) = loss_scale / N for every position
  const float dloss = loss_scale / static_cast<float>(N);
  LOOM_TRY(mark("cross_entropy"));
  LOOM_TRY(crossentropy_forward_backward(losses_, logits_, targets, dloss, N, spec_.vocab, Vp_, stream_));
  LOOM_TRY(mark("cross_entropy"));
  return accumulate_loss(scalars_, losses_, N, dloss, stream_);
}

// Layer l from its norm1 output (already in acts_[l].ln1) to the MLP's down projection output in
// proj_out_: everything but the final residual add.
Status Gpt::layer_forward_core(int64_t l) {
  const int64_t N = N_, C = C_, F = F_;
  const LayerOffsets& o = layer_[l];
  const LayerActs& a = acts_[l];
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_forward(*gemm_, a.qkv, nullptr, a.ln1, p(o.qkv_w), p(o.qkv_b), N, C, QKV_, stream_));
  if (llama_) LOOM_TRY(mark("rope"));
  if (llama_) LOOM_TRY(rope_forward(a.qkv, B_, T_, NH_, NKV_, kAttentionHeadSize, rope_theta_, stream_));
  LOOM_TRY(mark("attention"));
  LOOM_TRY(attention_forward(a.atty, a.lse, a.qkv, B_, T_, NH_, NKV_, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_forward(*gemm_, proj_out_, nullptr, a.atty, p(o.o_w), p(o.o_b), N, C, C, stream_));
  LOOM_TRY(mark("norm"));
  LOOM_TRY(norm_forward(a.res2, a.ln2, a.ln2_mean, a.ln2_rstd, layer_input(l), proj_out_, o.ln2_w, o.ln2_b));
  if (llama_) {  // gate|up in one GEMM, then silu(gate) * up
    LOOM_TRY(mark("gemm"));
    LOOM_TRY(matmul_forward(*gemm_, a.fch, nullptr, a.ln2, p(o.fc_w), nullptr, N, C, FC_, stream_));
    LOOM_TRY(mark("swiglu"));
    LOOM_TRY(swiglu_forward(a.fch_act, a.fch, N, F, stream_));
  } else {  // fc with the GELU epilogue, keeping its input in fch
    LOOM_TRY(mark("gemm"));
    LOOM_TRY(matmul_forward(*gemm_, a.fch_act, a.fch, a.ln2, p(o.fc_w), p(o.fc_b), N, C, F, stream_));
  }
  LOOM_TRY(mark("gemm"));
  return matmul_forward(*gemm_, proj_out_, nullptr, a.fch_act, p(o.proj_w), p(o.proj_b), N, F, C, stream_);
}

Status Gpt::layer_forward(int64_t l) {
  LOOM_TRY(layer_forward_core(l));
  // res3 = res2 + MLP branch, normalized at once by the next layer's norm1 (or the final norm)
  const LayerActs& a = acts_[l];
  const bool last = l + 1 == L_;
  const LayerActs* next = last ? nullptr : &acts_[l + 1];
  LOOM_TRY(mark("norm"));
  return norm_forward(a.res3, last ? lnf_ : next->ln1, last ? lnf_mean_ : next->ln1_mean,
                      last ? lnf_rstd_ : next->ln1_rstd, a.res2, proj_out_,
                      last ? lnf_w_ : layer_[l + 1].ln1_w, last ? lnf_b_ : layer_[l + 1].ln1_b);
}

// Full recompute: layer l's activations again from its kept input. norm1 runs unfused here (the
// residual add that made the input ran in forward); it reads the same stored bf16 input as the
// fused forward did, so every rebuilt tensor equals the forward's.
Status Gpt::recompute_layer(int64_t l) {
  const LayerActs& a = acts_[l];
  LOOM_TRY(mark("norm"));
  LOOM_TRY(norm_forward(nullptr, a.ln1, a.ln1_mean, a.ln1_rstd, layer_input(l), nullptr, layer_[l].ln1_w,
                        layer_[l].ln1_b));
  return layer_forward_core(l);
}

Status Gpt::backward(const int32_t* tokens) {
  const int64_t N = N_, C = C_;
  LOOM_TRY(phase("B"));
  // logits_ now holds dlogits
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(head_), nullptr, reduce_scratch_, logits_, lnf_, N, C, Vp_, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, logits_, p(head_), nullptr, N, C, Vp_, stream_));
  LOOM_TRY(mark("memset"));
  LOOM_TRY(cuda_status(cudaMemsetAsync(dres_, 0, sizeof(bf16) * N * C, stream_), "zero dresidual", {{"N", N}, {"C", C}}));
  LOOM_TRY(mark("norm"));
  LOOM_TRY(norm_backward(dres_, dln_, acts_[L_ - 1].res3, lnf_mean_, lnf_rstd_, lnf_w_, lnf_b_));
  for (int64_t l = L_ - 1; l >= 0; l--) {
    if (recompute_full_) {  // rebuild, then the layer's backward (two phases in the trace)
      LOOM_TRY(phase("R"));
      LOOM_TRY(recompute_layer(l));
      LOOM_TRY(phase("B"));
    }
    LOOM_TRY(layer_backward(l));
  }
  LOOM_TRY(mark("embedding"));
  return encoder_backward(g(wte_), g(wpe_), dres_, tokens, B_, T_, C, stream_);
}

// dres_ holds the gradient of the layer's output on entry and of its input on exit.
Status Gpt::layer_backward(int64_t l) {
  const int64_t N = N_, C = C_, F = F_;
  const LayerOffsets& o = layer_[l];
  const LayerActs& a = acts_[l];
  float* scratch = reduce_scratch_;
  // MLP: down/proj (input fch_act), the activation, gate|up/fc (input ln2)
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.proj_w), g(o.proj_b), scratch, dres_, a.fch_act, N, F, C, stream_));
  if (llama_) {  // d(silu(gate) * up), then the gate|up gradient over gate|up itself
    LOOM_TRY(mark("gemm"));
    LOOM_TRY(matmul_backward_input(*gemm_, dfch_, dres_, p(o.proj_w), nullptr, N, F, C, stream_));
    LOOM_TRY(mark("swiglu"));
    LOOM_TRY(swiglu_backward(a.fch, dfch_, a.fch, N, F, stream_));
  } else {  // the GELU derivative fused into the input gradient
    LOOM_TRY(mark("gemm"));
    LOOM_TRY(matmul_backward_input(*gemm_, dfch_, dres_, p(o.proj_w), a.fch, N, F, C, stream_));
  }
  const bf16* dfc = llama_ ? a.fch : dfch_;  // gradient of the first MLP projection's output
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.fc_w), g(o.fc_b), scratch, dfc, a.ln2, N, C, FC_, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, dfc, p(o.fc_w), nullptr, N, C, FC_, stream_));
  LOOM_TRY(mark("norm"));
  LOOM_TRY(norm_backward(dres_, dln_, a.res2, a.ln2_mean, a.ln2_rstd, o.ln2_w, o.ln2_b));
  // attention: output projection (input atty), the attention core, RoPE, QKV (input ln1)
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.o_w), g(o.o_b), scratch, dres_, a.atty, N, C, C, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_input(*gemm_, datty_, dres_, p(o.o_w), nullptr, N, C, C, stream_));
  LOOM_TRY(mark("attention"));
  LOOM_TRY(attention_backward(dqkv_, delta_, datty_, a.qkv, a.atty, a.lse, B_, T_, NH_, NKV_, stream_));
  if (llama_) LOOM_TRY(mark("rope"));
  if (llama_) LOOM_TRY(rope_backward(dqkv_, B_, T_, NH_, NKV_, kAttentionHeadSize, rope_theta_, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_weight(*gemm_, g(o.qkv_w), g(o.qkv_b), scratch, dqkv_, a.ln1, N, C, QKV_, stream_));
  LOOM_TRY(mark("gemm"));
  LOOM_TRY(matmul_backward_input(*gemm_, dln_, dqkv_, p(o.qkv_w), nullptr, N, C, QKV_, stream_));
  LOOM_TRY(mark("norm"));
  return norm_backward(dres_, dln_, layer_input(l), a.ln1_mean, a.ln1_rstd, o.ln1_w, o.ln1_b);
}

Status Gpt::update(const AdamWHyper& hyper, float max_norm, int64_t step) {
  LOOM_TRY(phase("optimizer"));
  LOOM_TRY(mark("grad_norm"));
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
  LOOM_TRY(mark("adamw"));
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
