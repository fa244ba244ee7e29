// Causal self-attention of one context-parallel rank as a ring (Liu et al. 2023, "Ring Attention
// with Blockwise Transformers", arXiv 2310.01889), as Megatron-core runs context parallelism
// through TransformerEngine (transformer_engine/pytorch/attention.py, AttnFuncWithCPAndKVP2P):
// each rank holds its tokens' q, k and v; the k and v blocks travel around the cp ranks, one hop
// per step, and every rank attends its q to each block in turn with an online softmax (Milakov &
// Gimelshein 2018; FlashAttention-2, Dao 2023, Algorithm 1): a running row maximum and sum, the
// output rescaled when the maximum grows, and the log-sum-exp kept for backward instead of the
// probabilities. Backward (FlashAttention-2, Algorithm 2) rebuilds each block's probabilities from
// the log-sum-exp; the k and v blocks travel the same way with their gradient accumulators, and one
// last hop brings each block's dk and dv home to the rank that owns it.
//
// Layout (Megatron's load balancing, TransformerEngine's get_batch_on_this_cp_rank): a sequence of
// T tokens is cut into 2 cp chunks of T / (2 cp); rank r holds chunk r and chunk 2 cp - 1 - r, so
// each rank has one early and one late chunk and the same share of causal work. Positions (the
// causal mask, RoPE) are global: cp_rope_forward rotates each local token by its place in the
// whole sequence.
//
// GQA as attention.hpp: q head h reads kv head h / (n_heads / n_kv_heads). The block exchange is
// a callback (RingShift) so that MPI (the trainer) or threads in one process (the unit test) can
// carry it. fp32 only: the ring carries floats.
#pragma once
#include <cstdint>
#include <functional>

#include "executor/cpu/flop_counter.hpp"
#include "sim/expected.hpp"

namespace loom::cpu {

// Where a cp rank's tokens sit in the sequence.
struct CpSplit {
  int64_t T = 0;     // tokens per whole sequence (2 cp divides it)
  int64_t cp = 1;    // ranks in the ring
  int64_t rank = 0;  // this rank's place in the ring
  int64_t local() const { return T / cp; }        // tokens per sequence on this rank
  int64_t chunk() const { return T / (2 * cp); }  // tokens per chunk
  // Global position of local token t (0 <= t < local()): chunk `rank`, then chunk 2 cp - 1 - rank.
  int64_t position(int64_t t) const {
    const int64_t c = chunk();
    return t < c ? rank * c + t : (2 * cp - 1 - rank) * c + (t - c);
  }
  CpSplit of_rank(int64_t r) const { return {T, cp, r}; }
};

// Sends n floats from `send` to the next rank of the ring (rank + 1 mod cp) and receives n floats
// from the previous one into `recv` (distinct buffers); every rank of the ring calls it together.
using RingShift = std::function<Status(const float* send, float* recv, int64_t n)>;

struct RingShape {
  int64_t B = 0, n_heads = 0, n_kv_heads = 0, d = 0;
  CpSplit split;
  int64_t kv_elems() const { return B * split.local() * n_kv_heads * d; }  // one of k, v
  int64_t row_elems() const { return B * n_heads * split.local(); }
};

// Memory the caller owns (so that it books it): `a` and `b` hold a travelling block each,
// 4 kv_elems() floats (k, v, dk, dv; forward uses the first two); `rows` row_elems() floats.
struct RingBuffers {
  float* a = nullptr;
  float* b = nullptr;
  float* rows = nullptr;
};

// out (B, Tl, n_heads, d) = causal attention of this rank's q over all ranks' k, v;
// lse (B, n_heads, Tl): each row's log-sum-exp of the scaled scores, for backward.
// q (B, Tl, n_heads, d), k, v (B, Tl, n_kv_heads, d), Tl = split.local(), all after RoPE.
// Sends cp - 1 blocks of 2 kv_elems() floats. Adds 4 B n_heads Tl T d to flops.attention_flops
// (dense blocks, attention.hpp's convention: the cp ranks together count one rank's 4 B h T^2 d).
Status ring_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                              const RingShape& s, const RingBuffers& buf, const RingShift& shift,
                              FlopCounter& flops);

// dq (B, Tl, n_heads, d) +=, dk, dv (B, Tl, n_kv_heads, d) += (this rank's own tokens); dout the
// output's gradient; out and lse from ring_attention_forward. Sends cp - 1 blocks of 4 kv_elems()
// floats and one of 2 kv_elems() (the last hop home). Adds 8 B n_heads Tl T d to
// flops.attention_flops, as attention_backward counts its four products.
Status ring_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                               const float* lse, const float* q, const float* k, const float* v,
                               const RingShape& s, const RingBuffers& buf, const RingShift& shift,
                               FlopCounter& flops);

// The same attention with K and V gathered whole first (TransformerEngine's
// AttnFuncWithCPAndKVAllGather, Megatron's --cp-comm-type all_gather): `gather` all-gathers the
// n floats of each rank's [k | v] in place over the ring (n / cp per rank, rank order), and the
// blocks are attended in the ring's order from the gathered buffer, so out and lse are the
// ring's bit for bit. `kv` holds cp blocks of 2 kv_elems() floats.
using RingCollective = std::function<Status(float* data, int64_t n)>;
Status gathered_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                  const RingShape& s, float* kv, float* rows, const RingCollective& gather,
                                  FlopCounter& flops);
// Backward: K and V gathered again into `kv`, every block's dk, dv of this rank's queries into
// `dkv` (cp blocks of 2 kv_elems()), then `reduce_scatter` (in place: block `rank` ends up holding
// the sum over the ring) and this rank's block added into dk, dv.
Status gathered_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                   const float* lse, const float* q, const float* k, const float* v,
                                   const RingShape& s, float* kv, float* dkv, float* rows, const RingCollective& gather,
                                   const RingCollective& reduce_scatter, FlopCounter& flops);

// RoPE (rope.hpp) on this rank's tokens by their global positions: inp, out (B, Tl, n_heads, d),
// each of the two chunks rotated from its first position. out and inp may alias.
void cp_rope_forward(float* out, const float* inp, int64_t B, const CpSplit& split, int64_t n_heads,
                     int64_t d, double theta);
// dinp += the transpose of cp_rope_forward applied to dout.
void cp_rope_backward(float* dinp, const float* dout, int64_t B, const CpSplit& split, int64_t n_heads,
                      int64_t d, double theta);

}  // namespace loom::cpu
