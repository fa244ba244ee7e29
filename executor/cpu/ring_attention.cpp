#include "executor/cpu/ring_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "executor/cpu/rope.hpp"

namespace loom::cpu {
namespace {

constexpr int64_t kParallelMinWork = 1 << 15;

float dot(const float* a, const float* b, int64_t d) {
  float acc = 0;
  for (int64_t i = 0; i < d; i++) acc += a[i] * b[i];
  return acc;
}

// The rank whose block this rank holds at ring step `step`: blocks move to rank + 1 each step.
int64_t owner_at(const CpSplit& me, int64_t step) { return (me.rank - step + me.cp) % me.cp; }

// One row's scaled scores against the block's keys it may see (global key position <= its own),
// into sc; returns the number kept (the first kept positions in idx) and their maximum in mx.
int64_t row_scores(float* sc, int64_t* idx, float& mx, const float* q_t, const float* k, int64_t pq,
                   const CpSplit& kv, int64_t b, int64_t hk, const RingShape& s, float scale) {
  const int64_t Tl = s.split.local();
  int64_t n = 0;
  mx = -INFINITY;
  for (int64_t t2 = 0; t2 < Tl; t2++) {
    if (kv.position(t2) > pq) continue;
    const float v = dot(q_t, k + ((b * Tl + t2) * s.n_kv_heads + hk) * s.d, s.d) * scale;
    sc[n] = v;
    idx[n++] = t2;
    mx = std::max(mx, v);
  }
  return n;
}

// One block of keys and values into every q row's running maximum, sum and unnormalised output
// (FlashAttention-2, Algorithm 1, lines 8-10): when the maximum grows, what was summed so far is
// rescaled by exp(old max - new max).
void forward_block(float* out, float* mx, float* sum, const float* q, const float* k, const float* v,
                   const RingShape& s, const CpSplit& kv) {
  const int64_t Tl = s.split.local(), H = s.n_heads, d = s.d, group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool parallel = s.B * H * Tl * Tl * d >= kParallelMinWork;
  (void)parallel;
  // Each (b, h) writes only its own rows: parallel and deterministic.
#if defined(_OPENMP)
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
#endif
  for (int64_t b = 0; b < s.B; b++) {
    for (int64_t h = 0; h < H; h++) {
      std::vector<float> sc(static_cast<size_t>(Tl));
      std::vector<int64_t> idx(static_cast<size_t>(Tl));
      const int64_t hk = h / group;
      for (int64_t t = 0; t < Tl; t++) {
        const float* q_t = q + ((b * Tl + t) * H + h) * d;
        float bm = 0;
        const int64_t n = row_scores(sc.data(), idx.data(), bm, q_t, k, s.split.position(t), kv, b, hk, s, scale);
        if (n == 0) continue;  // every key of this block is in the row's future
        float* m_row = mx + (b * H + h) * Tl + t;
        float* l_row = sum + (b * H + h) * Tl + t;
        float* out_t = out + ((b * Tl + t) * H + h) * d;
        const float m_new = std::max(*m_row, bm);
        const float corr = std::exp(*m_row - m_new);  // 0 on the row's first block (max -inf)
        float l = *l_row * corr;
        for (int64_t i = 0; i < d; i++) out_t[i] *= corr;
        for (int64_t j = 0; j < n; j++) {
          const float p = std::exp(sc[j] - m_new);
          l += p;
          const float* v_t2 = v + ((b * Tl + idx[j]) * s.n_kv_heads + hk) * d;
          for (int64_t i = 0; i < d; i++) out_t[i] += p * v_t2[i];
        }
        *m_row = m_new;
        *l_row = l;
      }
    }
  }
}

// One block's share of the gradients (FlashAttention-2, Algorithm 2): the probabilities rebuilt
// as exp(score - lse), then dv += p dout, ds = p (dout . v - D), dq += ds k, dk += ds q, with
// D = dout . out per row (`drow`) and the scale folded into ds.
void backward_block(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* drow,
                    const float* q, const float* k, const float* v, const RingShape& s, const CpSplit& kv) {
  const int64_t Tl = s.split.local(), H = s.n_heads, d = s.d, group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool parallel = s.B * H * Tl * Tl * d >= kParallelMinWork;
  (void)parallel;
  // Parallel over (b, kv head): the q heads of one group add into the same dk, dv rows, so they
  // run in order inside one iteration, which keeps the summation order fixed.
#if defined(_OPENMP)
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
#endif
  for (int64_t b = 0; b < s.B; b++) {
    for (int64_t hk = 0; hk < s.n_kv_heads; hk++) {
      std::vector<float> sc(static_cast<size_t>(Tl));
      std::vector<int64_t> idx(static_cast<size_t>(Tl));
      for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
        for (int64_t t = 0; t < Tl; t++) {
          const float* q_t = q + ((b * Tl + t) * H + h) * d;
          float bm = 0;
          const int64_t n = row_scores(sc.data(), idx.data(), bm, q_t, k, s.split.position(t), kv, b, hk, s, scale);
          const int64_t row = (b * H + h) * Tl + t;
          const float* dout_t = dout + ((b * Tl + t) * H + h) * d;
          float* dq_t = dq + ((b * Tl + t) * H + h) * d;
          for (int64_t j = 0; j < n; j++) {
            const int64_t off = ((b * Tl + idx[j]) * s.n_kv_heads + hk) * d;
            const float p = std::exp(sc[j] - lse[row]);
            const float ds = p * (dot(dout_t, v + off, d) - drow[row]) * scale;
            for (int64_t i = 0; i < d; i++) {
              dv[off + i] += p * dout_t[i];
              dq_t[i] += ds * k[off + i];
              dk[off + i] += ds * q_t[i];
            }
          }
        }
      }
    }
  }
}

void copy(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); }

void start_forward(float* out, float* lse, float* rows, const RingShape& s) {
  std::fill(out, out + s.B * s.split.local() * s.n_heads * s.d, 0.0f);
  std::fill(lse, lse + s.row_elems(), -INFINITY);  // the running maximum until the end
  std::fill(rows, rows + s.row_elems(), 0.0f);
}

// out = acc / sum; lse = max + log(sum). Every row saw at least its own key, so sum >= 1.
void finish_forward(float* out, float* lse, const float* rows, const RingShape& s, FlopCounter& flops) {
  const int64_t Tl = s.split.local(), d = s.d;
  for (int64_t b = 0; b < s.B; b++)
    for (int64_t h = 0; h < s.n_heads; h++)
      for (int64_t t = 0; t < Tl; t++) {
        const int64_t row = (b * s.n_heads + h) * Tl + t;
        float* out_t = out + ((b * Tl + t) * s.n_heads + h) * d;
        const float inv = 1.0f / rows[row];
        for (int64_t i = 0; i < d; i++) out_t[i] *= inv;
        lse[row] += std::log(rows[row]);
      }
  flops.attention_flops += 2 * (2 * s.B * s.n_heads * Tl * s.split.T * d);  // q k^T and p v
}

// D = dout . out per row (FlashAttention-2, Algorithm 2, line 4).
void backward_rows(float* rows, const float* dout, const float* out, const RingShape& s) {
  const int64_t Tl = s.split.local(), d = s.d, H = s.n_heads;
  for (int64_t b = 0; b < s.B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < Tl; t++) {
        const int64_t off = ((b * Tl + t) * H + h) * d;
        rows[(b * H + h) * Tl + t] = dot(dout + off, out + off, d);
      }
}

// This rank's dk, dv += its own block's gradient from every rank (`home`: dk then dv).
void finish_backward(float* dk, float* dv, const float* home, const RingShape& s, FlopCounter& flops) {
  const int64_t nkv = s.kv_elems();
  for (int64_t i = 0; i < nkv; i++) {
    dk[i] += home[i];
    dv[i] += home[nkv + i];
  }
  flops.attention_flops += 4 * (2 * s.B * s.n_heads * s.split.local() * s.split.T * s.d);  // as attention_backward counts
}

// This rank's [k | v] into its block of `kv` and every block gathered.
Status gather_kv(float* kv, const float* k, const float* v, const RingShape& s, const RingCollective& gather) {
  const int64_t nkv = s.kv_elems();
  copy(kv + s.split.rank * 2 * nkv, k, nkv);
  copy(kv + s.split.rank * 2 * nkv + nkv, v, nkv);
  return gather(kv, s.split.cp * 2 * nkv);
}

}  // namespace

Status ring_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                              const RingShape& s, const RingBuffers& buf, const RingShift& shift,
                              FlopCounter& flops) {
  const int64_t nkv = s.kv_elems();
  float* cur = buf.a;
  float* next = buf.b;
  copy(cur, k, nkv);
  copy(cur + nkv, v, nkv);
  start_forward(out, lse, buf.rows, s);
  for (int64_t step = 0; step < s.split.cp; step++) {
    forward_block(out, lse, buf.rows, q, cur, cur + nkv, s, s.split.of_rank(owner_at(s.split, step)));
    if (step + 1 == s.split.cp) break;
    if (auto st = shift(cur, next, 2 * nkv); !st) return st;
    std::swap(cur, next);
  }
  finish_forward(out, lse, buf.rows, s, flops);
  return ok_status();
}

Status gathered_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                  const RingShape& s, float* kv, float* rows, const RingCollective& gather,
                                  FlopCounter& flops) {
  const int64_t nkv = s.kv_elems();
  if (auto st = gather_kv(kv, k, v, s, gather); !st) return st;
  start_forward(out, lse, rows, s);
  for (int64_t step = 0; step < s.split.cp; step++) {  // the ring's order: the same sums
    const int64_t o = owner_at(s.split, step);
    forward_block(out, lse, rows, q, kv + o * 2 * nkv, kv + o * 2 * nkv + nkv, s, s.split.of_rank(o));
  }
  finish_forward(out, lse, rows, s, flops);
  return ok_status();
}

Status ring_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                               const float* lse, const float* q, const float* k, const float* v,
                               const RingShape& s, const RingBuffers& buf, const RingShift& shift,
                               FlopCounter& flops) {
  const int64_t nkv = s.kv_elems();
  backward_rows(buf.rows, dout, out, s);
  float* cur = buf.a;  // k | v | dk | dv of the block held
  float* next = buf.b;
  copy(cur, k, nkv);
  copy(cur + nkv, v, nkv);
  std::fill(cur + 2 * nkv, cur + 4 * nkv, 0.0f);
  for (int64_t step = 0; step < s.split.cp; step++) {
    backward_block(dq, cur + 2 * nkv, cur + 3 * nkv, dout, lse, buf.rows, q, cur, cur + nkv, s,
                   s.split.of_rank(owner_at(s.split, step)));
    if (step + 1 == s.split.cp) break;
    if (auto st = shift(cur, next, 4 * nkv); !st) return st;
    std::swap(cur, next);
  }
  // The block held now belongs to the next rank (owner rank - (cp - 1) = rank + 1): one more hop
  // of its dk, dv brings every block's gradient home.
  const float* home = cur + 2 * nkv;
  if (s.split.cp > 1) {
    if (auto st = shift(cur + 2 * nkv, next + 2 * nkv, 2 * nkv); !st) return st;
    home = next + 2 * nkv;
  }
  finish_backward(dk, dv, home, s, flops);
  return ok_status();
}

Status gathered_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                   const float* lse, const float* q, const float* k, const float* v,
                                   const RingShape& s, float* kv, float* dkv, float* rows, const RingCollective& gather,
                                   const RingCollective& reduce_scatter, FlopCounter& flops) {
  const int64_t nkv = s.kv_elems(), cp = s.split.cp;
  if (auto st = gather_kv(kv, k, v, s, gather); !st) return st;
  backward_rows(rows, dout, out, s);
  std::fill(dkv, dkv + cp * 2 * nkv, 0.0f);
  for (int64_t step = 0; step < cp; step++) {
    const int64_t o = owner_at(s.split, step);
    backward_block(dq, dkv + o * 2 * nkv, dkv + o * 2 * nkv + nkv, dout, lse, rows, q, kv + o * 2 * nkv,
                   kv + o * 2 * nkv + nkv, s, s.split.of_rank(o));
  }
  if (auto st = reduce_scatter(dkv, cp * 2 * nkv); !st) return st;  // block `rank`: every rank's share of it
  finish_backward(dk, dv, dkv + s.split.rank * 2 * nkv, s, flops);
  return ok_status();
}

void cp_rope_forward(float* out, const float* inp, int64_t B, const CpSplit& split, int64_t n_heads, int64_t d,
                     double theta) {
  const int64_t c = split.chunk(), Tl = split.local(), row = n_heads * d;
  for (int64_t b = 0; b < B; b++)
    for (int64_t half = 0; half < 2; half++) {
      const int64_t off = (b * Tl + half * c) * row;
      rope_forward(out + off, inp + off, 1, c, n_heads, d, theta, split.position(half * c));
    }
}

void cp_rope_backward(float* dinp, const float* dout, int64_t B, const CpSplit& split, int64_t n_heads, int64_t d,
                      double theta) {
  const int64_t c = split.chunk(), Tl = split.local(), row = n_heads * d;
  for (int64_t b = 0; b < B; b++)
    for (int64_t half = 0; half < 2; half++) {
      const int64_t off = (b * Tl + half * c) * row;
      rope_backward(dinp + off, dout + off, 1, c, n_heads, d, theta, split.position(half * c));
    }
}

}  // namespace loom::cpu
