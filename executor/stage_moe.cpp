#include <algorithm>
#include <string>
#include <vector>

#include "executor/cpu/gelu.hpp"
#include "executor/cpu/matmul.hpp"
#include "executor/cpu/swiglu.hpp"
#include "executor/stage.hpp"

namespace loom::exec {

namespace {

// The block's collectives on the rank's ep and etp groups.
class CommExchange final : public cpu::MoeExchange {
 public:
  CommExchange(Comm& comm, const Group& ep, const Group& etp) : comm_(comm), ep_(ep), etp_(etp) {}
  Status all_to_all(const float* send, float* recv, int64_t block_floats) override {
    const std::vector<int64_t> bytes(static_cast<size_t>(ep_.size()), block_floats * 4);
    return comm_.all_to_all(ep_, send, bytes, recv, bytes);
  }
  Status etp_all_gather(float* data, int64_t n) override { return comm_.all_gather(etp_, data, n); }
  Status etp_reduce_scatter(float* data, int64_t n) override { return comm_.reduce_scatter(etp_, data, n); }

 private:
  Comm& comm_;
  const Group& ep_;
  const Group& etp_;
};

// The rank routes its Ns rows (the sequence-parallel shard with tp > 1, check_cpu_moe), each
// expert taking at most capacity_rows(factor, Ns, k, E) of them.
cpu::MoeDims moe_dims(const StageCtx& c) {
  const Dims& d = c.d;
  cpu::MoeDims m;
  m.rows = d.Ns;
  m.C = d.C;
  m.E = d.E;
  m.k = d.topk;
  m.Fe = d.Fe;
  m.Fs = 0;  // shared experts: shared_forward, split over tp
  m.swiglu = !d.gpt;
  m.ep = d.ep;
  m.etp = d.etp;
  m.ep_index = c.ep ? c.ep->index : 0;
  m.etp_index = c.etp ? c.etp->index : 0;
  m.capacity = cpu::capacity_rows(d.capacity_factor, d.Ns, d.topk, d.E);
  return m;
}

// The unit's MoE tensors (the weights are only read).
cpu::MoeTensors<float> tensors(const float* base, const UnitOffsets& o) {
  float* b = const_cast<float*>(base);
  auto at = [&](int64_t off) { return off < 0 ? nullptr : b + off; };
  return {at(o.router_w), at(o.efc_w), at(o.eup_w), at(o.eproj_w), at(o.sfc_w), at(o.sup_w), at(o.sproj_w)};
}

// Shared experts over tp, as the dense MLP (stage.cpp's layer_forward): the rows gathered (SP),
// fc|gate and up column-parallel, proj|down row-parallel, the partial sums reduce-scattered and
// added to out (Ns, C). sh, su, sact (N, Fs/tp) are kept in the MoE stash.
Status shared_forward(StageCtx& c, const float* P, const UnitOffsets& o, LayerStash& st, float* out) {
  const Dims& d = c.d;
  const int64_t F = d.Fs;
  cpu::MoeState<float>& m = st.moe.s;
  auto ln2 = sp_gather_rows(c, st.ln2.data(), c.s.sp_gather.data());
  if (!ln2) return ln2.error();
  m.sh.assign(static_cast<size_t>(d.N * F), 0.0f);
  m.su.assign(d.gpt ? 0 : static_cast<size_t>(d.N * F), 0.0f);
  m.sact.assign(static_cast<size_t>(d.N * F), 0.0f);
  const float* none = nullptr;
  cpu::matmul_forward(m.sh.data(), *ln2, P + o.sfc_w, none, d.N, d.C, F, c.flops);
  if (d.gpt) {
    cpu::gelu_forward(m.sact.data(), m.sh.data(), d.N * F);
  } else {
    cpu::matmul_forward(m.su.data(), *ln2, P + o.sup_w, none, d.N, d.C, F, c.flops);
    cpu::swiglu_forward(m.sact.data(), m.sh.data(), m.su.data(), d.N * F);
  }
  float* part = c.s.full_a.data();
  cpu::matmul_forward(part, m.sact.data(), P + o.sproj_w, none, d.N, F, d.C, c.flops);
  auto r = sp_reduce_rows(c, part);
  if (!r) return r.error();
  for (int64_t i = 0; i < d.Ns * d.C; ++i) out[i] += (*r)[i];
  return ok_status();
}

// Its backward: dres gathered, through proj, the activation, fc and up; the input's gradient
// reduce-scattered and added to dln2 (Ns, C).
Status shared_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, LayerStash& st, const float* dres,
                       float* dln2) {
  const Dims& d = c.d;
  const int64_t F = d.Fs;
  const cpu::MoeState<float>& m = st.moe.s;
  float* none = nullptr;
  auto dF = sp_gather_rows(c, dres, c.s.d_full.data());
  if (!dF) return dF.error();
  std::vector<float> dact(static_cast<size_t>(d.N * F), 0.0f), dh(dact.size(), 0.0f), du(d.gpt ? 0 : dact.size(), 0.0f);
  cpu::matmul_backward(dact.data(), G + o.sproj_w, none, *dF, m.sact.data(), P + o.sproj_w, d.N, F, d.C, c.flops);
  if (d.gpt) cpu::gelu_backward(dh.data(), m.sh.data(), dact.data(), d.N * F);
  else cpu::swiglu_backward(dh.data(), du.data(), dact.data(), m.sh.data(), m.su.data(), d.N * F);
  auto ln2 = sp_gather_rows(c, st.ln2.data(), c.s.sp_gather.data());  // SP: gathered again (Korthikanti et al.)
  if (!ln2) return ln2.error();
  float* dfull = c.s.d_ln_full.data();
  std::fill(dfull, dfull + d.N * d.C, 0.0f);
  if (!d.gpt) cpu::matmul_backward(dfull, G + o.sup_w, none, du.data(), *ln2, P + o.sup_w, d.N, d.C, F, c.flops);
  cpu::matmul_backward(dfull, G + o.sfc_w, none, dh.data(), *ln2, P + o.sfc_w, d.N, d.C, F, c.flops);
  auto r = sp_reduce_rows(c, dfull);
  if (!r) return r.error();
  for (int64_t i = 0; i < d.Ns * d.C; ++i) dln2[i] += (*r)[i];
  return ok_status();
}

Status have_groups(const StageCtx& c) {
  if (c.ep == nullptr || c.etp == nullptr) return make_error("moe", "the backend was built without expert groups");
  return ok_status();
}

}  // namespace

Status moe_layer_forward(StageCtx& c, const float* P, const UnitOffsets& o, LayerStash& st, float* out) {
  if (auto s = have_groups(c); !s) return s;
  CommExchange ex(c.comm, *c.ep, *c.etp);
  if (auto s = cpu::moe_forward(out, st.ln2.data(), tensors(P, o), moe_dims(c), st.moe.s, ex, c.flops); !s) return s;
  if (c.d.Fs > 0)
    if (auto s = shared_forward(c, P, o, st, out); !s) return s;
  for (int64_t i = 0; i < c.d.Ns * c.d.C; ++i) out[i] = st.res2[i] + out[i];
  st.moe.book(c.ledger);
  return ok_status();
}

Status moe_layer_backward(StageCtx& c, const float* P, float* G, const UnitOffsets& o, LayerStash& st,
                          const float* dres, float* dln2) {
  if (auto s = have_groups(c); !s) return s;
  CommExchange ex(c.comm, *c.ep, *c.etp);
  std::fill(dln2, dln2 + c.d.Ns * c.d.C, 0.0f);
  if (auto s = cpu::moe_backward(dln2, tensors(G, o), dres, st.ln2.data(), tensors(P, o), moe_dims(c), st.moe.s, ex,
                                 c.flops);
      !s)
    return s;
  if (c.d.Fs > 0) return shared_backward(c, P, G, o, st, dres, dln2);
  return ok_status();
}

}  // namespace loom::exec
