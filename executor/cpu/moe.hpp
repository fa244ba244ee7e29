// A mixture-of-experts FFN block (Shazeer et al. 2017; Mixtral, Jiang et al. 2024, arXiv
// 2401.04088) on the token rows one rank holds, in the fp32 reference (and in double for the
// gradient checks), with the token exchange behind an interface so that the same code runs on
// one rank (LocalExchange) and under expert parallelism (the executor's all-to-all over MPI):
//
//   router   logits = x @ router^T                                  (n, E), no bias
//   top-k    the k largest logits of each row, in decreasing order; ties go to the lower expert
//            index, so every run and every plan picks the same experts
//   weights  p = softmax over the k chosen logits (Mixtral's convention: softmax over all E,
//            keep the top k, renormalise; which is the same numbers)
//   dispatch (Megatron-core's all-to-all dispatcher) experts are split over ep ranks in contiguous
//            blocks of E/ep; each rank fills `capacity` rows per expert (its (token, slot) rows
//            in token order, then zero rows), an all-to-all of equal blocks over ep sends each
//            rank the rows of its experts, an all-gather over etp gives every etp rank of the
//            group the same rows (R = etp x E x capacity)
//   experts  SwiGLU (llama family: down(silu(gate x) * up x)) or a GELU MLP (gpt family:
//            proj(gelu(fc x))), no biases, on the etp shard of the width (column-parallel
//            gate/up/fc, row-parallel down/proj: partial sums); a zero row gives a zero output
//   combine  a reduce-scatter over etp sums the partial outputs, the reverse all-to-all brings
//            them back, out = sum over the row's kept slots (in slot order) of p * y
//   shared   shared experts, concatenated into one FFN of shared_experts * expert_ffn_hidden
//            (DeepSeek-V2's DeepseekV2MLP of moe_intermediate_size * n_shared_experts), run on
//            every row and added
// Capacity: rows past an expert's capacity are dropped (their slot adds nothing; GShard, Switch).
// With the capacity factor E / k no row can be: one rank's run and every parallel plan then
// compute the same function, and the GEMMs and all-to-alls have the cost model's shapes.
#pragma once
#include <cstdint>
#include <vector>

#include "executor/cpu/flop_counter.hpp"
#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom::cpu {

// Whether layer `l` (from 0) is a MoE layer: DeepSeek-V2's rule (modeling_deepseek.py:
// layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0), the rule
// sim/moe.hpp's is_moe_layer states (this library does not link sim; a test pins the two equal).
inline bool moe_layer(const ModelSpec& m, int64_t l) {
  return m.is_moe() && l >= m.dense_layers && m.moe_layer_interval > 0 && l % m.moe_layer_interval == 0;
}

// The MoE fields the reference model needs, as one line naming the field and the rule.
Status validate_moe_model(const ModelSpec& m);

struct MoeDims {
  int64_t rows = 0;        // n: token rows this rank routes
  int64_t C = 0;           // hidden
  int64_t E = 0;           // experts in the layer
  int64_t k = 0;           // experts per token
  int64_t Fe = 0;          // expert FFN width held here: expert_ffn_hidden / etp
  int64_t Fs = 0;          // shared experts' total width (0: none), not split
  bool swiglu = true;      // llama family; false: GELU MLP (gpt family)
  int64_t ep = 1, etp = 1; // expert parallelism and expert tensor parallelism
  int64_t ep_index = 0, etp_index = 0;
  // Rows each expert takes from this rank (capacity_rows()); 0: no limit, every expert exactly
  // its load (one rank only: the receivers could not know the block sizes).
  int64_t capacity = 0;
  int64_t local_experts() const { return E / ep; }
};

// Capacity per expert per source rank, Switch Transformer (Fedus et al. 2021, eq. 3) with top-k:
// ceil(factor x rows x k / E), as GShard pads each group's dispatch (Lepikhin et al. 2020, 2.2).
// factor = E / k gives rows: no token can be dropped.
int64_t capacity_rows(double factor, int64_t rows, int64_t k, int64_t E);

// This rank's weights (and, same shapes, gradient accumulators). Expert tensors are the rank's
// E/ep experts, each its etp shard: fc and up (E/ep, Fe, C), proj (E/ep, C, Fe).
template <class Real>
struct MoeTensors {
  Real* router = nullptr;  // (E, C)
  Real* fc = nullptr;      // gate (llama) or fc (gpt)
  Real* up = nullptr;      // llama only
  Real* proj = nullptr;    // down (llama) or proj (gpt)
  Real* shared_fc = nullptr, *shared_up = nullptr, *shared_proj = nullptr;  // (Fs, C), (Fs, C), (C, Fs)
};

// The collectives the block runs (comm.hpp's Comm on the ep and etp groups of
// sim/rank_grid.hpp's ExpertGrid): an all-to-all of equal blocks over ep, and over etp a ring
// all-gather and reduce-scatter in place (chunk i is etp rank i's). Floats only: the double
// instantiation (gradient checks) runs on one rank.
class MoeExchange {
 public:
  virtual ~MoeExchange() = default;
  virtual Status all_to_all(const float* send, float* recv, int64_t block_floats) = 0;
  virtual Status etp_all_gather(float* data, int64_t n) = 0;
  virtual Status etp_reduce_scatter(float* data, int64_t n) = 0;
};

// One rank holding every expert: nothing to exchange (ep = etp = 1).
class LocalExchange final : public MoeExchange {
 public:
  Status all_to_all(const float*, float*, int64_t) override { return refuse(); }
  Status etp_all_gather(float*, int64_t) override { return refuse(); }
  Status etp_reduce_scatter(float*, int64_t) override { return refuse(); }

 private:
  static Status refuse() { return make_error("moe", "a one-rank exchange has no peers (ep = etp = 1 only)"); }
};

// What forward keeps for backward (the choice of experts and their weights are recomputed from
// the logits): sizes as sim/moe.hpp's moe_layer_activation_bytes counts them.
template <class Real>
struct MoeState {
  std::vector<Real> logits;         // (n, E) router output
  std::vector<Real> xe;             // (R, C) the experts' input rows, expert-major
  std::vector<Real> h, u, act;      // (R, Fe) fc/gate output, up output (llama), activation
  std::vector<Real> y;              // (E cap, C) expert outputs back at this rank, dispatch layout
  std::vector<Real> sh, su, sact;   // (n, Fs) shared experts
  int64_t routed_rows = 0;          // R: rows through this rank's experts (padding included)
  int64_t bytes() const;            // what it holds, for the memory ledger
};

// out (n, C) = moe(x); the state for backward is written to `st`.
template <class Real>
Status moe_forward(Real* out, const Real* x, const MoeTensors<Real>& w, const MoeDims& d, MoeState<Real>& st,
                   MoeExchange& ex, FlopCounter& flops);

// dx (n, C) += d out/d x^T dout; every gradient in `g` (same shapes as the weights) is added to.
template <class Real>
Status moe_backward(Real* dx, const MoeTensors<Real>& g, const Real* dout, const Real* x, const MoeTensors<Real>& w,
                    const MoeDims& d, const MoeState<Real>& st, MoeExchange& ex, FlopCounter& flops);

// The router's choice alone: top (n, k) and prob (n, k) from logits (n, E).
template <class Real>
void moe_route(int32_t* top, Real* prob, const Real* logits, int64_t n, int64_t E, int64_t k);

}  // namespace loom::cpu
