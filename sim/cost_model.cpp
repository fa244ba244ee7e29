#include "sim/cost_model.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "sim/collectives.hpp"
#include "sim/profile.hpp"

namespace loom {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of mixed-precision Adam state per parameter: fp32 master weights, momentum and
// variance (12, DESIGN.md; ZeRO paper's K = 12). An fp32 plan needs no master copy (8).
int64_t optimizer_bytes_per_param(Dtype d) { return d == Dtype::bf16 ? 12 : 8; }

}  // namespace

// Per layer, per micro-batch, per tp rank. T = b s tokens, e = bytes per element, t = tp,
// and tensors replicated across tp are divided by t with sequence parallelism.
// Korthikanti et al. 2022 (arXiv 2205.05198) Sec. 4.1, for GPT with dropout, e = 2:
//   attention 11 s b h + 5 a s^2 b, MLP 19 s b h, two layernorms 4 s b h, so
//   s b h (10 + 24/t + 5 a s/(h t)) with tp and s b h (34/t + 5 a s/(h t)) with SP too.
// Derived per tensor so GQA (K, V are T kv), SwiGLU (gate, up and their product: 3 T f) and
// fused attention (no s^2 tensors; an fp32 log-sum-exp per head and token) come out right.
LayerActivationBytes layer_activation_bytes(const ModelSpec& m, int64_t b, int64_t s, int64_t t,
                                            bool sp, Recompute r, Attention a, Dtype d) {
  const int64_t e = dtype_bytes(d), T = b * s, h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden;
  const int64_t rep = sp ? t : 1;  // divisor of tensors replicated across tp
  const int64_t mask = m.dropout ? 1 : 0;  // dropout masks: one byte per element
  LayerActivationBytes out;
  if (r == Recompute::full) {  // only the layer input is kept (Korthikanti: 2 s b h)
    out.tensors = e * T * h / rep;
    return out;
  }
  // Replicated: both norm inputs, QKV input (norm 1 output), MLP input (norm 2 output),
  // the dropout masks after attention projection and after the MLP.
  int64_t replicated = 4 * e * T * h + 2 * mask * T * h;
  // Sharded: Q, K, V, attention output (projection input); MLP fc1 output and GELU output,
  // or SwiGLU gate, up and product.
  int64_t sharded = e * T * (2 * h + 2 * kv) +
                    (m.family == Family::gpt ? 2 : 3) * e * T * f;
  // Attention core: softmax output (e), dropout mask (1) and dropout output (e) per score.
  int64_t core = 0, core_stats = 0;
  if (a == Attention::unfused) {
    if (r != Recompute::selective) core = (e + mask * (1 + e)) * m.heads * s * s * b;
  } else {
    core_stats = 4 * m.heads * T;  // fp32 log-sum-exp per head and token (FlashAttention-2)
  }
  const int64_t norms = m.family == Family::gpt ? 2 : 1;  // LayerNorm mean+rstd; RMSNorm rstd
  out.tensors = replicated / rep + sharded / t + core / t;
  out.statistics = 2 * norms * 4 * T / rep + core_stats / t;
  return out;
}

ModelStateBytes model_state_bytes(int64_t params, int64_t dp, int zero, Dtype dtype, Dtype grad_dtype) {
  const int64_t shard = ceil_div(params, dp);
  ModelStateBytes out;
  out.weights = dtype_bytes(dtype) * (zero >= 3 ? shard : params);
  out.grads = dtype_bytes(grad_dtype) * (zero >= 2 ? shard : params);
  out.optimizer = optimizer_bytes_per_param(dtype) * (zero >= 1 ? shard : params);
  return out;
}

int64_t in_flight_chunks(Schedule s, int64_t p, int64_t v, int64_t i, int64_t m) {
  switch (s) {
    case Schedule::gpipe: return m * v;
    case Schedule::one_f_one_b: return std::min(p - i, m) * v;
    case Schedule::interleaved: return std::min((p - i - 1) * 2 + (v - 1) * p + 1, m * v);
  }
  return m * v;
}

GroupLinksSet group_links(const Topology& topo, const RankGrid& grid) {
  return {topo.ring(grid, Dim::tp), topo.ring(grid, Dim::dp), topo.pipeline_p2p(grid)};
}

CostModel::CostModel(ModelSpec model, ClusterSpec cluster, TrainSpec train)
    : model_(std::move(model)), cluster_(std::move(cluster)), train_(train), topo_(cluster_) {}

Estimate CostModel::evaluate(const ParallelConfig& p) const {
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  return evaluate(p, group_links(topo_, *grid));
}

namespace {

// Time of the compute of one op on one GPU.
// With a calibration profile (cluster "profile", sim/profile.hpp; bf16 plans only) every term
// comes from what `loom calibrate` measured instead: GEMMs from its shape table (exact shape,
// else the nearest measured shape's FLOP/s), attention from its forward and backward times,
// memory-bound kernels from its bandwidth-against-size curve, the optimizer from its AdamW +
// gradient-norm time per parameter. Without one, the cluster's EfficiencySpec defaults.
struct OpTimer {
  double peak_flops, gemm_eff, gemm_half, attn_eff, hbm, mem_eff, launch_s;
  int64_t e;
  const HardwareProfile* prof = nullptr;

  // Matrix work at peak x an efficiency that grows with size: eff(F) = gemm * F / (F + F_half)
  // (a saturating curve; F_half from the cluster file until `loom calibrate` measures it),
  // never faster than streaming its operands from HBM (roofline), plus one launch.
  double gemm(double M, double N, double K) const {
    if (prof) return prof->gemm_s(M, N, K);
    const double flops = 2 * M * N * K;
    const double eff = gemm_eff * flops / (flops + gemm_half);
    const double bytes = static_cast<double>(e) * (M * K + K * N + M * N);
    return std::max(flops / (peak_flops * eff), bytes / (hbm * mem_eff)) + launch_s;
  }
  // Backward of out (M, N) = in (M, K) W: the input gradient (M, K, N) and the weight
  // gradient (N, K, M); without a profile, twice the forward.
  double gemm_bwd(double M, double N, double K) const {
    if (prof) return prof->gemm_s(M, K, N) + prof->gemm_s(N, K, M);
    return 2 * gemm(M, N, K);
  }
  // Memory-bound kernels: bytes moved at HBM bandwidth x efficiency, plus one launch.
  double memory(double bytes) const {
    if (prof) return prof->memory_s(bytes);
    return bytes / (hbm * mem_eff) + launch_s;
  }
  // Causal fused attention of bh (batch x heads) sequences of s tokens, head size d; `flops`
  // the non-causal 4 b s^2 h count, of which causal FlashAttention runs half; FlashAttention-2's
  // backward runs 2.5x the forward's matmul FLOPs.
  double attention_fwd(double bh, double s, double d, double flops) const {
    if (prof) return prof->attention_fwd_s(bh, s, d);
    return 0.5 * flops / (peak_flops * attn_eff) + launch_s;
  }
  double attention_bwd(double bh, double s, double d, double flops) const {
    if (prof) return prof->attention_bwd_s(bh, s, d);
    return 2.5 * attention_fwd(bh, s, d, flops);
  }
  // AdamW over `params` parameters moving `bytes` (memory-bound); the profile's measured AdamW
  // and gradient-norm time per parameter when there is one.
  double optimizer(double params, double bytes) const {
    if (prof) return prof->optimizer_s(params);
    return memory(bytes);
  }
};

struct StageShape {
  int64_t layers = 0;
  bool first = false, last = false;
};

struct PerMicroBatch {
  double fwd = 0, bwd = 0, recompute = 0, tp = 0;
  int64_t tp_bytes = 0;   // bytes this rank sends in tp collectives for one micro-batch
};

// Forward, backward and recompute time of one micro-batch on one stage, and its tensor-
// parallel communication (Megatron: two all-reduces of b s h per layer forward and two
// backward, each a reduce-scatter + all-gather pair with SP; a full recompute repeats the
// forward ones).
PerMicroBatch stage_micro_batch(const ModelSpec& m, const TrainSpec& tr, const ParallelConfig& p,
                                const StageShape& st, const OpTimer& op, const GroupLinks& tpl) {
  const double b = static_cast<double>(p.micro_batch), s = static_cast<double>(tr.seq);
  const double T = b * s, h = m.hidden, kv = m.kv_dim(), f = m.ffn_hidden, t = p.tp;
  const double e = static_cast<double>(op.e);
  const double rep = p.sp ? t : 1;
  const double heads_rank = static_cast<double>(m.heads) / t, d = h / m.heads;
  const bool gpt = m.family == Family::gpt;
  const double mask = m.dropout ? 1 : 0;
  PerMicroBatch out;

  // One layer forward.
  double gemms = op.gemm(T, (h + 2 * kv) / t, h) + op.gemm(T, h, h / t);
  gemms += gpt ? op.gemm(T, f / t, h) + op.gemm(T, h, f / t) : op.gemm(T, 2 * f / t, h) + op.gemm(T, h, f / t);
  double core_fwd;
  if (tr.attention == Attention::fused) {
    // Causal FlashAttention skips the upper triangle: half of 4 b s^2 h / t.
    core_fwd = op.attention_fwd(b * heads_rank, s, d, 4 * b * s * s * h / t);
  } else {
    const double scores = heads_rank * b * s * s;
    core_fwd = 2 * (op.gemm(s, s, d) - op.launch_s) * heads_rank * b + 2 * op.launch_s  // batched
               + op.memory(2 * e * scores)                                          // softmax
               + (m.dropout ? op.memory((2 * e + mask) * scores) : 0);              // dropout
  }
  double elementwise = 2 * op.memory(2 * e * T * h / rep)              // two norms
                       + 2 * op.memory(3 * e * T * h / rep)            // two residual adds
                       + (gpt ? op.memory(2 * e * T * f / t) : op.memory(3 * e * T * f / t))  // GELU | SwiGLU
                       + (gpt ? 0 : op.memory(2 * e * T * (h + kv) / t))                    // RoPE on q, k
                       + (m.dropout ? 2 * op.memory((2 * e + mask) * T * h / rep) : 0);
  const double layer_fwd = gemms + core_fwd + elementwise;
  // Backward: every GEMM twice (input and weight gradients); FlashAttention-2's backward
  // runs 2.5x the forward's matmul FLOPs; elementwise kernels read two tensors and write one.
  const double core_bwd = tr.attention == Attention::fused ? op.attention_bwd(b * heads_rank, s, d, 4 * b * s * s * h / t)
                                                          : 2 * core_fwd;
  double gemms_bwd = op.gemm_bwd(T, (h + 2 * kv) / t, h) + op.gemm_bwd(T, h, h / t);
  gemms_bwd += gpt ? op.gemm_bwd(T, f / t, h) + op.gemm_bwd(T, h, f / t) : op.gemm_bwd(T, 2 * f / t, h) + op.gemm_bwd(T, h, f / t);
  const double layer_bwd = gemms_bwd + core_bwd + 1.5 * elementwise;
  double layer_recompute = 0;
  if (p.recompute == Recompute::full) layer_recompute = layer_fwd;
  if (p.recompute == Recompute::selective) layer_recompute = core_fwd;

  const double L = static_cast<double>(st.layers);
  out.fwd = L * layer_fwd;
  out.bwd = L * layer_bwd;
  out.recompute = L * layer_recompute;

  // Tensor-parallel traffic in halves: an all-reduce is a reduce-scatter plus an all-gather
  // (what SP runs instead), so both move the same bytes. Per layer: 2 all-reduces forward,
  // 2 backward, 2 more for a full recompute. Vocab-parallel embedding: an all-reduce (SP: a
  // reduce-scatter forward and, as its gradient, an all-gather backward). Output layer: its input gradient all-reduced (SP: all-gather forward,
  // reduce-scatter backward).
  const double Vr = static_cast<double>(vocab_per_rank(m.vocab, p.tp));
  int64_t halves = st.layers * 2 * (4 + (p.recompute == Recompute::full ? 2 : 0));
  // SP keeps the norm outputs sequence-sharded, so backward gathers both again before the
  // weight-gradient GEMMs that need them (Korthikanti et al. 2022, Sec. 4.2.2): 2 more halves.
  if (p.sp) halves += st.layers * 2;
  if (st.first) {
    out.fwd += op.memory(2 * e * T * h);  // embedding gather (+ positions)
    halves += 2;  // all-reduce; SP: reduce-scatter forward, its all-gather in backward
  }
  if (st.last) {
    // Final norm, logits GEMM (forward; backward twice), then the cross-entropy: unfused, it
    // reads the logits and writes fp32 probabilities, and backward reads those and writes the
    // logits' gradient; fused, one pass reads the logits and writes the gradient over them.
    const double ce_fwd = tr.cross_entropy == CrossEntropy::fused ? 2 * e * T * Vr : (e + 4) * T * Vr;
    out.fwd += op.memory(2 * e * T * h / rep) + op.gemm(T, Vr, h) + op.memory(ce_fwd);
    out.bwd += op.memory(3 * e * T * h / rep) + op.gemm_bwd(T, Vr, h);
    if (tr.cross_entropy == CrossEntropy::unfused) out.bwd += op.memory((4 + e) * T * Vr);
    halves += 2;
  }
  if (p.tp > 1) {
    const int64_t act_bytes = op.e * p.micro_batch * tr.seq * m.hidden;  // b s h
    out.tp_bytes = halves * collective_send_bytes(Collective::reduce_scatter, act_bytes, p.tp);
    out.tp = halves * collective_time_s(Collective::reduce_scatter, static_cast<double>(act_bytes), tpl);
    if (st.last) {
      // Vocab-parallel cross-entropy: all-reduces of the max, the target logit and the sum
      // of exponentials, 4 bytes per token each (Megatron's _VocabParallelCrossEntropy).
      const int64_t small = 4 * p.micro_batch * tr.seq;
      out.tp_bytes += 3 * collective_send_bytes(Collective::all_reduce, small, p.tp);
      out.tp += 3 * collective_time_s(Collective::all_reduce, static_cast<double>(small), tpl);
    }
  }
  return out;
}

}  // namespace

Estimate CostModel::evaluate(const ParallelConfig& p, const GroupLinksSet& links) const {
  const ModelSpec& m = model_;
  const TrainSpec& tr = train_;
  const ClusterSpec& c = cluster_;
  Estimate est;
  est.model = m.name;
  est.cluster = c.name;
  est.params = total_params(m);
  est.gpus = p.gpus();
  est.parallel = p;
  est.train = tr;
  const int64_t mb = tr.global_batch / (p.dp * p.micro_batch);
  est.micro_batches = mb;
  const int64_t e = dtype_bytes(tr.dtype), g = dtype_bytes(tr.grad_dtype);
  const int64_t h = m.hidden, T = p.micro_batch * tr.seq;
  const int64_t Vr = vocab_per_rank(m.vocab, p.tp);
  const LayerParams lp = layer_params(m);
  const int64_t layer_rank = lp.sharded / p.tp + lp.replicated;  // params of one layer on one tp rank
  const int64_t layers_stage = m.layers / p.pp;
  const int64_t layers_chunk = m.layers / (p.pp * p.vpp);
  const int64_t rep = p.sp ? p.tp : 1;
  const double peak_flops = tr.dtype == Dtype::bf16 ? c.gpu.peak_flops_bf16 : c.gpu.peak_flops_fp32;
  const OpTimer op{peak_flops, c.efficiency.gemm, c.efficiency.gemm_half_size_flops, c.efficiency.attention,
                   c.gpu.hbm_bytes_per_s, c.efficiency.memory_bound,
                   c.calibration && tr.dtype == Dtype::bf16 ? c.calibration->kernel_launch_s : c.efficiency.kernel_launch_s, e,
                   tr.dtype == Dtype::bf16 ? c.calibration.get() : nullptr};
  const ProfileMemory* prof_mem = c.calibration ? &c.calibration->memory : nullptr;
  const LayerActivationBytes act = layer_activation_bytes(m, p.micro_batch, tr.seq, p.tp, p.sp,
                                                          p.recompute, tr.attention, tr.dtype);
  const LayerActivationBytes act_full =
      layer_activation_bytes(m, p.micro_batch, tr.seq, p.tp, p.sp, Recompute::none, tr.attention, tr.dtype);
  const FlopCount layer_fwd_flops = layer_forward_flops(m, p.micro_batch, tr.seq).total() / p.tp;
  const FlopCount layer_attn_flops = layer_forward_flops(m, p.micro_batch, tr.seq).attention / p.tp;
  const FlopCount logits_flops = 2 * FlopCount(T) * h * Vr;

  est.capacity_bytes = c.gpu.memory_bytes;
  est.usable_bytes = static_cast<int64_t>(std::floor(static_cast<double>(c.gpu.memory_bytes) *
                                                     (1.0 - c.runtime_memory.memory_headroom)));
  std::vector<PerMicroBatch> per_mb(p.pp);
  for (int64_t i = 0; i < p.pp; ++i) {
    StageEstimate s;
    s.index = i;
    s.layers = layers_stage;
    const bool first = i == 0, last = i == p.pp - 1;
    // Parameters on this GPU: its layers' tp shards, the vocab-parallel embedding (+ replicated
    // positions) on the first stage, the final norm and the output layer on the last; a tied
    // output layer on a separate last stage is a copy (Megatron keeps one, synced by all-reduce).
    int64_t params = layers_stage * layer_rank;
    int64_t embed_rank = 0;
    if (first) embed_rank = Vr * h + (m.family == Family::gpt ? m.seq_len * h : 0);
    int64_t out_rank = 0;
    if (last) out_rank = final_norm_params(m) + ((!m.tied_embeddings || p.pp > 1) ? Vr * h : 0);
    params += embed_rank + out_rank;
    s.params = params;

    const int64_t shard = ceil_div(params, p.dp);
    const ModelStateBytes state = model_state_bytes(params, p.dp, p.zero, tr.dtype, tr.grad_dtype);
    s.memory.weights = state.weights;
    s.memory.grads = state.grads;
    s.memory.optimizer = state.optimizer;

    // Activations of the chunks in flight, plus what a recompute rebuilds for one layer in
    // backward: a full recompute the layer's activations less the input it already holds, a
    // selective one the attention core (the CPU executor measures both to the byte).
    s.in_flight = in_flight_chunks(p.schedule, p.pp, p.vpp, i, mb);
    s.memory.activations = s.in_flight * layers_chunk * act.total();
    if (p.recompute != Recompute::none) s.memory.activations += act_full.total() - act.total();
    const int64_t mask = m.dropout ? 1 : 0;
    const int64_t per_mb_extra = (first ? mask * T * h / rep : 0)  // embedding dropout mask
                                 + (last ? e * T * h / rep + (m.family == Family::gpt ? 2 : 1) * 4 * T / rep  // final norm input + stats (one norm)
                                               + e * T * h         // output layer input (gathered)
                                         : 0);
    const int64_t stage_mbs = p.schedule == Schedule::gpipe ? mb : std::min<int64_t>(p.pp - i, mb);
    s.memory.activations += stage_mbs * per_mb_extra;
    // Logits (e, consumed by the cross-entropy) and the fp32 probabilities (4) the cross-entropy
    // keeps for backward, per token and vocab row: one micro-batch holds them at a time, except
    // GPipe, which runs every forward (and keeps every probability buffer) before the first backward.
    // A fused cross-entropy keeps only the logits buffer (its gradient overwrites it), one per
    // micro-batch whose backward has not run.
    if (last) {
      const int64_t held = p.schedule == Schedule::gpipe ? mb : 1;
      s.memory.logits = tr.cross_entropy == CrossEntropy::fused ? held * e * T * Vr : (e + held * 4) * T * Vr;
    }
    // Communication buffers: the SP all-gather output (b s h), PP send and receive buffers (the
    // tensor each tp rank holds, as Megatron-core sends it: b s h, or its b s h / t sequence shard
    // with SP), ZeRO-3's gathered current and prefetched layer, and under ZeRO-2/3 one layer's
    // full gradient waiting for its reduce-scatter.
    if (p.sp) s.memory.comm_buffers += e * T * h;
    if (p.pp > 1) s.memory.comm_buffers += 2 * e * T * h / rep;
    if (p.zero >= 3 && p.dp > 1)
      s.memory.comm_buffers += 2 * e * std::max({layer_rank, embed_rank, out_rank});
    if (p.zero >= 2 && p.dp > 1) s.memory.comm_buffers += g * std::max({layer_rank, embed_rank, out_rank});
    // Workspace: the cuBLAS workspace plus the backward's scratch, reused layer after layer:
    // gradients of the layer input, of both norm outputs and of the residual stream (b s h;
    // the residual's sequence-sharded with SP), of the MLP's inner activations (2 x b s f/t;
    // SwiGLU a third), of Q, K, V and the attention output (b s (h + 2 kv)/t plus the attention
    // core's output b s h/t; RoPE one more Q and K), fp32 softmax row statistics (3 per token),
    // the layer output a full recompute rebuilds, and with SP the packed replicated-parameter
    // gradients for their all-reduce. This is what the CPU reference executor allocates
    // (executor/stage.cpp make_scratch), measured to the byte.
    {
      const int64_t N = T, Ns = T / rep, Fl = m.ffn_hidden / p.tp, Ql = h / p.tp, KVl = m.kv_dim() / p.tp;
      int64_t elems = 3 * N * h + 2 * N * Fl + 3 * N * Ql + 2 * N * KVl + Ns * h;
      if (m.family == Family::llama) elems += N * Fl + N * Ql + N * KVl;
      if (p.recompute == Recompute::full) elems += Ns * h;
      int64_t scratch = e * elems + 4 * 3 * N;
      if (p.sp && p.tp > 1) {
        int64_t replicated = layers_stage * lp.replicated;
        if (first && m.family == Family::gpt) replicated += m.seq_len * h;
        if (last) replicated += final_norm_params(m);
        scratch += g * replicated;
      }
      s.memory.workspace = (prof_mem ? prof_mem->workspace_bytes : c.runtime_memory.workspace_bytes) + scratch;
    }
    const int64_t communicators = (p.tp > 1) + (p.dp > 1) + (p.pp > 1);
    const int64_t allocated = s.memory.weights + s.memory.grads + s.memory.optimizer + s.memory.activations +
                              s.memory.logits + s.memory.comm_buffers;
    // With a profile: the measured context, cuBLASLt handle and lazily loaded kernel modules,
    // and cudaMalloc's rounding of one allocation (the executor makes one arena) instead of
    // the documented fragmentation fraction.
    s.memory.runtime = prof_mem ? prof_mem->runtime_bytes() + prof_mem->malloc_granularity_bytes +
                                      communicators * c.runtime_memory.nccl_bytes_per_communicator
                                : c.runtime_memory.cuda_context_bytes +
                                      communicators * c.runtime_memory.nccl_bytes_per_communicator +
                                      static_cast<int64_t>(std::ceil(c.runtime_memory.allocator_fragmentation *
                                                                     static_cast<double>(allocated)));

    // FLOPs on this GPU per step (hardware: with recompute).
    FlopCount fl = layers_stage * 3 * layer_fwd_flops;
    if (p.recompute == Recompute::full) fl += layers_stage * layer_fwd_flops;
    if (p.recompute == Recompute::selective) fl += layers_stage * layer_attn_flops;
    if (last) fl += 3 * logits_flops;
    s.flops = fl * mb;

    // Time per micro-batch and tensor-parallel traffic.
    per_mb[i] = stage_micro_batch(m, tr, p, {layers_stage, first, last}, op, links.tp);
    s.forward_s = per_mb[i].fwd;
    s.backward_s = per_mb[i].bwd;
    s.recompute_s = per_mb[i].recompute;
    s.tp_comm_s = per_mb[i].tp;
    s.comm.tp = per_mb[i].tp_bytes * mb;
    // With SP each tp rank sees only its token rows, so the gradients of the parameters it
    // replicates (norms, row-parallel biases, positions) are partial sums: one all-reduce over
    // tp per step (Megatron's allreduce of sequence-parallel parameter gradients).
    if (p.sp && p.tp > 1) {
      int64_t replicated = layers_stage * lp.replicated;
      if (first && m.family == Family::gpt) replicated += m.seq_len * h;
      if (last) replicated += final_norm_params(m);
      s.comm.tp += collective_send_bytes(Collective::all_reduce, g * replicated, p.tp);
      s.tp_grad_sync_s = collective_time_s(Collective::all_reduce, static_cast<double>(g * replicated), links.tp);
    }

    // Pipeline: each chunk sends its output forward and its input gradient backward, the
    // tensor each tp rank holds (b s h; b s h / t with SP) per micro-batch, except the model's ends.
    if (p.pp > 1) {
      const int64_t msg = e * T * h / rep;
      const int64_t sends = 2 * p.vpp - (last ? 1 : 0) - (first ? 1 : 0);
      s.comm.pp = sends * mb * msg;
    }

    // Data parallel, per step (ZeRO paper Sec. 7): G gradient bytes and W weight bytes of this
    // rank's unsharded parameters, n = dp. Stage 0: all-reduce of G. 1: reduce-scatter of G and
    // all-gather of W once. 2: the reduce-scatter every micro-batch (only a shard of the
    // gradients is kept). 3: every micro-batch gathers W twice (forward, backward) and
    // reduce-scatters G: 1.5x the traffic of stage 0 at m = 1.
    const int64_t G = g * params, W = e * params, n = p.dp;
    const double r = p.grad_compression;
    auto compressed = [r](int64_t bytes) { return static_cast<int64_t>(std::ceil(static_cast<double>(bytes) / r)); };
    double grad_s = 0, gather_s = 0;  // full (unhidden) times
    int64_t dp_bytes = 0;
    const GroupLinks& dpl = links.dp;
    if (n > 1) {
      if (p.dp_comm == DpComm::parameter_server) {
        dp_bytes = compressed(G);
      } else if (p.zero == 0) {
        dp_bytes = collective_send_bytes(Collective::all_reduce, compressed(G), n);
        grad_s = collective_time_s(Collective::all_reduce, static_cast<double>(compressed(G)), dpl);
      } else if (p.zero <= 2) {
        const int64_t rs_times = p.zero == 2 ? mb : 1;
        dp_bytes = rs_times * collective_send_bytes(Collective::reduce_scatter, compressed(G), n) +
                   collective_send_bytes(Collective::all_gather, W, n);
        grad_s = rs_times * collective_time_s(Collective::reduce_scatter, static_cast<double>(compressed(G)), dpl);
        gather_s = collective_time_s(Collective::all_gather, static_cast<double>(W), dpl);
      } else {
        dp_bytes = mb * (2 * collective_send_bytes(Collective::all_gather, W, n) +
                         collective_send_bytes(Collective::reduce_scatter, compressed(G), n));
        grad_s = mb * collective_time_s(Collective::reduce_scatter, static_cast<double>(compressed(G)), dpl);
        gather_s = mb * 2 * collective_time_s(Collective::all_gather, static_cast<double>(W), dpl);
      }
    }
    // Tied embeddings split over first and last stage: all-reduce of the embedding gradient
    // between the two copies (Megatron's embedding group), once per step.
    if (p.pp > 1 && m.tied_embeddings && (first || last)) {
      const int64_t emb_g = g * Vr * h;
      dp_bytes += collective_send_bytes(Collective::all_reduce, emb_g, 2);
    }
    s.comm.dp = dp_bytes;

    // Exposed DP time. Gradient reduction runs in buckets during the backward that produces
    // them: only the part longer than that backward, and at least the last bucket, shows.
    // ZeRO-1/2 parameter all-gathers follow the optimizer step, exposed. ZeRO-3 gathers are
    // prefetched one layer ahead: each layer shows what its gather exceeds its compute.
    double exposed = 0;
    if (n > 1 && p.dp_comm == DpComm::ring) {
      const double buckets = std::max(1.0, std::ceil(static_cast<double>(G) / static_cast<double>(tr.dp_bucket_bytes)));
      if (p.zero <= 1) {
        exposed = std::max(grad_s - s.backward_s, grad_s / buckets) + gather_s;
      } else if (p.zero == 2) {
        const double per = grad_s / static_cast<double>(mb);
        exposed = mb * std::max(per - s.backward_s, per / buckets) + gather_s;
      } else {
        const double L = std::max<double>(1.0, static_cast<double>(layers_stage));
        const double ag_layer = gather_s / (2.0 * mb * L), rs_layer = grad_s / (mb * L);
        const double f_layer = s.forward_s / L, b_layer = (s.backward_s + s.recompute_s) / L;
        exposed = mb * (L * (std::max(0.0, ag_layer - f_layer) + std::max(0.0, ag_layer + rs_layer - b_layer)) + ag_layer);
      }
    } else if (n > 1) {
      // Parameter server (Li et al., OSDI 2014): each worker pushes G/r and pulls W; each of
      // k servers takes n/k workers' traffic over one NIC. Not overlapped.
      const double k = static_cast<double>(std::max<int64_t>(1, p.ps_servers));
      const double server_bw = c.inter_node.kind == "none" ? dpl.busbw_bytes_per_s : c.inter_node.busbw_bytes_per_s;
      const double push = std::max(compressed(G) / dpl.busbw_bytes_per_s, n * compressed(G) / (k * server_bw));
      const double pull = std::max(W / dpl.busbw_bytes_per_s, n * W / (k * server_bw));
      exposed = push + pull;
    }
    s.dp_comm_exposed_s = exposed;

    // Optimizer step: AdamW reads and writes the fp32 state and weights of its shard
    // (memory-bound): read master, m, v (12) and the gradient (g); write master, m, v (12)
    // and the working copy (e). An fp32 plan has no master copy (8 + 4 read, 8 + 4 written).
    const int64_t opt_params = p.zero >= 1 ? shard : params;
    const double opt_bytes = tr.dtype == Dtype::bf16 ? static_cast<double>(opt_params) * (12 + g + 12 + e)
                                                     : static_cast<double>(opt_params) * (12 + g + 12);
    s.optimizer_s = op.optimizer(static_cast<double>(opt_params), opt_bytes);

    est.stages.push_back(s);
  }

  // Step time (Narayanan et al. 2021, Sec. 2.2): the slowest stage runs m micro-batches; the
  // pipeline fills and drains through the others, (p - 1)/v micro-batch times when the stages
  // are equal (bubble fraction (p-1)/(v m)).
  size_t slow = 0;
  double sum_mb = 0;
  for (size_t i = 0; i < est.stages.size(); ++i) {
    sum_mb += est.stages[i].micro_batch_s();
    if (est.stages[i].micro_batch_s() > est.stages[slow].micro_batch_s()) slow = i;
  }
  const StageEstimate& ss = est.stages[slow];
  const double v = static_cast<double>(p.vpp);
  est.time.compute_s = mb * (ss.forward_s + ss.backward_s + ss.recompute_s);
  est.time.tp_comm_s = mb * ss.tp_comm_s + ss.tp_grad_sync_s;
  est.time.bubble_s = (sum_mb - ss.micro_batch_s()) / v;
  if (p.pp > 1) {
    // Each micro-batch chunk waits for its activations and its gradients on the critical
    // path: (m v + p - 1) forward and backward transfers.
    const double msg = static_cast<double>(e * T * h / (p.sp ? p.tp : 1));
    est.time.pp_comm_s = static_cast<double>(mb * p.vpp + p.pp - 1) * 2 * p2p_time_s(msg, links.pp);
  }
  for (const auto& s : est.stages) {
    est.time.dp_comm_s = std::max(est.time.dp_comm_s, s.dp_comm_exposed_s);
    est.time.optimizer_s = std::max(est.time.optimizer_s, s.optimizer_s);
  }
  est.step_time_s = est.time.total_s();

  est.flops_model = model_flops(m, tr.global_batch, tr.seq);
  est.flops_hardware = hardware_flops(m, tr.global_batch, tr.seq, p.recompute);
  est.tokens_per_s = static_cast<double>(tr.global_batch * tr.seq) / est.step_time_s;
  est.tflops_per_gpu = static_cast<double>(est.flops_model) / (static_cast<double>(est.gpus) * est.step_time_s) / 1e12;
  est.mfu = est.tflops_per_gpu * 1e12 / peak_flops;

  // Peak: the stage with the largest peak; comm: the largest per field.
  for (const auto& s : est.stages) {
    if (s.memory.peak() > est.stages[est.peak_stage].memory.peak()) est.peak_stage = s.index;
    est.comm.tp = std::max(est.comm.tp, s.comm.tp);
    est.comm.dp = std::max(est.comm.dp, s.comm.dp);
    est.comm.pp = std::max(est.comm.pp, s.comm.pp);
  }
  est.memory = est.stages[est.peak_stage].memory;
  est.fits = est.memory.peak() <= est.usable_bytes;
  if (!est.fits) {
    std::ostringstream why;
    why.precision(1);
    why << std::fixed << "stage " << est.peak_stage << " needs " << est.memory.peak() / 1073741824.0
        << " GiB > " << est.usable_bytes / 1073741824.0 << " GiB usable ("
        << c.runtime_memory.memory_headroom * 100 << "% of " << c.gpu.memory_bytes / 1073741824.0
        << " GiB kept free)";
    est.reason = why.str();
  }

  // The alternatives the seeds describe, for the gradients of the largest stage.
  const GroupLinks& dpl = links.dp;
  if (p.dp > 1) {
    const int64_t G = g * est.stages[est.peak_stage].params;
    const int64_t W = e * est.stages[est.peak_stage].params;
    est.dp_alternatives.ring_all_reduce_s = collective_time_s(Collective::all_reduce, static_cast<double>(G), dpl);
    est.dp_alternatives.compressed_ring_s =
        collective_time_s(Collective::all_reduce, static_cast<double>(G) / p.grad_compression, dpl);
    if (p.ps_servers > 0) {
      const double k = static_cast<double>(p.ps_servers), n = static_cast<double>(p.dp);
      const double server_bw = c.inter_node.kind == "none" ? dpl.busbw_bytes_per_s : c.inter_node.busbw_bytes_per_s;
      const double Gc = static_cast<double>(G) / p.grad_compression;
      est.dp_alternatives.parameter_server_s = std::max(Gc / dpl.busbw_bytes_per_s, n * Gc / (k * server_bw)) +
                                               std::max(W / dpl.busbw_bytes_per_s, n * W / (k * server_bw));
    }
  }
  return est;
}

}  // namespace loom
