#include "executor/cuda/attention.cuh"

namespace loom::cuda {
namespace {

// Every kernel and helper is a template over the head size HS (64 or 128): the score tiles stay
// 64 x 64 (BM queries x BM keys); what grows with HS is the contraction of Q K^T (HS / 16 k-chunks)
// and the width of the P V, dQ, dK, dV accumulators (HS / 8 n-tiles of 8 columns).
constexpr int BM = 64;         // rows (queries or keys) per thread block: 4 warps x 16
// Shared-memory row stride in bf16: HS + 8 (144 bytes at HS 64, 272 at 128) keeps the 8 rows an
// ldmatrix reads in distinct banks.
template <int HS>
constexpr int lds() { return HS + 8; }
// Each kernel holds five 64 x HS tiles (double-buffered operands): 46 KB at HS 64, 87 KB at 128,
// past the 48 KB of static shared memory, so the tiles are dynamic shared memory.
template <int HS>
constexpr int tile_elems() { return BM * lds<HS>(); }
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

__device__ inline uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ inline void ldmatrix_x4(uint32_t r[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ inline void ldmatrix_x4_trans(uint32_t r[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col)
__device__ inline void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Fragment layouts (PTX ISA, mma.m16n8k16): with g = lane / 4 and t = lane % 4, accumulator
// element j of an 16x8 tile sits at row g + 8 * (j / 2), column 2t + j % 2.

// A fragments of a warp's 16 rows x W columns of a shared tile (row stride LDS), W / 16 k-chunks.
template <int W, int LDS>
__device__ inline void load_a(uint32_t a[W / 16][4], const bf16* tile, int lane) {
  const int mi = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kc = 0; kc < W / 16; kc++) ldmatrix_x4(a[kc], tile + ((mi & 1) * 8 + r) * LDS + kc * 16 + (mi >> 1) * 8);
}

// acc (16 x 64) += A (16 x HS) @ T^T, T a shared 64 x HS tile indexed [n][k].
template <int HS>
__device__ inline void mma_abt(float acc[8][4], const uint32_t a[HS / 16][4], const bf16* T, int lane) {
  constexpr int LDS = lds<HS>();
  const int mi = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kc = 0; kc < HS / 16; kc++) {
#pragma unroll
    for (int np = 0; np < 4; np++) {
      uint32_t b[4];
      ldmatrix_x4(b, T + (np * 16 + (mi >> 1) * 8 + r) * LDS + kc * 16 + (mi & 1) * 8);
      mma(acc[2 * np], a[kc], b[0], b[1]);
      mma(acc[2 * np + 1], a[kc], b[2], b[3]);
    }
  }
}

// acc (16 x HS) += A (16 x 64) @ T, T a shared 64 x HS tile indexed [k][n].
template <int HS>
__device__ inline void mma_ab(float acc[HS / 8][4], const uint32_t a[4][4], const bf16* T, int lane) {
  constexpr int LDS = lds<HS>();
  const int mi = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kc = 0; kc < 4; kc++) {
#pragma unroll
    for (int np = 0; np < HS / 16; np++) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, T + (kc * 16 + (mi & 1) * 8 + r) * LDS + np * 16 + (mi >> 1) * 8);
      mma(acc[2 * np], a[kc], b[0], b[1]);
      mma(acc[2 * np + 1], a[kc], b[2], b[3]);
    }
  }
}

// An accumulator (16 x 64 fp32) as A fragments (16 x 64 bf16): the layouts line up pairwise.
__device__ inline void acc_to_a(uint32_t a[4][4], const float c[8][4]) {
#pragma unroll
  for (int kc = 0; kc < 4; kc++) {
    a[kc][0] = pack_bf16(c[2 * kc][0], c[2 * kc][1]);
    a[kc][1] = pack_bf16(c[2 * kc][2], c[2 * kc][3]);
    a[kc][2] = pack_bf16(c[2 * kc + 1][0], c[2 * kc + 1][1]);
    a[kc][3] = pack_bf16(c[2 * kc + 1][2], c[2 * kc + 1][3]);
  }
}

template <int NT>
__device__ inline void zero(float c[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; i++) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0;
}

// 64 rows x HS bf16 from global (row stride `stride` elements) into a shared tile, 16 bytes per
// access, HS / 16 per thread.
template <int HS>
__device__ inline void load_tile(bf16* s, const bf16* g, int64_t stride) {
  constexpr int LDS = lds<HS>(), V = HS / 8;
#pragma unroll
  for (int i = 0; i < HS / 16; i++) {
    const int idx = threadIdx.x + i * kThreads;
    const int row = idx / V, v = idx % V;
    *reinterpret_cast<int4*>(s + row * LDS + v * 8) =
        *reinterpret_cast<const int4*>(g + row * stride + v * 8);
  }
}

// The same through the asynchronous copy unit (cp.async, sm_80+): the copy of the next tile
// runs while the tensor cores work on the current one (two shared buffers per operand).
__device__ inline void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
template <int HS>
__device__ inline void load_tile_async(bf16* s, const bf16* g, int64_t stride) {
  constexpr int LDS = lds<HS>(), V = HS / 8;
#pragma unroll
  for (int i = 0; i < HS / 16; i++) {
    const int idx = threadIdx.x + i * kThreads;
    const int row = idx / V, v = idx % V;
    cp_async16(s + row * LDS + v * 8, g + row * stride + v * 8);
  }
}

// A warp's 16 x HS accumulator (times `scale`) to global rows (stride elements), staged through
// the warp's own 16 rows of a shared tile so that global writes are 16 bytes wide.
template <int HS>
__device__ inline void store_rows(bf16* g, int64_t stride, bf16* stage, const float c[HS / 8][4],
                                  float scale, int lane) {
  constexpr int LDS = lds<HS>(), V = HS / 8;
  const int gq = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < HS / 8; nt++) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      *reinterpret_cast<__nv_bfloat162*>(stage + (gq + 8 * h) * LDS + nt * 8 + 2 * t) =
          __floats2bfloat162_rn(c[nt][2 * h] * scale, c[nt][2 * h + 1] * scale);
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < HS / 16; i++) {
    const int idx = lane + 32 * i;
    const int row = idx / V, v = idx % V;
    *reinterpret_cast<int4*>(g + row * stride + v * 8) =
        *reinterpret_cast<const int4*>(stage + row * LDS + v * 8);
  }
}

}  // namespace

// grid (T/64, NH, B); block 128 = 4 warps, warp w owns queries [qb*64 + 16w, +16) of q head h,
// which reads kv head h / (NH / NKV).
// kGrouped false: NKV == NH, known at compile time, so the multi-head (GPT) instance compiles to
// the same code (and registers: 128, 4 blocks per SM) as before grouped-query support; the
// general address arithmetic costs 6 more registers, which would drop it to 3 blocks per SM.
template <int HS, bool kGrouped>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(bf16* out, float* lse,
                                                                     const bf16* qkv, int T, int NH,
                                                                     int nkv) {
  constexpr int LDS = lds<HS>(), TE = tile_elems<HS>();
  const int NKV = kGrouped ? nkv : NH;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* const sK = sQ + TE;      // two tiles, double-buffered: tile kb + 1 loads during kb
  bf16* const sV = sQ + 3 * TE;  // two tiles
  const int qb = gridDim.x - 1 - blockIdx.x;  // longest rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = kGrouped ? h / (NH / NKV) : h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gq = lane >> 2, t = lane & 3;
  const int C = NH * HS;
  const int64_t stride = kGrouped ? static_cast<int64_t>(NH + 2 * NKV) * HS : 3 * static_cast<int64_t>(C);
  const bf16* base = qkv + static_cast<int64_t>(b) * T * stride + h * HS;  // q head h
  const bf16* kbase = kGrouped ? qkv + static_cast<int64_t>(b) * T * stride + C + hk * HS  // k head hk
                               : base + C;
  const bf16* vbase = kGrouped ? kbase + NKV * HS : base + 2 * C;  // v head hk
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(HS));

  load_tile_async<HS>(sQ, base + static_cast<int64_t>(qb) * BM * stride, stride);
  load_tile_async<HS>(sK, kbase, stride);
  load_tile_async<HS>(sV, vbase, stride);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qa[HS / 16][4];
  load_a<HS, LDS>(qa, sQ + warp * 16 * LDS, lane);

  float o[HS / 8][4];
  zero<HS / 8>(o);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0, 0};
  const int q_row0 = qb * BM + warp * 16 + gq;  // this thread's rows: q_row0 and q_row0 + 8
  for (int kb = 0; kb <= qb; kb++) {
    const int buf = kb & 1;
    if (kb < qb) {  // prefetch tile kb + 1 into the buffer every warp finished with last iteration
      load_tile_async<HS>(sK + (buf ^ 1) * TE, kbase + static_cast<int64_t>(kb + 1) * BM * stride, stride);
      load_tile_async<HS>(sV + (buf ^ 1) * TE, vbase + static_cast<int64_t>(kb + 1) * BM * stride, stride);
      cp_async_commit();
      cp_async_wait<1>();  // tile kb has landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float s[8][4];
    zero<8>(s);
    mma_abt<HS>(s, qa, sK + buf * TE, lane);
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const int key = kb * BM + nt * 8 + 2 * t + j;
          float v = s[nt][2 * r + j] * scale_log2;
          if (kb == qb && key > q_row0 + 8 * r) v = -INFINITY;
          s[nt][2 * r + j] = v;
          mx = fmaxf(mx, v);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[r], mx);  // finite: key kb*64 <= every query of block qb
      const float corr = exp2f(m_run[r] - m_new);
      m_run[r] = m_new;
      float sum = 0;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const float p = exp2f(s[nt][2 * r + j] - m_new);
          s[nt][2 * r + j] = p;
          sum += p;
        }
#pragma unroll
        for (int ot = nt; ot < HS / 8; ot += 8) {  // the output tiles nt, nt + 8 (HS 128)
          o[ot][2 * r] *= corr;
          o[ot][2 * r + 1] *= corr;
        }
      }
      l_run[r] = l_run[r] * corr + sum;  // this thread's columns only; summed over the quad below
    }
    uint32_t pa[4][4];
    acc_to_a(pa, s);
    mma_ab<HS>(o, pa, sV + buf * TE, lane);
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[r] = 1.0f / l;
    if (t == 0) lse[(static_cast<int64_t>(b) * NH + h) * T + q_row0 + 8 * r] = m_run[r] + log2f(l);
  }
#pragma unroll
  for (int nt = 0; nt < HS / 8; nt++) {
    o[nt][0] *= inv[0];
    o[nt][1] *= inv[0];
    o[nt][2] *= inv[1];
    o[nt][3] *= inv[1];
  }
  bf16* out_rows = out + (static_cast<int64_t>(b) * T + qb * BM + warp * 16) * C + h * HS;
  store_rows<HS>(out_rows, C, sQ + warp * 16 * LDS, o, 1.0f, lane);
}

// delta (B, NH, T) = rowsum(dout * out) per head: the softmax-backward term D of FlashAttention-2.
template <int HS>
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int B,
                                       int T, int NH) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, t, h)
  if (idx >= static_cast<int64_t>(B) * T * NH) return;
  const int h = idx % NH;
  const int64_t bt = idx / NH;
  const int tt = bt % T, b = bt / T;
  const bf16* d = dout + idx * HS;
  const bf16* o = out + idx * HS;
  float s = 0;
#pragma unroll
  for (int v = 0; v < HS / 8; v++) {
    const int4 rd = *reinterpret_cast<const int4*>(d + v * 8);
    const int4 ro = *reinterpret_cast<const int4*>(o + v * 8);
    const bf16* pd = reinterpret_cast<const bf16*>(&rd);
    const bf16* po = reinterpret_cast<const bf16*>(&ro);
#pragma unroll
    for (int i = 0; i < 8; i++) s += __bfloat162float(pd[i]) * __bfloat162float(po[i]);
  }
  delta[(static_cast<int64_t>(b) * NH + h) * T + tt] = s;
}

// dK, dV. grid (T/64, NKV, B); warp w owns keys [kb*64 + 16w, +16) of kv head hk and walks, for
// each q head h of its group [hk*G, (hk+1)*G), G = NH / NKV, the query blocks kb..end: the
// (h, query block) pairs in that order, one pipeline, the dK/dV accumulators in registers across
// the whole group (no atomics, no race: every kv head's rows belong to one thread block). With
// G == 1 this is the multi-head kernel: the same loop, the same order (kGrouped false: G == 1 at
// compile time, as attention_forward_kernel).
// It works on transposed tiles: S^T = K Q^T, P^T, dP^T = V dO^T, dS^T = P^T (dP^T - D);
// dV += P^T dO and dK += dS^T Q (FlashAttention-2, Dao 2023, algorithm 2).
template <int HS, bool kGrouped>
__global__ void __launch_bounds__(kThreads) attention_backward_kv_kernel(
    bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int T,
    int NH, int nkv) {
  constexpr int LDS = lds<HS>(), TE = tile_elems<HS>();
  const int NKV = kGrouped ? nkv : NH;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const sQ = reinterpret_cast<bf16*>(smem_raw);  // two tiles, double-buffered over (head, query block)
  bf16* const sdO = sQ + 2 * TE;                        // two tiles
  bf16* const sKV = sQ + 4 * TE;  // K, then V, then the output staging
  __shared__ __align__(16) float sL[2][BM];
  __shared__ __align__(16) float sD[2][BM];
  const int kb = blockIdx.x;  // the first key blocks have the most query blocks: issue them first
  const int hk = blockIdx.y, b = blockIdx.z;
  const int group = kGrouped ? NH / NKV : 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gq = lane >> 2, t = lane & 3;
  const int C = NH * HS;
  const int64_t stride = kGrouped ? static_cast<int64_t>(NH + 2 * NKV) * HS : 3 * static_cast<int64_t>(C);
  const bf16* rows = qkv + static_cast<int64_t>(b) * T * stride;  // this sequence's tokens
  const bf16* kbase = rows + C + hk * HS;
  const bf16* vbase = kbase + NKV * HS;
  const bf16* dbase = dout + static_cast<int64_t>(b) * T * C;
  const float* lse_b = lse + static_cast<int64_t>(b) * NH * T;
  const float* delta_b = delta + static_cast<int64_t>(b) * NH * T;
  const float scale = 1.0f / sqrtf(static_cast<float>(HS));
  const float scale_log2 = kLog2e * scale;

  uint32_t ka[HS / 16][4], va[HS / 16][4];
  load_tile<HS>(sKV, kbase + static_cast<int64_t>(kb) * BM * stride, stride);
  __syncthreads();
  load_a<HS, LDS>(ka, sKV + warp * 16 * LDS, lane);
  __syncthreads();
  load_tile<HS>(sKV, vbase + static_cast<int64_t>(kb) * BM * stride, stride);
  __syncthreads();
  load_a<HS, LDS>(va, sKV + warp * 16 * LDS, lane);

  float dk[HS / 8][4], dv[HS / 8][4];
  zero<HS / 8>(dk);
  zero<HS / 8>(dv);
  const int key0 = kb * BM + warp * 16 + gq;  // this thread's keys: key0 and key0 + 8
  const int nqb = T / BM;
  // q head h's query block qb: Q, dO, log-sum-exp and delta into buffer `buf`, asynchronously
  auto prefetch = [&](int h, int qb, int buf) {
    const int64_t lrow = static_cast<int64_t>(h) * T + qb * BM;  // (h, first query) in lse, delta
    load_tile_async<HS>(sQ + buf * TE, rows + h * HS + static_cast<int64_t>(qb) * BM * stride, stride);
    load_tile_async<HS>(sdO + buf * TE, dbase + h * HS + static_cast<int64_t>(qb) * BM * C, C);
    if (threadIdx.x < 16) cp_async16(&sL[buf][threadIdx.x * 4], lse_b + lrow + threadIdx.x * 4);
    else if (threadIdx.x < 32) cp_async16(&sD[buf][(threadIdx.x - 16) * 4], delta_b + lrow + (threadIdx.x - 16) * 4);
    cp_async_commit();
  };
  __syncthreads();  // every warp has read V from sKV (it becomes the output staging at the end)
  const int steps = group * (nqb - kb);
  int h = hk * group, qb = kb;  // the current (q head, query block)
  prefetch(h, qb, 0);
  for (int step = 0; step < steps; step++) {
    const int buf = step & 1;
    int h_next = h, qb_next = qb + 1;  // the pair after this one: the next block, else next head
    if (kGrouped && qb_next == nqb) {
      qb_next = kb;
      h_next++;
    }
    if (step + 1 < steps) {
      prefetch(h_next, qb_next, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* sLb = sL[buf];
    const float* sDb = sD[buf];
    float st[8][4], dpt[8][4];
    zero<8>(st);
    zero<8>(dpt);
    mma_abt<HS>(st, ka, sQ + buf * TE, lane);
    mma_abt<HS>(dpt, va, sdO + buf * TE, lane);
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int col = nt * 8 + 2 * t + (j & 1);  // query within the block
        const int key = key0 + 8 * (j >> 1);
        const float p = (qb * BM + col < key) ? 0.0f : exp2f(st[nt][j] * scale_log2 - sLb[col]);
        st[nt][j] = p;
        dpt[nt][j] = p * (dpt[nt][j] - sDb[col]);
      }
    }
    uint32_t pa[4][4], dsa[4][4];
    acc_to_a(pa, st);
    acc_to_a(dsa, dpt);
    mma_ab<HS>(dv, pa, sdO + buf * TE, lane);
    mma_ab<HS>(dk, dsa, sQ + buf * TE, lane);
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
    h = h_next;
    qb = qb_next;
  }
  bf16* drow = dqkv + (static_cast<int64_t>(b) * T + kb * BM + warp * 16) * stride + C + hk * HS;
  store_rows<HS>(drow, stride, sKV + warp * 16 * LDS, dk, scale, lane);
  __syncwarp();
  store_rows<HS>(drow + NKV * HS, stride, sKV + warp * 16 * LDS, dv, 1.0f, lane);
}

// dQ. grid (T/64, NH, B); warp w owns queries [qb*64 + 16w, +16) of q head h and walks the key
// blocks 0..qb of kv head h / (NH / NKV): S = Q K^T, P, dP = dO V^T, dS = P (dP - D), dQ += dS K.
template <int HS, bool kGrouped>
__global__ void __launch_bounds__(kThreads) attention_backward_q_kernel(
    bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int T,
    int NH, int nkv) {
  constexpr int LDS = lds<HS>(), TE = tile_elems<HS>();
  const int NKV = kGrouped ? nkv : NH;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const sK = reinterpret_cast<bf16*>(smem_raw);  // two tiles, double-buffered over key blocks
  bf16* const sV = sK + 2 * TE;                         // two tiles
  bf16* const sA = sK + 4 * TE;  // Q, then dO, then the output staging
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = kGrouped ? h / (NH / NKV) : h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gq = lane >> 2, t = lane & 3;
  const int C = NH * HS;
  const int64_t stride = kGrouped ? static_cast<int64_t>(NH + 2 * NKV) * HS : 3 * static_cast<int64_t>(C);
  const bf16* base = qkv + static_cast<int64_t>(b) * T * stride + h * HS;  // q head h
  const bf16* kbase = kGrouped ? qkv + static_cast<int64_t>(b) * T * stride + C + hk * HS  // k head hk
                               : base + C;
  const bf16* vbase = kGrouped ? kbase + NKV * HS : base + 2 * C;  // v head hk
  const bf16* dbase = dout + static_cast<int64_t>(b) * T * C + h * HS;
  const float scale = 1.0f / sqrtf(static_cast<float>(HS));
  const float scale_log2 = kLog2e * scale;

  uint32_t qa[HS / 16][4], doa[HS / 16][4];
  load_tile<HS>(sA, base + static_cast<int64_t>(qb) * BM * stride, stride);
  __syncthreads();
  load_a<HS, LDS>(qa, sA + warp * 16 * LDS, lane);
  __syncthreads();
  load_tile<HS>(sA, dbase + static_cast<int64_t>(qb) * BM * C, C);
  __syncthreads();
  load_a<HS, LDS>(doa, sA + warp * 16 * LDS, lane);

  const int q0 = qb * BM + warp * 16 + gq;  // this thread's queries: q0 and q0 + 8
  float lrow[2], drow[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    lrow[r] = lse[(static_cast<int64_t>(b) * NH + h) * T + q0 + 8 * r];
    drow[r] = delta[(static_cast<int64_t>(b) * NH + h) * T + q0 + 8 * r];
  }
  float dq[HS / 8][4];
  zero<HS / 8>(dq);
  load_tile_async<HS>(sK, kbase, stride);
  load_tile_async<HS>(sV, vbase, stride);
  cp_async_commit();
  for (int kb = 0; kb <= qb; kb++) {
    const int buf = kb & 1;
    if (kb < qb) {
      load_tile_async<HS>(sK + (buf ^ 1) * TE, kbase + static_cast<int64_t>(kb + 1) * BM * stride, stride);
      load_tile_async<HS>(sV + (buf ^ 1) * TE, vbase + static_cast<int64_t>(kb + 1) * BM * stride, stride);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float s[8][4], dp[8][4];
    zero<8>(s);
    zero<8>(dp);
    mma_abt<HS>(s, qa, sK + buf * TE, lane);
    mma_abt<HS>(dp, doa, sV + buf * TE, lane);
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int r = j >> 1;
        const int key = kb * BM + nt * 8 + 2 * t + (j & 1);
        const float p = key > q0 + 8 * r ? 0.0f : exp2f(s[nt][j] * scale_log2 - lrow[r]);
        dp[nt][j] = p * (dp[nt][j] - drow[r]);
      }
    }
    uint32_t dsa[4][4];
    acc_to_a(dsa, dp);
    mma_ab<HS>(dq, dsa, sK + buf * TE, lane);
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
  }
  bf16* dst = dqkv + (static_cast<int64_t>(b) * T + qb * BM + warp * 16) * stride + h * HS;
  store_rows<HS>(dst, stride, sA + warp * 16 * LDS, dq, scale, lane);
}

namespace {
Status check_shapes(const char* op, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
  const Dims dims{{"B", B}, {"T", T}, {"NH", NH}, {"NKV", NKV}, {"head_size", HS}};
  if (HS != 64 && HS != 128) return shape_error(op, dims, "head size must be 64 or 128");
  if (B < 1 || NH < 1 || T < BM || T % BM != 0) {
    return shape_error(op, dims, "needs B, NH >= 1 and T a positive multiple of 64");
  }
  if (NKV < 1 || NH % NKV != 0) return shape_error(op, dims, "needs NKV >= 1 dividing NH (grouped-query attention)");
  if (B > 65535 || NH > 65535) return shape_error(op, dims, "B and NH must be <= 65535 (grid)");
  return ok_status();
}

// Five 64 x HS tiles of dynamic shared memory; past 48 KB a kernel must opt in.
template <int HS>
constexpr int smem_bytes() { return 5 * tile_elems<HS>() * static_cast<int>(sizeof(bf16)); }
template <int HS, class K>
Status allow_smem(K kernel, const char* op) {
  return cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes<HS>()), op,
                     {{"head_size", HS}, {"shared_bytes", smem_bytes<HS>()}});
}

template <int HS>
Status forward_hs(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                  cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(T / BM), static_cast<unsigned>(NH), static_cast<unsigned>(B));
  const bool grouped = NKV != NH;
  auto kernel = grouped ? attention_forward_kernel<HS, true> : attention_forward_kernel<HS, false>;
  LOOM_TRY(allow_smem<HS>(kernel, "attention_forward"));
  kernel<<<grid, kThreads, smem_bytes<HS>(), stream>>>(out, lse, qkv, static_cast<int>(T), static_cast<int>(NH),
                                                       static_cast<int>(NKV));
  return check_launch("attention_forward", {{"B", B}, {"T", T}, {"NH", NH}, {"NKV", NKV}, {"head_size", HS}});
}

template <int HS>
Status backward_hs(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                   int64_t B, int64_t T, int64_t NH, int64_t NKV, cudaStream_t stream) {
  const Dims dims{{"B", B}, {"T", T}, {"NH", NH}, {"NKV", NKV}, {"head_size", HS}};
  const int64_t rows = B * T * NH;
  attention_delta_kernel<HS><<<static_cast<unsigned>(ceil_div(rows, 256)), 256, 0, stream>>>(
      delta, dout, out, static_cast<int>(B), static_cast<int>(T), static_cast<int>(NH));
  LOOM_TRY(check_launch("attention_backward_delta", dims));
  // dK, dV: one thread block per (key block, kv head, sequence); dQ: per (query block, q head, b)
  const dim3 grid_kv(static_cast<unsigned>(T / BM), static_cast<unsigned>(NKV), static_cast<unsigned>(B));
  const bool grouped = NKV != NH;
  auto kv_kernel = grouped ? attention_backward_kv_kernel<HS, true> : attention_backward_kv_kernel<HS, false>;
  LOOM_TRY(allow_smem<HS>(kv_kernel, "attention_backward_kv"));
  kv_kernel<<<grid_kv, kThreads, smem_bytes<HS>(), stream>>>(dqkv, dout, qkv, lse, delta, static_cast<int>(T),
                                                             static_cast<int>(NH), static_cast<int>(NKV));
  LOOM_TRY(check_launch("attention_backward_kv", dims));
  const dim3 grid_q(static_cast<unsigned>(T / BM), static_cast<unsigned>(NH), static_cast<unsigned>(B));
  auto q_kernel = grouped ? attention_backward_q_kernel<HS, true> : attention_backward_q_kernel<HS, false>;
  LOOM_TRY(allow_smem<HS>(q_kernel, "attention_backward_q"));
  q_kernel<<<grid_q, kThreads, smem_bytes<HS>(), stream>>>(dqkv, dout, qkv, lse, delta, static_cast<int>(T),
                                                           static_cast<int>(NH), static_cast<int>(NKV));
  return check_launch("attention_backward_q", dims);
}
}  // namespace

Status attention_forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, cudaStream_t stream) {
  LOOM_TRY(check_shapes("attention_forward", B, T, NH, NKV, HS));
  return HS == 128 ? forward_hs<128>(out, lse, qkv, B, T, NH, NKV, stream)
                   : forward_hs<64>(out, lse, qkv, B, T, NH, NKV, stream);
}

Status attention_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv,
                          const bf16* out, const float* lse, int64_t B, int64_t T, int64_t NH,
                          int64_t NKV, int64_t HS, cudaStream_t stream) {
  LOOM_TRY(check_shapes("attention_backward", B, T, NH, NKV, HS));
  return HS == 128 ? backward_hs<128>(dqkv, delta, dout, qkv, out, lse, B, T, NH, NKV, stream)
                   : backward_hs<64>(dqkv, delta, dout, qkv, out, lse, B, T, NH, NKV, stream);
}

}  // namespace loom::cuda
