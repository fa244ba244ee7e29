// The CUDA Compute backend (compute_cuda.hpp states its precision and memory layout). The
// per-unit math follows executor/stage.cpp line for line: where the CPU reference calls a cpu::
// op on fp32 rows, this calls the bf16 kernel of executor/cuda on the same shard.
#include "executor/cuda/compute_cuda.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "executor/cuda/attention.cuh"
#include "executor/cuda/compute_kernels.cuh"
#include "executor/cuda/layernorm.cuh"
#include "executor/cuda/matmul.cuh"
#include "executor/cuda/rmsnorm.cuh"
#include "executor/cuda/rope.cuh"
#include "executor/cuda/swiglu.cuh"

namespace loom::exec {

using cuda::bf16;

namespace {

// Buffers come from the device's stream-ordered pool (cudaMallocAsync): the trainer allocates
// and frees every (micro-batch, chunk) stash per step, which cudaMalloc/cudaFree would turn into
// device-wide synchronizations. Frees are ordered on the legacy stream, after all work enqueued
// on the (blocking) compute stream; the pool keeps the memory for the next allocation (init()).
void free_device(float* p) { cudaFreeAsync(p, cudaStreamLegacy); }

Status cuda_ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return ok_status();
  return make_error(what, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}

int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }
const float* at(const float* P, int64_t off) { return off < 0 ? nullptr : P + off; }
float* at(float* P, int64_t off) { return off < 0 ? nullptr : P + off; }

// A device buffer of bf16 values, booked as the floats it occupies.
struct Bf16 {
  Buffer buf;
  bf16* data() const { return reinterpret_cast<bf16*>(buf.data()); }
};

// What a layer keeps for backward (either stash kind: the fused attention stores no T x T
// probabilities, only the output and the fp32 log-sum-exp per (b, head, query)).
struct CudaLayerState final : LayerState {
  Bf16 ln1, qkv, atty, res2, ln2, fch, fch_act;  // fch: gpt the pre-GELU fc output, llama gate|up
  Buffer mean1, rstd1, lse, mean2, rstd2;
};
struct CudaHeadState final : HeadState {
  Buffer lnf_in, mean, rstd, probs;  // probs (N, Vp8) fp32: logits, then softmax in place
  Bf16 lnf_out;                      // (N, C) final norm output, all rows
};

// Offsets of one layer's bf16 working copy (fused q|k|v and gate|up projections).
struct LayerWeights {
  int64_t norm1_w = -1, norm1_b = -1, qkv_w = -1, qkv_b = -1, o_w = -1, norm2_w = -1, norm2_b = -1;
  int64_t fc_w = -1, fc_b = -1, proj_w = -1, size = 0;
};

class CudaCompute final : public Compute {
 public:
  CudaCompute(const ComputeSetup& s, const CudaComputeOptions& o)
      : comm_(s.comm), tp_(s.tp), d_(s.d), ledger_(s.ledger), flops_(s.flops), s_(o.stream),
        last_stage_(s.last_stage) {}
  Status init();

  const char* device() const override { return name_.c_str(); }
  bool host_memory() const override { return false; }

  Expected<Buffer> alloc(Mem cat, int64_t n) override;
  Status copy(float* dst, const float* src, int64_t n) override {
    return cuda_ok(cudaMemcpyAsync(dst, src, bytes(n), cudaMemcpyDeviceToDevice, s_), "device copy");
  }
  Status add(float* dst, const float* src, int64_t n) override { return cuda::add_f32(dst, src, n, s_); }
  Status fill_zero(float* dst, int64_t n) override {
    return cuda_ok(cudaMemsetAsync(dst, 0, bytes(n), s_), "device fill_zero");
  }
  Status upload(float* dst, const float* host, int64_t n) override {
    LOOM_TRY(cuda_ok(cudaMemcpyAsync(dst, host, bytes(n), cudaMemcpyHostToDevice, s_), "upload"));
    return sync("upload");  // the host array may go away on return
  }
  Status download(float* host, const float* src, int64_t n) override {
    LOOM_TRY(cuda_ok(cudaMemcpyAsync(host, src, bytes(n), cudaMemcpyDeviceToHost, s_), "download"));
    return sync("download");
  }

  Expected<std::unique_ptr<LayerState>> layer_state(StashKind kind) override;
  Expected<std::unique_ptr<HeadState>> head_state() override;
  float* head_input(HeadState& st) override { return static_cast<CudaHeadState&>(st).lnf_in.data(); }

  Status embed_forward(const float* P, const UnitOffsets& o, const int32_t* tokens, float* x) override;
  Status embed_backward(float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx) override;
  Status layer_forward(const float* P, const UnitOffsets& o, const float* x, LayerState& st, float* out) override;
  Status layer_backward(const float* P, float* G, const UnitOffsets& o, const float* x, LayerState& st, float* d,
                        bool recompute_core) override;
  Expected<double> head_forward(const float* P, const UnitOffsets& o, const float* head_P, const float* x,
                                const int32_t* targets, HeadState& st) override;
  Status head_backward(const float* P, float* G, const UnitOffsets& o, const float* head_P, float* head_G,
                       const int32_t* targets, HeadState& st, double scale, float* d) override;

  Status add_sum_squares(const float* g, int64_t n, double& sum) override;
  Status scale(float* g, int64_t n, double s) override { return cuda::scale_f32(g, n, static_cast<float>(s), s_); }
  Status adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step,
               const cpu::AdamWConfig& c) override;

 private:
  static size_t bytes(int64_t n) { return static_cast<size_t>(n) * sizeof(float); }
  Status sync(const char* what) { return cuda_ok(cudaStreamSynchronize(s_), what); }
  Expected<Bf16> alloc_bf16(Mem cat, int64_t n);
  Status alloc_scratch();
  // Layer pieces (stage.cpp's layer_forward / layer_backward, split at the blocks).
  Status cast_layer(const float* P, const UnitOffsets& o);
  Status attention_block(const float* P, const UnitOffsets& o, const float* x, CudaLayerState& st, float* res2);
  Status mlp_block(const float* P, const UnitOffsets& o, const float* res2, CudaLayerState& st, float* out);
  Status mlp_backward(float* G, const UnitOffsets& o, CudaLayerState& st, float* d);
  Status attention_backward(float* G, const UnitOffsets& o, const float* x, CudaLayerState& st, float* d,
                            bool recompute_core);
  Status qkv_weight_grad(float* G, const UnitOffsets& o, const bf16* ln1);
  // Helpers over the tp group (stage.cpp's gather_rows / reduce_rows) and the norms.
  Expected<const bf16*> gather_rows(const bf16* shard, bf16* full);
  Expected<const float*> gather_rows_f32(const float* shard, float* full);
  Expected<const float*> reduce_rows(float* full);
  Status row_parallel_out(const bf16* part, const float* x, const float* bias, float* out, bf16* out_b);
  Status reduce_to_bf16(const bf16* part_full, bf16* shard_out);
  Status norm_fwd(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b);
  Status norm_bwd_into(float* d, float* dw, float* db, const bf16* dout, const bf16* in, const bf16* w,
                       const float* mean, const float* rstd);
  Status linear(bf16* out, bf16* pre_gelu, const bf16* in, const bf16* w, const bf16* b, int64_t C, int64_t OC);
  Status weight_grad(float* dw, float* db, const bf16* dout, const bf16* in, int64_t C, int64_t OC);
  Status input_grad(bf16* din, const bf16* dout, const bf16* w, const bf16* gelu_in, int64_t C, int64_t OC);
  Status upload_tokens(const int32_t* host, int32_t* dev);
  Status cast_head(const float* P, const UnitOffsets& o, const float* head_P);

  Comm& comm_;
  const Group& tp_;
  Dims d_;
  Ledger& ledger_;
  cpu::FlopCounter& flops_;
  cudaStream_t s_;
  bool last_stage_;
  std::string name_ = "cuda";
  std::unique_ptr<cuda::Gemm> gemm_;
  int64_t QKV_ = 0, FC_ = 0, Vp8_ = 0;
  LayerWeights lw_;
  // Scratch (workspace), the SP gather buffer (comm_buffers), the head's (logits).
  Bf16 wb_, xb_, full_b_, d_full_b_, d_act_, d_gateup_, d_atty_, dqkv_, dres_b_, shard_b_, head_w_, dlogits_;
  Buffer full_f_, d_full_f_, res2_f_, delta_, norm_scratch_, bias_scratch_, wgrad_, rows3_, loss_rows_, sp_f_;
  Buffer tokens_, targets_, partial_;
};

Expected<Buffer> CudaCompute::alloc(Mem cat, int64_t n) {
  if (n < 0) return make_error("alloc", "negative size (got " + std::to_string(n) + ")");
  if (n == 0) return Buffer(ledger_, cat, nullptr, 0, free_device);
  void* p = nullptr;
  if (cudaMallocAsync(&p, bytes(n), s_) != cudaSuccess) {
    cudaGetLastError();  // clear the allocation error: it is not sticky
    return make_error(mem_name(cat), "cannot allocate " + std::to_string(n * 4) + " bytes of device memory");
  }
  if (auto st = cuda_ok(cudaMemsetAsync(p, 0, bytes(n), s_), "alloc"); !st) {
    cudaFreeAsync(p, s_);
    return st.error();
  }
  return Buffer(ledger_, cat, static_cast<float*>(p), n, free_device);
}

Expected<Bf16> CudaCompute::alloc_bf16(Mem cat, int64_t n) {
  auto b = alloc(cat, (n + 1) / 2);
  if (!b) return b.error();
  return Bf16{std::move(*b)};
}

Status CudaCompute::init() {
  int dev = 0;
  cudaDeviceProp prop{};
  LOOM_TRY(cuda_ok(cudaGetDevice(&dev), "cudaGetDevice"));
  LOOM_TRY(cuda_ok(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties"));
  name_ = prop.name;
  cudaMemPool_t pool = nullptr;  // keep freed blocks for reuse instead of returning them at syncs
  LOOM_TRY(cuda_ok(cudaDeviceGetDefaultMemPool(&pool, dev), "cudaDeviceGetDefaultMemPool"));
  uint64_t keep = UINT64_MAX;
  LOOM_TRY(cuda_ok(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute"));
  auto g = cuda::Gemm::create();
  if (!g) return g.error();
  gemm_ = std::move(*g);
  const Dims& d = d_;
  QKV_ = d.Ql + 2 * d.KVl;
  FC_ = d.gpt ? d.Fl : 2 * d.Fl;
  Vp8_ = round8(d.Vr);
  // The bf16 working copy of one layer, in the order the CPU layout holds the tensors.
  int64_t off = 0;
  auto take = [&off](int64_t n) { const int64_t at_off = off; off += n; return at_off; };
  lw_.norm1_w = take(d.C);
  if (d.gpt) lw_.norm1_b = take(d.C);
  lw_.qkv_w = take(QKV_ * d.C);
  if (d.gpt) lw_.qkv_b = take(QKV_);
  lw_.o_w = take(d.C * d.Ql);
  lw_.norm2_w = take(d.C);
  if (d.gpt) lw_.norm2_b = take(d.C);
  lw_.fc_w = take(FC_ * d.C);
  if (d.gpt) lw_.fc_b = take(FC_);
  lw_.proj_w = take(d.C * d.Fl);
  lw_.size = off;
  LOOM_TRY(alloc_scratch());
  return sync("alloc");
}

Status CudaCompute::alloc_scratch() {
  const Dims& d = d_;
  const Mem W = Mem::workspace;
  const int64_t N = d.N, Ns = d.Ns, C = d.C;
  struct B16 { Bf16* b; Mem cat; int64_t n; };
  struct F32 { Buffer* b; Mem cat; int64_t n; };
  const B16 halves[] = {{&wb_, W, lw_.size}, {&xb_, W, Ns * C}, {&full_b_, W, N * C}, {&d_full_b_, W, N * C},
                        {&d_act_, W, d.gpt ? 0 : N * d.Fl}, {&d_gateup_, W, N * FC_}, {&d_atty_, W, N * d.Ql},
                        {&dqkv_, W, N * QKV_}, {&dres_b_, W, Ns * C}, {&shard_b_, W, Ns * C},
                        {&head_w_, W, last_stage_ ? Vp8_ * C + 2 * C : 0},
                        {&dlogits_, Mem::logits, last_stage_ ? N * Vp8_ : 0}};
  const int64_t norm_floats = std::max(cuda::layernorm_scratch_floats(Ns, C), cuda::rmsnorm_scratch_floats(Ns, C));
  const int64_t bias_floats = cuda::bias_scratch_floats(N, std::max({QKV_, FC_, C}));
  const F32 singles[] = {{&full_f_, W, N * C}, {&d_full_f_, W, N * C}, {&res2_f_, W, Ns * C},
                         {&delta_, W, d.B * d.Hl * d.T}, {&norm_scratch_, W, norm_floats},
                         {&bias_scratch_, W, bias_floats}, {&wgrad_, W, d.gpt ? QKV_ * C + QKV_ : 0},
                         {&rows3_, W, 3 * N}, {&loss_rows_, W, N}, {&sp_f_, Mem::comm_buffers, d.sp ? N * C : 0},
                         {&tokens_, W, N}, {&targets_, W, N}, {&partial_, W, 2 * cuda::kSumSquaresBlocks}};
  for (const B16& h : halves) {
    auto b = alloc_bf16(h.cat, h.n);
    if (!b) return b.error();
    *h.b = std::move(*b);
  }
  for (const F32& f : singles) {
    auto b = alloc(f.cat, f.n);
    if (!b) return b.error();
    *f.b = std::move(*b);
  }
  return ok_status();
}

Expected<std::unique_ptr<LayerState>> CudaCompute::layer_state(StashKind) {
  const Dims& d = d_;
  const Mem A = Mem::activations;
  auto st = std::make_unique<CudaLayerState>();
  const std::pair<Bf16*, int64_t> halves[] = {{&st->ln1, d.Ns * d.C}, {&st->qkv, d.N * QKV_}, {&st->atty, d.N * d.Ql},
                                              {&st->res2, d.Ns * d.C}, {&st->ln2, d.Ns * d.C},
                                              {&st->fch, d.N * FC_}, {&st->fch_act, d.N * d.Fl}};
  const std::pair<Buffer*, int64_t> singles[] = {{&st->mean1, d.gpt ? d.Ns : 0}, {&st->rstd1, d.Ns},
                                                 {&st->lse, d.B * d.Hl * d.T}, {&st->mean2, d.gpt ? d.Ns : 0},
                                                 {&st->rstd2, d.Ns}};
  for (const auto& [b, n] : halves) {
    auto x = alloc_bf16(A, n);
    if (!x) return x.error();
    *b = std::move(*x);
  }
  for (const auto& [b, n] : singles) {
    auto x = alloc(A, n);
    if (!x) return x.error();
    *b = std::move(*x);
  }
  return std::unique_ptr<LayerState>(std::move(st));
}

Expected<std::unique_ptr<HeadState>> CudaCompute::head_state() {
  const Dims& d = d_;
  auto st = std::make_unique<CudaHeadState>();
  const std::tuple<Buffer*, Mem, int64_t> singles[] = {{&st->lnf_in, Mem::activations, d.Ns * d.C},
                                                       {&st->mean, Mem::activations, d.gpt ? d.Ns : 0},
                                                       {&st->rstd, Mem::activations, d.Ns},
                                                       {&st->probs, Mem::logits, d.N * Vp8_}};
  for (const auto& [b, cat, n] : singles) {
    auto x = alloc(cat, n);
    if (!x) return x.error();
    *b = std::move(*x);
  }
  auto out = alloc_bf16(Mem::activations, d.N * d.C);
  if (!out) return out.error();
  st->lnf_out = std::move(*out);
  return std::unique_ptr<HeadState>(std::move(st));
}

// The unit's fp32 tensors into the bf16 working copy (q|k|v and gate|up made contiguous).
Status CudaCompute::cast_layer(const float* P, const UnitOffsets& o) {
  const Dims& d = d_;
  const int64_t C = d.C;
  struct Seg { int64_t src, dst, n; };
  const Seg segs[] = {{o.norm1_w, lw_.norm1_w, C}, {o.norm1_b, lw_.norm1_b, C},
                      {o.q_w, lw_.qkv_w, d.Ql * C}, {o.k_w, lw_.qkv_w + d.Ql * C, d.KVl * C},
                      {o.v_w, lw_.qkv_w + (d.Ql + d.KVl) * C, d.KVl * C},
                      {o.q_b, lw_.qkv_b, d.Ql}, {o.k_b, lw_.qkv_b + d.Ql, d.KVl}, {o.v_b, lw_.qkv_b + d.Ql + d.KVl, d.KVl},
                      {o.o_w, lw_.o_w, C * d.Ql}, {o.norm2_w, lw_.norm2_w, C}, {o.norm2_b, lw_.norm2_b, C},
                      {o.fc_w, lw_.fc_w, d.Fl * C}, {o.up_w, lw_.fc_w + d.Fl * C, d.Fl * C}, {o.fc_b, lw_.fc_b, d.Fl},
                      {o.proj_w, lw_.proj_w, C * d.Fl}};
  for (const Seg& s : segs)
    if (s.src >= 0 && s.dst >= 0) LOOM_TRY(cuda::cast_to_bf16(wb_.data() + s.dst, P + s.src, s.n, s_));
  return ok_status();
}

Status CudaCompute::cast_head(const float* P, const UnitOffsets& o, const float* head_P) {
  const Dims& d = d_;
  bf16* w = head_w_.data();
  LOOM_TRY(cuda::cast_to_bf16(w, head_P, d.Vr * d.C, s_));  // rows [Vr, Vp8) stay zero
  LOOM_TRY(cuda::cast_to_bf16(w + Vp8_ * d.C, P + o.normf_w, d.C, s_));
  if (o.normf_b >= 0) LOOM_TRY(cuda::cast_to_bf16(w + Vp8_ * d.C + d.C, P + o.normf_b, d.C, s_));
  return ok_status();
}

Status CudaCompute::upload_tokens(const int32_t* host, int32_t* dev) {
  return cuda_ok(cudaMemcpyAsync(dev, host, static_cast<size_t>(d_.N) * sizeof(int32_t), cudaMemcpyHostToDevice, s_),
                 "upload tokens");
}

// SP: this rank's (Ns, C) rows become all N rows (an fp32 all-gather: the Comm moves floats).
Expected<const bf16*> CudaCompute::gather_rows(const bf16* shard, bf16* full) {
  const Dims& d = d_;
  if (!d.sp) return shard;
  LOOM_TRY(cuda::cast_to_f32(sp_f_.data() + tp_.index * d.Ns * d.C, shard, d.Ns * d.C, s_));
  if (auto st = comm_.all_gather(tp_, sp_f_.data(), d.N * d.C); !st) return st.error();
  LOOM_TRY(cuda::cast_to_bf16(full, sp_f_.data(), d.N * d.C, s_));
  return static_cast<const bf16*>(full);
}

Expected<const float*> CudaCompute::gather_rows_f32(const float* shard, float* full) {
  const Dims& d = d_;
  if (!d.sp) return shard;
  if (auto st = copy(full + tp_.index * d.Ns * d.C, shard, d.Ns * d.C); !st) return st.error();
  if (auto st = comm_.all_gather(tp_, full, d.N * d.C); !st) return st.error();
  return static_cast<const float*>(full);
}

Expected<const float*> CudaCompute::reduce_rows(float* full) {
  const Dims& d = d_;
  if (!d.sp) {
    if (auto st = comm_.all_reduce(tp_, full, d.N * d.C); !st) return st.error();
    return static_cast<const float*>(full);
  }
  if (auto st = comm_.reduce_scatter(tp_, full, d.N * d.C); !st) return st.error();
  return static_cast<const float*>(full + tp_.index * d.Ns * d.C);
}

// A row-parallel projection's partial sums (N, C) -> out (Ns, C) = x + sum + bias (fp32), and
// its bf16 copy for the next norm when out_b is given.
Status CudaCompute::row_parallel_out(const bf16* part, const float* x, const float* bias, float* out, bf16* out_b) {
  const Dims& d = d_;
  LOOM_TRY(cuda::cast_to_f32(full_f_.data(), part, d.N * d.C, s_));
  auto r = reduce_rows(full_f_.data());
  if (!r) return r.error();
  return cuda::residual_add(out, out_b, x, *r, bias, d.Ns, d.C, s_);
}

// The input gradient of a column-parallel block (N, C partial sums) -> this rank's rows, bf16.
Status CudaCompute::reduce_to_bf16(const bf16* part_full, bf16* shard_out) {
  const Dims& d = d_;
  LOOM_TRY(cuda::cast_to_f32(full_f_.data(), part_full, d.N * d.C, s_));
  auto r = reduce_rows(full_f_.data());
  if (!r) return r.error();
  return cuda::cast_to_bf16(shard_out, *r, d.Ns * d.C, s_);
}

Status CudaCompute::norm_fwd(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b) {
  const Dims& d = d_;
  if (d.gpt) return cuda::layernorm_forward(nullptr, out, mean, rstd, in, nullptr, w, b, d.Ns, d.C, d.eps, s_);
  return cuda::rmsnorm_forward(nullptr, out, rstd, in, nullptr, w, d.Ns, d.C, d.eps, s_);
}

// d (Ns, C) fp32 += the norm's input gradient (computed in bf16, added once).
Status CudaCompute::norm_bwd_into(float* d, float* dw, float* db, const bf16* dout, const bf16* in, const bf16* w,
                                  const float* mean, const float* rstd) {
  const Dims& dm = d_;
  const int64_t n = dm.Ns * dm.C;
  LOOM_TRY(cuda_ok(cudaMemsetAsync(dres_b_.data(), 0, static_cast<size_t>(n) * sizeof(bf16), s_), "norm backward"));
  if (dm.gpt)
    LOOM_TRY(cuda::layernorm_backward(dres_b_.data(), dw, db, norm_scratch_.data(), dout, in, w, mean, rstd, dm.Ns,
                                      dm.C, s_));
  else
    LOOM_TRY(cuda::rmsnorm_backward(dres_b_.data(), dw, norm_scratch_.data(), dout, in, w, rstd, dm.Ns, dm.C, s_));
  return cuda::add_bf16_to_f32(d, dres_b_.data(), n, s_);
}

Status CudaCompute::linear(bf16* out, bf16* pre_gelu, const bf16* in, const bf16* w, const bf16* b, int64_t C,
                           int64_t OC) {
  flops_.matmul_flops += 2 * d_.N * OC * C;
  return cuda::matmul_forward(*gemm_, out, pre_gelu, in, w, b, d_.N, C, OC, s_);
}
Status CudaCompute::weight_grad(float* dw, float* db, const bf16* dout, const bf16* in, int64_t C, int64_t OC) {
  flops_.matmul_flops += 2 * d_.N * OC * C;
  return cuda::matmul_backward_weight(*gemm_, dw, db, bias_scratch_.data(), dout, in, d_.N, C, OC, s_);
}
Status CudaCompute::input_grad(bf16* din, const bf16* dout, const bf16* w, const bf16* gelu_in, int64_t C,
                               int64_t OC) {
  flops_.matmul_flops += 2 * d_.N * OC * C;
  return cuda::matmul_backward_input(*gemm_, din, dout, w, gelu_in, d_.N, C, OC, s_);
}

// Vocab-parallel embedding (stage.cpp's embed_forward): gathered rows, reduced over tp, plus
// the positions.
Status CudaCompute::embed_forward(const float* P, const UnitOffsets& o, const int32_t* tokens, float* x) {
  const Dims& d = d_;
  int32_t* tok = reinterpret_cast<int32_t*>(tokens_.data());
  LOOM_TRY(upload_tokens(tokens, tok));
  LOOM_TRY(cuda::embed_gather(full_f_.data(), P + o.wte, tok, d.N, d.C, tp_.index * d.Vr, d.Vr, s_));
  auto r = reduce_rows(full_f_.data());
  if (!r) return r.error();
  const int64_t row0 = d.sp ? tp_.index * d.Ns : 0;
  LOOM_TRY(cuda::add_positions(x, *r, at(P, o.wpe), d.Ns, d.C, row0, d.T, s_));
  return sync("embed_forward");
}

Status CudaCompute::embed_backward(float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx) {
  const Dims& d = d_;
  int32_t* tok = reinterpret_cast<int32_t*>(tokens_.data());
  LOOM_TRY(upload_tokens(tokens, tok));
  const int64_t row0 = d.sp ? tp_.index * d.Ns : 0;
  if (o.wpe >= 0) LOOM_TRY(cuda::position_scatter(G + o.wpe, dx, d.Ns, d.C, row0, d.T, s_));
  auto full = gather_rows_f32(dx, d_full_f_.data());
  if (!full) return full.error();
  LOOM_TRY(cuda::embed_scatter(G + o.wte, *full, tok, d.N, d.C, tp_.index * d.Vr, d.Vr, s_));
  return sync("embed_backward");
}

Status CudaCompute::layer_forward(const float* P, const UnitOffsets& o, const float* x, LayerState& st, float* out) {
  auto& s = static_cast<CudaLayerState&>(st);
  LOOM_TRY(cast_layer(P, o));
  LOOM_TRY(attention_block(P, o, x, s, res2_f_.data()));
  LOOM_TRY(mlp_block(P, o, res2_f_.data(), s, out));
  return sync("layer_forward");
}

Status CudaCompute::attention_block(const float* P, const UnitOffsets& o, const float* x, CudaLayerState& st,
                                    float* res2) {
  const Dims& d = d_;
  bf16* w = wb_.data();
  LOOM_TRY(cuda::cast_to_bf16(xb_.data(), x, d.Ns * d.C, s_));
  LOOM_TRY(norm_fwd(st.ln1.data(), st.mean1.data(), st.rstd1.data(), xb_.data(), w + lw_.norm1_w,
                    d.gpt ? w + lw_.norm1_b : nullptr));
  auto ln1 = gather_rows(st.ln1.data(), full_b_.data());
  if (!ln1) return ln1.error();
  LOOM_TRY(linear(st.qkv.data(), nullptr, *ln1, w + lw_.qkv_w, d.gpt ? w + lw_.qkv_b : nullptr, d.C, QKV_));
  if (!d.gpt)  // q and k are stashed after RoPE, as on the CPU
    LOOM_TRY(cuda::rope_forward(st.qkv.data(), d.B, d.T, d.Hl, d.Hkvl, d.hd, d.rope_theta, s_));
  flops_.attention_flops += 2 * (2 * d.B * d.Hl * d.T * d.T * d.hd);
  LOOM_TRY(cuda::attention_forward(st.atty.data(), st.lse.data(), st.qkv.data(), d.B, d.T, d.Hl, d.Hkvl, d.hd, s_));
  LOOM_TRY(linear(full_b_.data(), nullptr, st.atty.data(), w + lw_.o_w, nullptr, d.Ql, d.C));
  return row_parallel_out(full_b_.data(), x, at(P, o.o_b), res2, st.res2.data());
}

Status CudaCompute::mlp_block(const float* P, const UnitOffsets& o, const float* res2, CudaLayerState& st,
                              float* out) {
  const Dims& d = d_;
  bf16* w = wb_.data();
  LOOM_TRY(norm_fwd(st.ln2.data(), st.mean2.data(), st.rstd2.data(), st.res2.data(), w + lw_.norm2_w,
                    d.gpt ? w + lw_.norm2_b : nullptr));
  auto ln2 = gather_rows(st.ln2.data(), full_b_.data());
  if (!ln2) return ln2.error();
  if (d.gpt) {  // fc with the GELU fused (its input kept as the GEMM's aux output)
    LOOM_TRY(linear(st.fch_act.data(), st.fch.data(), *ln2, w + lw_.fc_w, w + lw_.fc_b, d.C, d.Fl));
  } else {
    LOOM_TRY(linear(st.fch.data(), nullptr, *ln2, w + lw_.fc_w, nullptr, d.C, FC_));
    LOOM_TRY(cuda::swiglu_forward(st.fch_act.data(), st.fch.data(), d.N, d.Fl, s_));
  }
  LOOM_TRY(linear(full_b_.data(), nullptr, st.fch_act.data(), w + lw_.proj_w, nullptr, d.Fl, d.C));
  return row_parallel_out(full_b_.data(), res2, at(P, o.proj_b), out, nullptr);
}

Status CudaCompute::layer_backward(const float* P, float* G, const UnitOffsets& o, const float* x, LayerState& st,
                                   float* d, bool recompute_core) {
  auto& s = static_cast<CudaLayerState&>(st);
  if (!d_.gpt && o.up_w != o.fc_w + d_.Fl * d_.C)
    return make_error("layer_backward", "the CUDA backend needs the gate and up weights adjacent in the unit");
  LOOM_TRY(cast_layer(P, o));
  LOOM_TRY(mlp_backward(G, o, s, d));
  LOOM_TRY(attention_backward(G, o, x, s, d, recompute_core));
  return sync("layer_backward");
}

Status CudaCompute::mlp_backward(float* G, const UnitOffsets& o, CudaLayerState& st, float* d) {
  const Dims& dm = d_;
  bf16* w = wb_.data();
  if (o.proj_b >= 0) LOOM_TRY(cuda::column_sum_f32(G + o.proj_b, d, dm.Ns, dm.C, s_));
  auto dF = gather_rows_f32(d, d_full_f_.data());
  if (!dF) return dF.error();
  LOOM_TRY(cuda::cast_to_bf16(d_full_b_.data(), *dF, dm.N * dm.C, s_));
  LOOM_TRY(weight_grad(G + o.proj_w, nullptr, d_full_b_.data(), st.fch_act.data(), dm.Fl, dm.C));
  if (dm.gpt) {  // the GELU derivative fused into the input gradient
    LOOM_TRY(input_grad(d_gateup_.data(), d_full_b_.data(), w + lw_.proj_w, st.fch.data(), dm.Fl, dm.C));
  } else {
    LOOM_TRY(input_grad(d_act_.data(), d_full_b_.data(), w + lw_.proj_w, nullptr, dm.Fl, dm.C));
    LOOM_TRY(cuda::swiglu_backward(d_gateup_.data(), d_act_.data(), st.fch.data(), dm.N, dm.Fl, s_));
  }
  // SP keeps the norm output as a shard: gather it again for the weight gradient.
  auto ln2 = gather_rows(st.ln2.data(), full_b_.data());
  if (!ln2) return ln2.error();
  LOOM_TRY(weight_grad(G + o.fc_w, at(G, o.fc_b), d_gateup_.data(), *ln2, dm.C, FC_));
  LOOM_TRY(input_grad(d_full_b_.data(), d_gateup_.data(), w + lw_.fc_w, nullptr, dm.C, FC_));
  LOOM_TRY(reduce_to_bf16(d_full_b_.data(), shard_b_.data()));
  return norm_bwd_into(d, G + o.norm2_w, at(G, o.norm2_b), shard_b_.data(), st.res2.data(), w + lw_.norm2_w,
                       st.mean2.data(), st.rstd2.data());
}

Status CudaCompute::attention_backward(float* G, const UnitOffsets& o, const float* x, CudaLayerState& st, float* d,
                                       bool recompute_core) {
  const Dims& dm = d_;
  bf16* w = wb_.data();
  if (o.o_b >= 0) LOOM_TRY(cuda::column_sum_f32(G + o.o_b, d, dm.Ns, dm.C, s_));
  auto dA = gather_rows_f32(d, d_full_f_.data());
  if (!dA) return dA.error();
  LOOM_TRY(cuda::cast_to_bf16(d_full_b_.data(), *dA, dm.N * dm.C, s_));
  LOOM_TRY(weight_grad(G + o.o_w, nullptr, d_full_b_.data(), st.atty.data(), dm.Ql, dm.C));
  LOOM_TRY(input_grad(d_atty_.data(), d_full_b_.data(), w + lw_.o_w, nullptr, dm.Ql, dm.C));
  // The fused backward rebuilds the probabilities from the log-sum-exp tile by tile in either
  // case; selective recompute is counted as the CPU counts its rebuilt forward.
  if (recompute_core) flops_.attention_flops += 2 * (2 * dm.B * dm.Hl * dm.T * dm.T * dm.hd);
  flops_.attention_flops += 4 * (2 * dm.B * dm.Hl * dm.T * dm.T * dm.hd);
  LOOM_TRY(cuda::attention_backward(dqkv_.data(), delta_.data(), d_atty_.data(), st.qkv.data(), st.atty.data(),
                                    st.lse.data(), dm.B, dm.T, dm.Hl, dm.Hkvl, dm.hd, s_));
  if (!dm.gpt) LOOM_TRY(cuda::rope_backward(dqkv_.data(), dm.B, dm.T, dm.Hl, dm.Hkvl, dm.hd, dm.rope_theta, s_));
  auto ln1 = gather_rows(st.ln1.data(), full_b_.data());
  if (!ln1) return ln1.error();
  LOOM_TRY(qkv_weight_grad(G, o, *ln1));
  LOOM_TRY(input_grad(d_full_b_.data(), dqkv_.data(), w + lw_.qkv_w, nullptr, dm.C, QKV_));
  LOOM_TRY(reduce_to_bf16(d_full_b_.data(), shard_b_.data()));
  LOOM_TRY(cuda::cast_to_bf16(xb_.data(), x, dm.Ns * dm.C, s_));
  return norm_bwd_into(d, G + o.norm1_w, at(G, o.norm1_b), shard_b_.data(), xb_.data(), w + lw_.norm1_w,
                       st.mean1.data(), st.rstd1.data());
}

// q, k, v weight (and bias) gradients: straight into G when the three are adjacent (llama), else
// through a zeroed fp32 scratch added into each tensor (gpt: biases sit between them).
Status CudaCompute::qkv_weight_grad(float* G, const UnitOffsets& o, const bf16* ln1) {
  const Dims& d = d_;
  const int64_t C = d.C;
  if (o.q_b < 0 && o.k_w == o.q_w + d.Ql * C && o.v_w == o.k_w + d.KVl * C)
    return weight_grad(G + o.q_w, nullptr, dqkv_.data(), ln1, C, QKV_);
  float* sw = wgrad_.data();
  float* sb = o.q_b >= 0 ? sw + QKV_ * C : nullptr;
  if (sw == nullptr) return make_error("layer_backward", "q, k and v weights are not adjacent in the unit");
  LOOM_TRY(fill_zero(sw, wgrad_.size()));
  LOOM_TRY(weight_grad(sw, sb, dqkv_.data(), ln1, C, QKV_));
  LOOM_TRY(cuda::add_f32(G + o.q_w, sw, d.Ql * C, s_));
  LOOM_TRY(cuda::add_f32(G + o.k_w, sw + d.Ql * C, d.KVl * C, s_));
  LOOM_TRY(cuda::add_f32(G + o.v_w, sw + (d.Ql + d.KVl) * C, d.KVl * C, s_));
  if (sb == nullptr) return ok_status();
  LOOM_TRY(cuda::add_f32(G + o.q_b, sb, d.Ql, s_));
  LOOM_TRY(cuda::add_f32(G + o.k_b, sb + d.Ql, d.KVl, s_));
  return cuda::add_f32(G + o.v_b, sb + d.Ql + d.KVl, d.KVl, s_);
}

// Final norm, the vocab-parallel head (logits in fp32, vocabulary rows padded to a multiple of 8
// with zero weights, masked out) and cross-entropy with the tp all-reduces of stage.cpp.
Expected<double> CudaCompute::head_forward(const float* P, const UnitOffsets& o, const float* head_P, const float* x,
                                           const int32_t* targets, HeadState& hs) {
  const Dims& d = d_;
  auto& st = static_cast<CudaHeadState&>(hs);
  if (x != st.lnf_in.data()) LOOM_TRY(copy(st.lnf_in.data(), x, d.Ns * d.C));
  LOOM_TRY(cast_head(P, o, head_P));
  const bf16* nw = head_w_.data() + Vp8_ * d.C;
  LOOM_TRY(cuda::cast_to_bf16(xb_.data(), st.lnf_in.data(), d.Ns * d.C, s_));
  LOOM_TRY(norm_fwd(d.sp ? shard_b_.data() : st.lnf_out.data(), st.mean.data(), st.rstd.data(), xb_.data(), nw,
                    o.normf_b >= 0 ? nw + d.C : nullptr));
  if (d.sp)
    if (auto g = gather_rows(shard_b_.data(), st.lnf_out.data()); !g) return g.error();
  cuda::Gemm::Call c;  // logits (N, Vp8) fp32 = lnf_out @ head^T
  c.trans_a = true;
  c.m = Vp8_, c.n = d.N, c.k = d.C;
  c.a = head_w_.data(), c.lda = d.C;
  c.b = st.lnf_out.data(), c.ldb = d.C;
  c.d = st.probs.data(), c.ldd = Vp8_, c.d_fp32 = true;
  LOOM_TRY(gemm_->run(c, s_, "head_forward", {{"N", d.N}, {"C", d.C}, {"V", Vp8_}}));
  flops_.matmul_flops += 2 * d.N * d.Vr * d.C;
  const int64_t v0 = tp_.index * d.Vr, valid = std::clamp<int64_t>(d.V - v0, 0, d.Vr);
  float* mx = rows3_.data();
  float* sum = mx + d.N;
  float* tgt = sum + d.N;
  int32_t* tg = reinterpret_cast<int32_t*>(targets_.data());
  LOOM_TRY(upload_tokens(targets, tg));
  LOOM_TRY(cuda::row_max(mx, st.probs.data(), d.N, Vp8_, valid, s_));
  if (auto s = comm_.all_reduce(tp_, mx, d.N, ReduceOp::max); !s) return s.error();
  LOOM_TRY(cuda::exp_and_sum(st.probs.data(), sum, tgt, mx, tg, d.N, Vp8_, valid, v0, s_));
  if (auto s = comm_.all_reduce(tp_, sum, d.N); !s) return s.error();
  if (auto s = comm_.all_reduce(tp_, tgt, d.N); !s) return s.error();
  LOOM_TRY(cuda::normalize_and_loss(st.probs.data(), loss_rows_.data(), sum, mx, tgt, d.N, Vp8_, valid, s_));
  std::vector<float> rows(static_cast<size_t>(d.N));
  LOOM_TRY(download(rows.data(), loss_rows_.data(), d.N));
  double loss = 0;
  for (float r : rows) loss += static_cast<double>(r);
  return loss;
}

Status CudaCompute::head_backward(const float* P, float* G, const UnitOffsets& o, const float* head_P, float* head_G,
                                  const int32_t* targets, HeadState& hs, double scale, float* d_out) {
  const Dims& d = d_;
  auto& st = static_cast<CudaHeadState&>(hs);
  const int64_t v0 = tp_.index * d.Vr, valid = std::clamp<int64_t>(d.V - v0, 0, d.Vr);
  int32_t* tg = reinterpret_cast<int32_t*>(targets_.data());
  LOOM_TRY(upload_tokens(targets, tg));
  LOOM_TRY(cast_head(P, o, head_P));
  LOOM_TRY(cuda::crossentropy_grad(dlogits_.data(), st.probs.data(), tg, d.N, Vp8_, valid, v0,
                                   static_cast<float>(scale), s_));
  LOOM_TRY(cuda::matmul_backward_input(*gemm_, d_full_b_.data(), dlogits_.data(), head_w_.data(), nullptr, d.N, d.C,
                                       Vp8_, s_));
  cuda::Gemm::Call c;  // head_G (Vr, C) += dlogits^T @ lnf_out
  c.trans_b = true;
  c.m = d.C, c.n = d.Vr, c.k = d.N;
  c.a = st.lnf_out.data(), c.lda = d.C;
  c.b = dlogits_.data(), c.ldb = Vp8_;
  c.d = head_G, c.ldd = d.C, c.d_fp32 = true, c.beta = 1.0f;
  LOOM_TRY(gemm_->run(c, s_, "head_backward_weight", {{"N", d.N}, {"C", d.C}, {"V", d.Vr}}));
  flops_.matmul_flops += 2 * (2 * d.N * d.Vr * d.C);
  LOOM_TRY(reduce_to_bf16(d_full_b_.data(), shard_b_.data()));
  LOOM_TRY(fill_zero(d_out, d.Ns * d.C));
  LOOM_TRY(cuda::cast_to_bf16(xb_.data(), st.lnf_in.data(), d.Ns * d.C, s_));
  const bf16* nw = head_w_.data() + Vp8_ * d.C;
  LOOM_TRY(norm_bwd_into(d_out, G + o.normf_w, at(G, o.normf_b), shard_b_.data(), xb_.data(), nw, st.mean.data(),
                         st.rstd.data()));
  return sync("head_backward");
}

// The global norm's sum of squares: fixed per-block partial sums in double, added in order here.
Status CudaCompute::add_sum_squares(const float* g, int64_t n, double& sum) {
  if (n == 0) return ok_status();
  double* part = reinterpret_cast<double*>(partial_.data());
  LOOM_TRY(cuda::sum_squares_partial(part, g, n, s_));
  std::vector<double> host(cuda::kSumSquaresBlocks);
  LOOM_TRY(cuda_ok(cudaMemcpyAsync(host.data(), part, host.size() * sizeof(double), cudaMemcpyDeviceToHost, s_),
                   "sum of squares"));
  LOOM_TRY(sync("sum of squares"));
  for (double v : host) sum += v;
  return ok_status();
}

Status CudaCompute::adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step,
                          const cpu::AdamWConfig& c) {
  const cuda::AdamWRange h{static_cast<float>(c.lr), static_cast<float>(c.beta1), static_cast<float>(c.beta2),
                           static_cast<float>(c.eps), static_cast<float>(c.weight_decay),
                           static_cast<float>(1.0 - std::pow(c.beta1, static_cast<double>(step))),
                           static_cast<float>(1.0 - std::pow(c.beta2, static_cast<double>(step)))};
  LOOM_TRY(cuda::adamw_f32(p, g, m, v, n, h, s_));
  return sync("adamw");
}

}  // namespace

Status check_cuda_dims(const Dims& d) {
  auto bad = [](const char* field, int64_t got, const char* rule) {
    return make_error(field, std::string(rule) + " (got " + std::to_string(got) + ")");
  };
  if (d.hd != 64 && d.hd != 128) return bad("model.head_dim", d.hd, "the CUDA attention kernel runs head size 64 or 128");
  if (d.T < cuda::kAttentionBlock || d.T % cuda::kAttentionBlock != 0)
    return bad("train.seq", d.T, "the CUDA attention kernel needs a positive multiple of 64");
  if (d.C % 8 != 0) return bad("model.hidden", d.C, "the CUDA GEMMs need 16-byte rows: a multiple of 8");
  if (d.Fl % 8 != 0) return bad("model.ffn_hidden", d.Fl, "per tp rank, the CUDA GEMMs need a multiple of 8");
  return ok_status();
}

Expected<std::unique_ptr<Compute>> make_cuda_compute(const ComputeSetup& setup, const CudaComputeOptions& options) {
  if (auto st = check_cuda_dims(setup.d); !st) return st.error();
  auto c = std::make_unique<CudaCompute>(setup, options);
  if (auto st = c->init(); !st) return st.error();
  return std::unique_ptr<Compute>(std::move(c));
}

}  // namespace loom::exec
