#include "executor/stage.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "executor/cpu/attention.hpp"
#include "executor/cpu/gelu.hpp"
#include "executor/cpu/layernorm.hpp"
#include "executor/cpu/matmul.hpp"
#include "executor/cpu/rmsnorm.hpp"
#include "executor/cpu/rope.hpp"
#include "executor/cpu/swiglu.hpp"

namespace loom::exec {

namespace {

const float* at(const float* P, int64_t off) { return off < 0 ? nullptr : P + off; }
float* at(float* P, int64_t off) { return off < 0 ? nullptr : P + off; }
const float* const kNoBias = nullptr;
float* const kNoGrad = nullptr;
void zero(Buf& b) { std::fill(b.vec().begin(), b.vec().end(), 0.0f); }
void zero(float* p, int64_t n) { std::fill(p, p + n, 0.0f); }

void norm_fwd(const StageCtx& c, float* out, float* mean, float* rstd, const float* inp, const float* w,
              const float* b) {
  if (c.d.gpt) cpu::layernorm_forward(out, mean, rstd, inp, w, b, c.d.Ns, c.d.C, c.d.eps);
  else cpu::rmsnorm_forward(out, rstd, inp, w, c.d.Ns, c.d.C, c.d.eps);
}
void norm_bwd(const StageCtx& c, float* dinp, float* dw, float* db, const float* dout, const float* inp,
              const float* w, const float* mean, const float* rstd) {
  if (c.d.gpt) cpu::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, c.d.Ns, c.d.C);
  else cpu::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, c.d.Ns, c.d.C);
}

// SP: the (Ns, C) shard of this rank becomes the full (N, C) rows in `full` (all-gather along the
// token rows). Without SP the rows are already full and `shard` is returned as is.
Expected<const float*> gather_rows(StageCtx& c, const float* shard, float* full) {
  if (!c.d.sp) return shard;
  const int64_t n = c.d.Ns * c.d.C;
  std::memcpy(full + c.tp.index * n, shard, static_cast<size_t>(n) * sizeof(float));
  if (auto st = c.comm.all_gather(c.tp, full, c.d.N * c.d.C); !st) return st.error();
  return static_cast<const float*>(full);
}

// Row-parallel output: partial sums (N, C) in `full` become this rank's rows of the sum: an
// all-reduce (every rank gets all N rows) or, with SP, a reduce-scatter (Ns rows).
Expected<const float*> reduce_rows(StageCtx& c, float* full) {
  if (!c.d.sp) {
    if (auto st = c.comm.all_reduce(c.tp, full, c.d.N * c.d.C); !st) return st.error();
    return static_cast<const float*>(full);
  }
  if (auto st = c.comm.reduce_scatter(c.tp, full, c.d.N * c.d.C); !st) return st.error();
  return static_cast<const float*>(full + c.tp.index * c.d.Ns * c.d.C);
}

// Column sums of (Ns, C) rows into g (C): the gradient of a bias added after a reduction.
void add_colsum(float* g, const float* d, int64_t rows, int64_t C) {
  if (!g) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < C; ++j) g[j] += d[i * C + j];
}

}  // namespace

Expected<const float*> sp_gather_rows(StageCtx& c, const float* shard, float* full) { return gather_rows(c, shard, full); }
Expected<const float*> sp_reduce_rows(StageCtx& c, float* full) { return reduce_rows(c, full); }

LayerStash make_layer_stash(Ledger& l, const Dims& d, StashKind kind) {
  const Mem A = Mem::activations;
  LayerStash s;
  s.ln1 = Buf(l, A, d.Ns * d.C);
  if (d.gpt) s.mean1 = Buf(l, A, d.Ns);
  s.rstd1 = Buf(l, A, d.Ns);
  s.q = Buf(l, A, d.N * d.Ql);
  s.k = Buf(l, A, d.N * d.KVl);
  s.v = Buf(l, A, d.N * d.KVl);
  if (kind == StashKind::full && d.cp == 1) s.att = Buf(l, A, d.B * d.Hl * d.T * d.T);
  if (d.cp > 1) s.lse = Buf(l, A, d.B * d.Hl * d.T);  // the ring keeps no probabilities
  s.atty = Buf(l, A, d.N * d.Ql);
  s.res2 = Buf(l, A, d.Ns * d.C);
  s.ln2 = Buf(l, A, d.Ns * d.C);
  if (d.gpt) s.mean2 = Buf(l, A, d.Ns);
  s.rstd2 = Buf(l, A, d.Ns);
  s.fch = Buf(l, A, d.N * d.Fl);
  if (!d.gpt) s.up = Buf(l, A, d.N * d.Fl);
  s.fch_act = Buf(l, A, d.N * d.Fl);
  return s;
}

HeadStash make_head_stash(Ledger& l, const Dims& d) {
  HeadStash s;
  s.lnf_in = Buf(l, Mem::activations, d.Ns * d.C);
  if (d.gpt) s.lnf_mean = Buf(l, Mem::activations, d.Ns);
  s.lnf_rstd = Buf(l, Mem::activations, d.Ns);
  s.lnf_out = Buf(l, Mem::activations, d.N * d.C);
  s.probs = Buf(l, Mem::logits, d.N * d.Vr);
  return s;
}

Scratch make_scratch(Ledger& l, const Dims& d, bool last_stage) {
  const Mem W = Mem::workspace;
  Scratch s;
  s.full_a = Buf(l, W, d.N * d.C);
  s.d_full = Buf(l, W, d.N * d.C);
  s.d_ln_full = Buf(l, W, d.N * d.C);
  s.d_fch_act = Buf(l, W, d.N * d.Fl);
  s.d_fch = Buf(l, W, d.N * d.Fl);
  if (!d.gpt) s.d_up = Buf(l, W, d.N * d.Fl);
  s.d_atty = Buf(l, W, d.N * d.Ql);
  s.dq = Buf(l, W, d.N * d.Ql);
  s.dk = Buf(l, W, d.N * d.KVl);
  s.dv = Buf(l, W, d.N * d.KVl);
  if (!d.gpt) {
    s.dq0 = Buf(l, W, d.N * d.Ql);
    s.dk0 = Buf(l, W, d.N * d.KVl);
  }
  s.rows3 = Buf(l, W, 3 * d.N);
  s.att_out = Buf(l, W, d.N * d.Ql);
  if (d.sp) s.sp_gather = Buf(l, Mem::comm_buffers, d.N * d.C);
  if (last_stage) s.logits = Buf(l, Mem::logits, d.N * d.Vr);
  if (d.cp > 1 && d.cp_all_gather) {  // every rank's k, v (forward and backward), and dk, dv of every block
    s.ring_a = Buf(l, Mem::comm_buffers, 2 * d.cp * d.N * d.KVl);
    s.ring_b = Buf(l, Mem::comm_buffers, 2 * d.cp * d.N * d.KVl);
  } else if (d.cp > 1) {  // k, v, dk, dv of one block each
    s.ring_a = Buf(l, Mem::comm_buffers, 4 * d.N * d.KVl);
    s.ring_b = Buf(l, Mem::comm_buffers, 4 * d.N * d.KVl);
  }
  return s;
}

// Vocab-parallel embedding (Megatron VocabParallelEmbedding): rows of tokens outside this
// rank's vocabulary range are zero, the partial sums are all-reduced (SP: reduce-scattered to
// token rows), then the replicated position embedding is added.
Status embed_forward(StageCtx& c, const float* P, const UnitOffsets& o, const int32_t* tokens, float* x) {
  const Dims& d = c.d;
  float* part = c.s.full_a.data();
  const int64_t v0 = c.tp.index * d.Vr;
  for (int64_t n = 0; n < d.N; ++n) {
    const int64_t t = tokens[n] - v0;
    float* row = part + n * d.C;
    if (t >= 0 && t < d.Vr) std::memcpy(row, P + o.wte + t * d.C, static_cast<size_t>(d.C) * sizeof(float));
    else zero(row, d.C);
  }
  auto r = reduce_rows(c, part);
  if (!r) return r.error();
  const int64_t row0 = d.sp ? c.tp.index * d.Ns : 0;
  for (int64_t i = 0; i < d.Ns; ++i) {
    const float* wpe = o.wpe >= 0 ? P + o.wpe + cp_position(d, (row0 + i) % d.T) * d.C : nullptr;
    for (int64_t j = 0; j < d.C; ++j) x[i * d.C + j] = (*r)[i * d.C + j] + (wpe ? wpe[j] : 0.0f);
  }
  return ok_status();
}

Status embed_backward(StageCtx& c, float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx) {
  const Dims& d = c.d;
  if (o.wpe >= 0) {  // positions of this rank's rows (SP: a partial sum, summed over tp later)
    const int64_t row0 = d.sp ? c.tp.index * d.Ns : 0;
    for (int64_t i = 0; i < d.Ns; ++i) {
      float* g = G + o.wpe + cp_position(d, (row0 + i) % d.T) * d.C;
      for (int64_t j = 0; j < d.C; ++j) g[j] += dx[i * d.C + j];
    }
  }
  auto full = gather_rows(c, dx, c.s.d_full.data());
  if (!full) return full.error();
  const int64_t v0 = c.tp.index * d.Vr;
  for (int64_t n = 0; n < d.N; ++n) {
    const int64_t t = tokens[n] - v0;
    if (t < 0 || t >= d.Vr) continue;
    float* g = G + o.wte + t * d.C;
    for (int64_t j = 0; j < d.C; ++j) g[j] += (*full)[n * d.C + j];
  }
  return ok_status();
}

Status layer_forward(StageCtx& c, const float* P, const UnitOffsets& o, const float* x, LayerStash& st,
                     float* out) {
  const Dims& d = c.d;
  auto& fl = c.flops;
  // attention block
  norm_fwd(c, st.ln1.data(), st.mean1.data(), st.rstd1.data(), x, at(P, o.norm1_w), at(P, o.norm1_b));
  auto ln1 = gather_rows(c, st.ln1.data(), c.s.sp_gather.data());
  if (!ln1) return ln1.error();
  cpu::matmul_forward(st.q.data(), *ln1, P + o.q_w, at(P, o.q_b), d.N, d.C, d.Ql, fl);
  cpu::matmul_forward(st.k.data(), *ln1, P + o.k_w, at(P, o.k_b), d.N, d.C, d.KVl, fl);
  cpu::matmul_forward(st.v.data(), *ln1, P + o.v_w, at(P, o.v_b), d.N, d.C, d.KVl, fl);
  if (!d.gpt && d.cp > 1) {
    cp_rope(c, st);  // at the tokens' global positions (stage_cp.cpp)
  } else if (!d.gpt) {  // q and k are stashed after RoPE: attention's backward reads those
    cpu::rope_forward(st.q.data(), st.q.data(), d.B, d.T, d.Hl, d.hd, d.rope_theta);
    cpu::rope_forward(st.k.data(), st.k.data(), d.B, d.T, d.Hkvl, d.hd, d.rope_theta);
  }
  if (d.cp > 1) {
    if (auto r = cp_attention_forward(c, st); !r) return r;  // the ring (stage_cp.cpp)
  } else {
    // Selective recompute does not keep the probabilities: they live only during this call.
    Buf transient;
    float* att = st.att.data();
    if (st.att.empty()) {
      transient = Buf(c.ledger, Mem::activations, d.B * d.Hl * d.T * d.T);
      att = transient.data();
    }
    cpu::attention_forward(st.atty.data(), att, st.q.data(), st.k.data(), st.v.data(), d.B, d.T, d.Hl, d.Hkvl,
                           d.hd, fl);
  }
  float* part = c.s.full_a.data();
  cpu::matmul_forward(part, st.atty.data(), P + o.o_w, kNoBias, d.N, d.Ql, d.C, fl);
  auto a = reduce_rows(c, part);
  if (!a) return a.error();
  const float* ob = at(P, o.o_b);
  for (int64_t i = 0; i < d.Ns; ++i)
    for (int64_t j = 0; j < d.C; ++j) st.res2[i * d.C + j] = x[i * d.C + j] + ((*a)[i * d.C + j] + (ob ? ob[j] : 0.0f));
  // MLP block
  norm_fwd(c, st.ln2.data(), st.mean2.data(), st.rstd2.data(), st.res2.data(), at(P, o.norm2_w), at(P, o.norm2_b));
  if (o.router_w >= 0) return moe_layer_forward(c, P, o, st, out);  // a MoE layer (stage_moe.cpp)
  auto ln2 = gather_rows(c, st.ln2.data(), c.s.sp_gather.data());
  if (!ln2) return ln2.error();
  cpu::matmul_forward(st.fch.data(), *ln2, P + o.fc_w, at(P, o.fc_b), d.N, d.C, d.Fl, fl);
  if (d.gpt) {
    cpu::gelu_forward(st.fch_act.data(), st.fch.data(), d.N * d.Fl);
  } else {
    cpu::matmul_forward(st.up.data(), *ln2, P + o.up_w, kNoBias, d.N, d.C, d.Fl, fl);
    cpu::swiglu_forward(st.fch_act.data(), st.fch.data(), st.up.data(), d.N * d.Fl);
  }
  cpu::matmul_forward(part, st.fch_act.data(), P + o.proj_w, kNoBias, d.N, d.Fl, d.C, fl);
  auto f = reduce_rows(c, part);
  if (!f) return f.error();
  const float* pb = at(P, o.proj_b);
  for (int64_t i = 0; i < d.Ns; ++i)
    for (int64_t j = 0; j < d.C; ++j)
      out[i * d.C + j] = st.res2[i * d.C + j] + ((*f)[i * d.C + j] + (pb ? pb[j] : 0.0f));
  return ok_status();
}

namespace {

float* weight_grad(float* G, bool deferred, int64_t off) { return deferred ? kNoGrad : G + off; }

void keep(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); }

// The MLP block of backward_pass: the output's gradient (SP: gathered to all rows) through proj,
// the activation and fc, then norm 2 into dres. Split, the GEMMs' weight gradients wait for W.
Status mlp_backward_pass(StageCtx& c, const float* P, float* G, const UnitOffsets& o, LayerStash& st, float* dres,
                         bool split) {
  const Dims& d = c.d;
  auto& fl = c.flops;
  Scratch& s = c.s;
  const bool split_rows = split && !d.sp;  // proj and o defer theirs too
  add_colsum(at(G, o.proj_b), dres, d.Ns, d.C);
  auto dF = gather_rows(c, dres, s.d_full.data());
  if (!dF) return dF.error();
  zero(s.d_fch_act);
  cpu::matmul_backward(s.d_fch_act.data(), weight_grad(G, split_rows, o.proj_w), kNoGrad, *dF, st.fch_act.data(),
                       P + o.proj_w, d.N, d.Fl, d.C, fl);
  if (split_rows) keep(s.d_full.data(), *dF, d.N * d.C);  // into res2 once norm2's backward has read it
  zero(s.d_fch);
  if (d.gpt) {
    cpu::gelu_backward(s.d_fch.data(), st.fch.data(), s.d_fch_act.data(), d.N * d.Fl);
  } else {
    zero(s.d_up);
    cpu::swiglu_backward(s.d_fch.data(), s.d_up.data(), s.d_fch_act.data(), st.fch.data(), st.up.data(), d.N * d.Fl);
  }
  // SP keeps the norm output as a shard: gather it again for the weight gradient (Korthikanti
  // et al. 2022, Sec. 4.2.2). Split, W gathers it (only the weight gradient reads it).
  const float* ln2 = nullptr;
  if (!split) {
    auto g = gather_rows(c, st.ln2.data(), s.sp_gather.data());
    if (!g) return g.error();
    ln2 = *g;
  }
  zero(s.d_ln_full);
  if (!d.gpt)
    cpu::matmul_backward(s.d_ln_full.data(), weight_grad(G, split, o.up_w), kNoGrad, s.d_up.data(), ln2, P + o.up_w,
                         d.N, d.C, d.Fl, fl);
  cpu::matmul_backward(s.d_ln_full.data(), weight_grad(G, split, o.fc_w), at(G, o.fc_b), s.d_fch.data(), ln2,
                       P + o.fc_w, d.N, d.C, d.Fl, fl);
  if (split) {  // fc's (and up's) output gradients over their outputs, which B has read
    keep(st.fch.data(), s.d_fch.data(), d.N * d.Fl);
    if (!d.gpt) keep(st.up.data(), s.d_up.data(), d.N * d.Fl);
  }
  auto dln2 = reduce_rows(c, s.d_ln_full.data());
  if (!dln2) return dln2.error();
  norm_bwd(c, dres, at(G, o.norm2_w), at(G, o.norm2_b), *dln2, st.res2.data(), at(P, o.norm2_w), st.mean2.data(),
           st.rstd2.data());
  if (split_rows) {  // proj's output gradient into res2; o's (dres now) waits in d_full for x
    keep(st.res2.data(), s.d_full.data(), d.N * d.C);
    keep(s.d_full.data(), dres, d.N * d.C);
  }
  return ok_status();
}

// The MoE block in place of the MLP block (stage_moe.cpp), then norm 2 into dres.
Status moe_backward_pass(StageCtx& c, const float* P, float* G, const UnitOffsets& o, LayerStash& st, float* dres,
                         bool split) {
  const Dims& d = c.d;
  if (split) return make_error("parallel.schedule", "the CPU executor does not split the backward of MoE layers");
  Buf dln2(c.ledger, Mem::workspace, d.Ns * d.C);
  if (auto m = moe_layer_backward(c, P, G, o, st, dres, dln2.data()); !m) return m;
  norm_bwd(c, dres, at(G, o.norm2_w), at(G, o.norm2_b), dln2.data(), st.res2.data(), at(P, o.norm2_w),
           st.mean2.data(), st.rstd2.data());
  return ok_status();
}

// layer_backward, or with `split` ZB-H1's B (stage.hpp): the GEMMs' weight gradients wait for
// W, their output gradients kept in the stash (and, without SP, the attention output's in
// `keep_x`, the layer input's buffer, once norm1's backward has read it).
Status backward_pass(StageCtx& c, const float* P, float* G, const UnitOffsets& o, const float* x, float* keep_x,
                     LayerStash& st, float* dres, bool recompute_core, bool split) {
  const Dims& d = c.d;
  auto& fl = c.flops;
  Scratch& s = c.s;
  const bool split_rows = split && !d.sp;  // proj and o defer theirs too
  const bool moe = o.router_w >= 0;  // a MoE layer (stage_moe.cpp) in place of the MLP block
  if (auto m = moe ? moe_backward_pass(c, P, G, o, st, dres, split) : mlp_backward_pass(c, P, G, o, st, dres, split);
      !m)
    return m;
  // attention block
  add_colsum(at(G, o.o_b), dres, d.Ns, d.C);
  auto dA = gather_rows(c, dres, s.d_full.data());
  if (!dA) return dA.error();
  zero(s.d_atty);
  cpu::matmul_backward(s.d_atty.data(), weight_grad(G, split_rows, o.o_w), kNoGrad, *dA, st.atty.data(), P + o.o_w,
                       d.N, d.Ql, d.C, fl);
  Buf rebuilt;
  const float* att = st.att.data();
  if (recompute_core && d.cp == 1) {  // selective recompute: the attention core runs again (Megatron's
                         // checkpointed CoreAttention), its output discarded
    rebuilt = Buf(c.ledger, Mem::activations, d.B * d.Hl * d.T * d.T);
    cpu::attention_forward(s.att_out.data(), rebuilt.data(), st.q.data(), st.k.data(), st.v.data(), d.B, d.T, d.Hl,
                           d.Hkvl, d.hd, fl);
    att = rebuilt.data();
  }
  zero(s.dq);
  zero(s.dk);
  zero(s.dv);
  if (d.cp > 1) {
    if (auto r = cp_attention_backward(c, st); !r) return r;  // the ring (stage_cp.cpp)
  } else {
    cpu::attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.d_atty.data(), att, st.q.data(), st.k.data(),
                            st.v.data(), d.B, d.T, d.Hl, d.Hkvl, d.hd, fl);
  }
  rebuilt = Buf();
  float* dq = s.dq.data();
  float* dk = s.dk.data();
  if (!d.gpt && d.cp > 1) {
    cp_rope_grad(c);  // stage_cp.cpp
    dq = s.dq0.data();
    dk = s.dk0.data();
  } else if (!d.gpt) {
    zero(s.dq0);
    zero(s.dk0);
    cpu::rope_backward(s.dq0.data(), s.dq.data(), d.B, d.T, d.Hl, d.hd, d.rope_theta);
    cpu::rope_backward(s.dk0.data(), s.dk.data(), d.B, d.T, d.Hkvl, d.hd, d.rope_theta);
    dq = s.dq0.data();
    dk = s.dk0.data();
  }
  if (split) {  // q's, k's and v's gradients over them (attention's backward has read them)
    keep(st.q.data(), dq, d.N * d.Ql);
    keep(st.k.data(), dk, d.N * d.KVl);
    keep(st.v.data(), s.dv.data(), d.N * d.KVl);
  }
  const float* ln1 = nullptr;
  if (!split) {
    auto g = gather_rows(c, st.ln1.data(), s.sp_gather.data());
    if (!g) return g.error();
    ln1 = *g;
  }
  zero(s.d_ln_full);
  cpu::matmul_backward(s.d_ln_full.data(), weight_grad(G, split, o.q_w), at(G, o.q_b), dq, ln1, P + o.q_w, d.N, d.C,
                       d.Ql, fl);
  cpu::matmul_backward(s.d_ln_full.data(), weight_grad(G, split, o.k_w), at(G, o.k_b), dk, ln1, P + o.k_w, d.N, d.C,
                       d.KVl, fl);
  cpu::matmul_backward(s.d_ln_full.data(), weight_grad(G, split, o.v_w), at(G, o.v_b), s.dv.data(), ln1, P + o.v_w,
                       d.N, d.C, d.KVl, fl);
  auto dln1 = reduce_rows(c, s.d_ln_full.data());
  if (!dln1) return dln1.error();
  norm_bwd(c, dres, at(G, o.norm1_w), at(G, o.norm1_b), *dln1, x, at(P, o.norm1_w), st.mean1.data(), st.rstd1.data());
  if (split_rows) keep(keep_x, s.d_full.data(), d.N * d.C);
  return ok_status();
}

}  // namespace

Status layer_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, const float* x,
                      LayerStash& st, float* dres, bool recompute_core) {
  return backward_pass(c, P, G, o, x, nullptr, st, dres, recompute_core, false);
}

Status layer_backward_input(StageCtx& c, const float* P, float* G, const UnitOffsets& o, float* x, LayerStash& st,
                            float* dres, bool recompute_core) {
  return backward_pass(c, P, G, o, x, x, st, dres, recompute_core, true);
}

// The GEMMs backward_pass deferred, on the operands it would have used: the stashed inputs
// (ln1 and ln2 gathered again under SP, as the unsplit backward gathers them) and the output
// gradients it kept.
Status layer_backward_weight(StageCtx& c, float* G, const UnitOffsets& o, const float* x, LayerStash& st) {
  const Dims& d = c.d;
  auto& fl = c.flops;
  const float* const none = nullptr;  // no input gradient: the weight is not read
  if (!d.sp)
    cpu::matmul_backward(kNoGrad, G + o.proj_w, kNoGrad, st.res2.data(), st.fch_act.data(), none, d.N, d.Fl, d.C, fl);
  auto ln2 = gather_rows(c, st.ln2.data(), c.s.sp_gather.data());
  if (!ln2) return ln2.error();
  if (!d.gpt) cpu::matmul_backward(kNoGrad, G + o.up_w, kNoGrad, st.up.data(), *ln2, none, d.N, d.C, d.Fl, fl);
  cpu::matmul_backward(kNoGrad, G + o.fc_w, kNoGrad, st.fch.data(), *ln2, none, d.N, d.C, d.Fl, fl);
  if (!d.sp) cpu::matmul_backward(kNoGrad, G + o.o_w, kNoGrad, x, st.atty.data(), none, d.N, d.Ql, d.C, fl);
  auto ln1 = gather_rows(c, st.ln1.data(), c.s.sp_gather.data());
  if (!ln1) return ln1.error();
  cpu::matmul_backward(kNoGrad, G + o.q_w, kNoGrad, st.q.data(), *ln1, none, d.N, d.C, d.Ql, fl);
  cpu::matmul_backward(kNoGrad, G + o.k_w, kNoGrad, st.k.data(), *ln1, none, d.N, d.C, d.KVl, fl);
  cpu::matmul_backward(kNoGrad, G + o.v_w, kNoGrad, st.v.data(), *ln1, none, d.N, d.C, d.KVl, fl);
  return ok_status();
}

// Final norm, the vocab-parallel head and cross-entropy (Megatron's _VocabParallelCrossEntropy:
// all-reduces of the row max, the sum of exponentials and the target logit, N floats each).
Expected<double> head_forward(StageCtx& c, const float* P, const UnitOffsets& o, const float* head_P,
                              const float* x, const int32_t* targets, HeadStash& st) {
  const Dims& d = c.d;
  if (x != st.lnf_in.data()) std::memcpy(st.lnf_in.data(), x, static_cast<size_t>(d.Ns * d.C) * sizeof(float));
  float* lnf = d.sp ? c.s.full_a.data() : st.lnf_out.data();
  norm_fwd(c, lnf, st.lnf_mean.data(), st.lnf_rstd.data(), st.lnf_in.data(), at(P, o.normf_w), at(P, o.normf_b));
  if (d.sp) {
    auto g = gather_rows(c, lnf, st.lnf_out.data());
    if (!g) return g.error();
  }
  float* logits = c.s.logits.data();
  cpu::matmul_forward(logits, st.lnf_out.data(), head_P, kNoBias, d.N, d.C, d.Vr, c.flops);
  const int64_t v0 = c.tp.index * d.Vr;
  const int64_t valid = std::clamp<int64_t>(d.V - v0, 0, d.Vr);  // padded columns are masked
  float* mx = c.s.rows3.data();
  float* sum = mx + d.N;
  float* tgt = sum + d.N;
  for (int64_t n = 0; n < d.N; ++n) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t v = 0; v < valid; ++v) m = std::max(m, logits[n * d.Vr + v]);
    mx[n] = m;
  }
  if (auto s = c.comm.all_reduce(c.tp, mx, d.N, ReduceOp::max); !s) return s.error();
  for (int64_t n = 0; n < d.N; ++n) {
    double acc = 0;
    float* p = st.probs.data() + n * d.Vr;
    for (int64_t v = 0; v < d.Vr; ++v) {
      p[v] = v < valid ? std::exp(logits[n * d.Vr + v] - mx[n]) : 0.0f;
      acc += p[v];
    }
    sum[n] = static_cast<float>(acc);
    const int64_t t = targets[n] - v0;
    tgt[n] = (t >= 0 && t < valid) ? logits[n * d.Vr + t] : 0.0f;
  }
  if (auto s = c.comm.all_reduce(c.tp, sum, d.N); !s) return s.error();
  if (auto s = c.comm.all_reduce(c.tp, tgt, d.N); !s) return s.error();
  double loss = 0;
  for (int64_t n = 0; n < d.N; ++n) {
    const float inv = 1.0f / sum[n];
    float* p = st.probs.data() + n * d.Vr;
    for (int64_t v = 0; v < d.Vr; ++v) p[v] *= inv;
    loss += static_cast<double>(std::log(sum[n]) + mx[n] - tgt[n]);
  }
  return loss;
}

Status head_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, const float* head_P,
                     float* head_G, const int32_t* targets, HeadStash& st, double scale, float* d_out) {
  const Dims& d = c.d;
  const int64_t v0 = c.tp.index * d.Vr;
  const int64_t valid = std::clamp<int64_t>(d.V - v0, 0, d.Vr);
  const float w = static_cast<float>(scale);
  float* dl = st.probs.data();  // d loss / d logits = (probs - onehot) * w, in place
  for (int64_t n = 0; n < d.N; ++n) {
    const int64_t t = targets[n] - v0;
    for (int64_t v = 0; v < valid; ++v) dl[n * d.Vr + v] = (dl[n * d.Vr + v] - (v == t ? 1.0f : 0.0f)) * w;
  }
  zero(c.s.d_ln_full);
  cpu::matmul_backward(c.s.d_ln_full.data(), head_G, kNoGrad, dl, st.lnf_out.data(), head_P, d.N, d.C, d.Vr, c.flops);
  auto dlnf = reduce_rows(c, c.s.d_ln_full.data());
  if (!dlnf) return dlnf.error();
  zero(d_out, d.Ns * d.C);
  norm_bwd(c, d_out, at(G, o.normf_w), at(G, o.normf_b), *dlnf, st.lnf_in.data(), at(P, o.normf_w),
           st.lnf_mean.data(), st.lnf_rstd.data());
  return ok_status();
}

}  // namespace loom::exec
