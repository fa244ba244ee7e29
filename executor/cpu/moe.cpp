#include "executor/cpu/moe.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "executor/cpu/gelu.hpp"
#include "executor/cpu/matmul.hpp"
#include "executor/cpu/swiglu.hpp"

namespace loom::cpu {

Status validate_moe_model(const ModelSpec& m) {
  if (!m.is_moe()) return ok_status();
  auto bad = [](const char* f, const std::string& rule, int64_t got) {
    return make_error(std::string("model.") + f, rule + " (got " + std::to_string(got) + ")");
  };
  if (m.experts_per_token < 1 || m.experts_per_token > m.experts)
    return bad("experts_per_token", "must be in [1, experts]", m.experts_per_token);
  if (m.expert_ffn_hidden < 1) return bad("expert_ffn_hidden", "must be a positive integer", m.expert_ffn_hidden);
  if (m.shared_experts < 0) return bad("shared_experts", "must be >= 0", m.shared_experts);
  if (m.dense_layers < 0) return bad("dense_layers", "must be >= 0", m.dense_layers);
  if (m.moe_layer_interval < 1) return bad("moe_layer_interval", "must be >= 1", m.moe_layer_interval);
  return ok_status();
}

int64_t capacity_rows(double factor, int64_t rows, int64_t k, int64_t E) {
  return static_cast<int64_t>(std::ceil(factor * static_cast<double>(rows * k) / static_cast<double>(E)));
}

template <class Real>
int64_t MoeState<Real>::bytes() const {
  const size_t reals = logits.size() + xe.size() + h.size() + u.size() + act.size() + y.size() + sh.size() +
                       su.size() + sact.size();
  return static_cast<int64_t>(reals * sizeof(Real));
}

template <class Real>
void moe_route(int32_t* top, Real* prob, const Real* logits, int64_t n, int64_t E, int64_t k) {
  std::vector<char> taken(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    const Real* l = logits + t * E;
    std::fill(taken.begin(), taken.end(), 0);
    for (int64_t s = 0; s < k; ++s) {  // k passes: the largest left, the lower index on ties
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (!taken[static_cast<size_t>(e)] && (best < 0 || l[e] > l[best])) best = e;
      taken[static_cast<size_t>(best)] = 1;
      top[t * k + s] = static_cast<int32_t>(best);
    }
    const Real mx = l[top[t * k]];  // the first is the largest
    Real sum = 0;
    for (int64_t s = 0; s < k; ++s) sum += (prob[t * k + s] = std::exp(l[top[t * k + s]] - mx));
    for (int64_t s = 0; s < k; ++s) prob[t * k + s] /= sum;
  }
}

namespace {

std::vector<int64_t> prefix(const std::vector<int64_t>& v) {
  std::vector<int64_t> out(v.size() + 1, 0);
  for (size_t i = 0; i < v.size(); ++i) out[i + 1] = out[i] + v[i];
  return out;
}

// The router's decision (recomputed in backward from the stashed logits): experts and weights of
// each (token, slot), and the row each kept one takes in the dispatch layout (experts in order,
// each a block of `capacity` rows, or of its load without a capacity; -1: dropped).
template <class Real>
struct Routing {
  std::vector<int32_t> top;
  std::vector<Real> prob;
  std::vector<int64_t> row;    // (n k)
  std::vector<int64_t> block;  // (E + 1) first row of each expert's block
};

template <class Real>
Routing<Real> make_routing(const Real* logits, const MoeDims& d) {
  const int64_t nk = d.rows * d.k;
  Routing<Real> r;
  r.top.assign(static_cast<size_t>(nk), 0);
  r.prob.assign(static_cast<size_t>(nk), Real{0});
  moe_route(r.top.data(), r.prob.data(), logits, d.rows, d.E, d.k);
  std::vector<int64_t> load(static_cast<size_t>(d.E), 0);
  for (int32_t e : r.top) ++load[static_cast<size_t>(e)];
  std::vector<int64_t> size(static_cast<size_t>(d.E));
  for (int64_t e = 0; e < d.E; ++e) size[static_cast<size_t>(e)] = d.capacity > 0 ? d.capacity : load[static_cast<size_t>(e)];
  r.block = prefix(size);
  std::vector<int64_t> filled(static_cast<size_t>(d.E), 0);
  r.row.assign(static_cast<size_t>(nk), -1);
  for (int64_t i = 0; i < nk; ++i) {  // token order, then slot: the first rows are kept
    const size_t e = static_cast<size_t>(r.top[static_cast<size_t>(i)]);
    if (filled[e] < size[e]) r.row[static_cast<size_t>(i)] = r.block[e] + filled[e]++;
  }
  return r;
}

// The experts' rows: after the all-to-all, E cap rows by (source ep rank, local expert); after the
// etp all-gather, etp of those. Expert-major, local expert le takes the (etp rank, source) blocks
// in order. Without a capacity (one rank) the dispatch layout already is expert-major.
struct ExpertRows {
  int64_t El = 1, cap = 0, ep = 1, etp = 1;
  std::vector<int64_t> plain;  // no capacity: first row of each expert
  int64_t rows(int64_t le) const { return cap > 0 ? etp * ep * cap : plain[static_cast<size_t>(le + 1)] - plain[static_cast<size_t>(le)]; }
  int64_t first(int64_t le) const { return cap > 0 ? le * etp * ep * cap : plain[static_cast<size_t>(le)]; }
  int64_t total() const { return cap > 0 ? etp * ep * El * cap : plain.back(); }
};

template <class Real>
ExpertRows expert_rows(const MoeDims& d, const Routing<Real>& r) {
  return {d.local_experts(), d.capacity, d.ep, d.etp, r.block};
}

// Gathered layout (etp rank j, source s, local expert le) <-> expert-major, `C` values per row.
template <class Real>
void regroup(Real* dst, const Real* src, const ExpertRows& x, int64_t C, bool to_expert_major) {
  if (x.cap == 0) {
    std::memcpy(dst, src, static_cast<size_t>(x.total() * C) * sizeof(Real));
    return;
  }
  for (int64_t le = 0; le < x.El; ++le)
    for (int64_t j = 0; j < x.etp; ++j)
      for (int64_t s = 0; s < x.ep; ++s) {
        const int64_t g = ((j * x.ep + s) * x.El + le) * x.cap, e = x.first(le) + (j * x.ep + s) * x.cap;
        Real* a = dst + (to_expert_major ? e : g) * C;
        const Real* b = src + (to_expert_major ? g : e) * C;
        std::memcpy(a, b, static_cast<size_t>(x.cap * C) * sizeof(Real));
      }
}

// The dispatch's collectives in one direction: the all-to-all over ep, then (forward) the etp
// all-gather into `gathered` or (backward, `reverse`) from it the etp reduce-scatter, then the
// all-to-all back. `out` receives E cap rows per rank.
template <class Real>
Status to_experts(const Real* send, Real* gathered, const MoeDims& d, int64_t dispatch_rows, MoeExchange& ex) {
  const int64_t chunk = dispatch_rows * d.C;
  Real* mine = gathered + d.etp_index * chunk;
  if (d.ep == 1) {
    std::memcpy(mine, send, static_cast<size_t>(chunk) * sizeof(Real));
  } else if constexpr (std::is_same_v<Real, float>) {
    if (auto s = ex.all_to_all(send, mine, chunk / d.ep); !s) return s;
  } else {
    return make_error("moe", "expert parallelism runs in fp32 only");
  }
  if (d.etp == 1) return ok_status();
  if constexpr (std::is_same_v<Real, float>) return ex.etp_all_gather(gathered, chunk * d.etp);
  return make_error("moe", "expert tensor parallelism runs in fp32 only");
}

template <class Real>
Status from_experts(Real* gathered, Real* back, const MoeDims& d, int64_t dispatch_rows, MoeExchange& ex) {
  const int64_t chunk = dispatch_rows * d.C;
  if (d.etp > 1) {
    if constexpr (std::is_same_v<Real, float>) {
      if (auto s = ex.etp_reduce_scatter(gathered, chunk * d.etp); !s) return s;
    } else {
      return make_error("moe", "expert tensor parallelism runs in fp32 only");
    }
  }
  const Real* mine = gathered + d.etp_index * chunk;
  if (d.ep == 1) {
    std::memcpy(back, mine, static_cast<size_t>(chunk) * sizeof(Real));
    return ok_status();
  }
  if constexpr (std::is_same_v<Real, float>) return ex.all_to_all(mine, back, chunk / d.ep);
  return make_error("moe", "expert parallelism runs in fp32 only");
}

template <class Real>
void ffn_forward(Real* out, Real* h, Real* u, Real* act, const Real* x, const Real* fc, const Real* up,
                 const Real* proj, int64_t R, int64_t C, int64_t F, bool swiglu, FlopCounter& flops) {
  const Real* none = nullptr;
  matmul_forward(h, x, fc, none, R, C, F, flops);
  if (swiglu) {
    matmul_forward(u, x, up, none, R, C, F, flops);
    swiglu_forward(act, h, u, R * F);
  } else {
    gelu_forward(act, h, R * F);
  }
  matmul_forward(out, act, proj, none, R, F, C, flops);
}

// dx (R, C) += the FFN's input gradient; weight gradients added.
template <class Real>
void ffn_backward(Real* dx, Real* gfc, Real* gup, Real* gproj, const Real* dout, const Real* x, const Real* h,
                  const Real* u, const Real* act, const Real* fc, const Real* up, const Real* proj, int64_t R,
                  int64_t C, int64_t F, bool swiglu, FlopCounter& flops) {
  Real* none = nullptr;
  std::vector<Real> dact(static_cast<size_t>(R * F), Real{0}), dh(static_cast<size_t>(R * F), Real{0});
  matmul_backward(dact.data(), gproj, none, dout, act, proj, R, F, C, flops);
  if (swiglu) {
    std::vector<Real> du(static_cast<size_t>(R * F), Real{0});
    swiglu_backward(dh.data(), du.data(), dact.data(), h, u, R * F);
    matmul_backward(dx, gup, none, du.data(), x, up, R, C, F, flops);
  } else {
    gelu_backward(dh.data(), h, dact.data(), R * F);
  }
  matmul_backward(dx, gfc, none, dh.data(), x, fc, R, C, F, flops);
}

Status check_dims(const MoeDims& d) {
  if (d.E % d.ep != 0) return make_error("moe", "ep must divide the experts");
  if (d.capacity == 0 && d.ep * d.etp > 1) return make_error("moe", "expert parallelism needs a capacity");
  return ok_status();
}

}  // namespace

template <class Real>
Status moe_forward(Real* out, const Real* x, const MoeTensors<Real>& w, const MoeDims& d, MoeState<Real>& st,
                   MoeExchange& ex, FlopCounter& flops) {
  const int64_t n = d.rows, C = d.C, k = d.k, F = d.Fe;
  if (auto s = check_dims(d); !s) return s;
  st.logits.assign(static_cast<size_t>(n * d.E), Real{0});
  matmul_forward(st.logits.data(), x, static_cast<const Real*>(w.router), static_cast<const Real*>(nullptr), n, C, d.E,
                 flops);
  const Routing<Real> r = make_routing(st.logits.data(), d);
  const int64_t D = r.block.back();  // dispatch rows: E cap, or the routed rows without a capacity
  std::vector<Real> send(static_cast<size_t>(D * C), Real{0});
  for (int64_t i = 0; i < n * k; ++i)
    if (r.row[static_cast<size_t>(i)] >= 0)
      std::memcpy(send.data() + r.row[static_cast<size_t>(i)] * C, x + (i / k) * C, static_cast<size_t>(C) * sizeof(Real));
  const ExpertRows X = expert_rows(d, r);
  const int64_t R = X.total();
  std::vector<Real> gathered(static_cast<size_t>(R * C));
  if (auto s = to_experts(send.data(), gathered.data(), d, D, ex); !s) return s;
  st.routed_rows = R;
  st.xe.assign(static_cast<size_t>(R * C), Real{0});
  regroup(st.xe.data(), gathered.data(), X, C, true);
  st.h.assign(static_cast<size_t>(R * F), Real{0});
  st.u.assign(d.swiglu ? static_cast<size_t>(R * F) : 0, Real{0});
  st.act.assign(static_cast<size_t>(R * F), Real{0});
  std::vector<Real> z(static_cast<size_t>(R * C), Real{0});
  for (int64_t le = 0; le < X.El; ++le) {
    const int64_t r0 = X.first(le);
    ffn_forward(z.data() + r0 * C, st.h.data() + r0 * F, d.swiglu ? st.u.data() + r0 * F : nullptr,
                st.act.data() + r0 * F, st.xe.data() + r0 * C, w.fc + le * F * C, d.swiglu ? w.up + le * F * C : nullptr,
                w.proj + le * C * F, X.rows(le), C, F, d.swiglu, flops);
  }
  regroup(gathered.data(), z.data(), X, C, false);
  st.y.assign(static_cast<size_t>(D * C), Real{0});
  if (auto s = from_experts(gathered.data(), st.y.data(), d, D, ex); !s) return s;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < C; ++c) {
      Real acc = 0;
      for (int64_t s = 0; s < k; ++s) {
        const int64_t row = r.row[static_cast<size_t>(t * k + s)];
        if (row >= 0) acc += r.prob[static_cast<size_t>(t * k + s)] * st.y[static_cast<size_t>(row * C + c)];
      }
      out[t * C + c] = acc;
    }
  if (d.Fs > 0) {
    std::vector<Real> so(static_cast<size_t>(n * C));
    st.sh.assign(static_cast<size_t>(n * d.Fs), Real{0});
    st.su.assign(d.swiglu ? static_cast<size_t>(n * d.Fs) : 0, Real{0});
    st.sact.assign(static_cast<size_t>(n * d.Fs), Real{0});
    ffn_forward(so.data(), st.sh.data(), d.swiglu ? st.su.data() : nullptr, st.sact.data(), x, w.shared_fc,
                w.shared_up, w.shared_proj, n, C, d.Fs, d.swiglu, flops);
    for (int64_t i = 0; i < n * C; ++i) out[i] += so[static_cast<size_t>(i)];
  }
  return ok_status();
}

template <class Real>
Status moe_backward(Real* dx, const MoeTensors<Real>& g, const Real* dout, const Real* x, const MoeTensors<Real>& w,
                    const MoeDims& d, const MoeState<Real>& st, MoeExchange& ex, FlopCounter& flops) {
  const int64_t n = d.rows, C = d.C, k = d.k, F = d.Fe, E = d.E;
  Real* none = nullptr;
  if (auto s = check_dims(d); !s) return s;
  if (d.Fs > 0)
    ffn_backward(dx, g.shared_fc, g.shared_up, g.shared_proj, dout, x, st.sh.data(), st.su.data(), st.sact.data(),
                 w.shared_fc, w.shared_up, w.shared_proj, n, C, d.Fs, d.swiglu, flops);
  const Routing<Real> r = make_routing(st.logits.data(), d);
  const int64_t D = r.block.back();
  // The weights: d p_s = dout . y_s (0 for a dropped slot); through the softmax over the chosen
  // logits, d logit_s = p_s (d p_s - sum_j p_j d p_j); the router as a linear layer. The kept
  // rows' gradients p_s dout go to the experts the way the rows went.
  std::vector<Real> dsend(static_cast<size_t>(D * C), Real{0}), dlogits(static_cast<size_t>(n * E), Real{0});
  std::vector<Real> dp(static_cast<size_t>(k));
  for (int64_t t = 0; t < n; ++t) {
    Real dot = 0;
    for (int64_t s = 0; s < k; ++s) {
      const size_t i = static_cast<size_t>(t * k + s);
      const int64_t row = r.row[i];
      Real acc = 0;
      if (row >= 0)
        for (int64_t c = 0; c < C; ++c) {
          acc += dout[t * C + c] * st.y[static_cast<size_t>(row * C + c)];
          dsend[static_cast<size_t>(row * C + c)] = r.prob[i] * dout[t * C + c];
        }
      dp[static_cast<size_t>(s)] = acc;
      dot += r.prob[i] * acc;
    }
    for (int64_t s = 0; s < k; ++s) {
      const size_t i = static_cast<size_t>(t * k + s);
      dlogits[static_cast<size_t>(t * E + r.top[i])] = r.prob[i] * (dp[static_cast<size_t>(s)] - dot);
    }
  }
  matmul_backward(dx, g.router, none, dlogits.data(), x, static_cast<const Real*>(w.router), n, C, E, flops);
  const ExpertRows X = expert_rows(d, r);
  const int64_t R = X.total();
  std::vector<Real> gathered(static_cast<size_t>(R * C));
  // The combine's reverse: the all-to-all out and the etp all-gather (the reduce-scatter's adjoint).
  if (auto s = to_experts(dsend.data(), gathered.data(), d, D, ex); !s) return s;
  std::vector<Real> dz(static_cast<size_t>(R * C)), dxe(static_cast<size_t>(R * C), Real{0});
  regroup(dz.data(), gathered.data(), X, C, true);
  for (int64_t le = 0; le < X.El; ++le) {
    const int64_t r0 = X.first(le);
    ffn_backward(dxe.data() + r0 * C, g.fc + le * F * C, d.swiglu ? g.up + le * F * C : nullptr, g.proj + le * C * F,
                 dz.data() + r0 * C, st.xe.data() + r0 * C, st.h.data() + r0 * F,
                 d.swiglu ? st.u.data() + r0 * F : nullptr, st.act.data() + r0 * F, w.fc + le * F * C,
                 d.swiglu ? w.up + le * F * C : nullptr, w.proj + le * C * F, X.rows(le), C, F, d.swiglu, flops);
  }
  // The dispatch's reverse: the etp reduce-scatter (the all-gather's adjoint) and the all-to-all back.
  regroup(gathered.data(), dxe.data(), X, C, false);
  if (auto s = from_experts(gathered.data(), dsend.data(), d, D, ex); !s) return s;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < C; ++c) {
      Real acc = 0;
      for (int64_t s = 0; s < k; ++s) {
        const int64_t row = r.row[static_cast<size_t>(t * k + s)];
        if (row >= 0) acc += dsend[static_cast<size_t>(row * C + c)];
      }
      dx[t * C + c] += acc;
    }
  return ok_status();
}

template struct MoeState<float>;
template struct MoeState<double>;
template void moe_route<float>(int32_t*, float*, const float*, int64_t, int64_t, int64_t);
template void moe_route<double>(int32_t*, double*, const double*, int64_t, int64_t, int64_t);
template Status moe_forward<float>(float*, const float*, const MoeTensors<float>&, const MoeDims&, MoeState<float>&,
                                   MoeExchange&, FlopCounter&);
template Status moe_forward<double>(double*, const double*, const MoeTensors<double>&, const MoeDims&,
                                    MoeState<double>&, MoeExchange&, FlopCounter&);
template Status moe_backward<float>(float*, const MoeTensors<float>&, const float*, const float*,
                                    const MoeTensors<float>&, const MoeDims&, const MoeState<float>&, MoeExchange&,
                                    FlopCounter&);
template Status moe_backward<double>(double*, const MoeTensors<double>&, const double*, const double*,
                                     const MoeTensors<double>&, const MoeDims&, const MoeState<double>&, MoeExchange&,
                                     FlopCounter&);

}  // namespace loom::cpu
