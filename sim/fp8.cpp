#include "sim/fp8.hpp"

#include <algorithm>
#include <cstring>

#include "sim/model_math.hpp"
#include "sim/moe.hpp"
#include "sim/op_timer.hpp"

namespace loom {

const std::vector<std::string>& train_dtype_names() {
  static const std::vector<std::string> n{"bf16", "fp32", "fp8"};
  return n;
}

std::string train_dtype_name(const TrainSpec& t) {
  if (t.fp8) return "fp8";
  return t.dtype == Dtype::fp32 ? "fp32" : "bf16";
}

bool set_train_dtype(TrainSpec& t, const std::string& name) {
  if (name != "bf16" && name != "fp32" && name != "fp8") return false;
  t.dtype = name == "fp32" ? Dtype::fp32 : Dtype::bf16;
  t.fp8 = name == "fp8";
  return true;
}

Status check_fp8(const ClusterSpec& c, const TrainSpec& t, const std::string& field) {
  if (!t.fp8 || c.gpu.peak_flops_fp8 > 0) return ok_status();
  return make_error(field, "fp8 needs a GPU with FP8 tensor cores: the cluster's gpu.peak_flops_fp8 is not set (got " +
                               (c.gpu.name.empty() ? c.name : c.gpu.name) + ")");
}

bool is_fp8_linear(const Op& o) {
  if (o.kind != OpKind::gemm && o.kind != OpKind::gemm_bwd) return false;
  return std::strcmp(o.name, "logits") != 0 && std::strcmp(o.name, "router") != 0;
}

namespace {

// One dense layer's linear weights on one tp rank: the tp-sharded parameters (model_math's
// layer_params) less the column-parallel biases among them (gpt: qkv and fc1; Qwen2: q, k, v).
int64_t dense_layer_weights(const ModelSpec& m, int64_t tp) {
  const int64_t biases = m.family == Family::gpt ? m.hidden + 2 * m.kv_dim() + m.ffn_hidden
                                                 : (m.qkv_bias ? m.q_dim() + 2 * m.kv_dim() : 0);
  return (layer_params(m).sharded - biases) / tp;
}

// A MoE layer's linear weights on one rank, experts apart: the dense layer's less its MLP, plus
// the shared experts (the MoE layer's non-expert parameters less the router, h E).
int64_t moe_layer_weights(const ModelSpec& m, int64_t tp, const MoeStage& s) {
  return dense_layer_weights(m, tp) - s.mlp_params + (s.dense_params - s.h * s.E);
}

}  // namespace

int64_t fp8_weight_params(const ModelSpec& m, int64_t tp, int64_t layers, const MoeStage& moe) {
  int64_t w = (layers - moe.layers) * dense_layer_weights(m, tp);
  if (moe.layers > 0) w += moe.layers * moe_layer_weights(m, tp, moe) + moe.expert_params;
  return w;
}

int64_t fp8_layer_activation_delta_bytes(const ModelSpec& m, int64_t b, int64_t s, int64_t t, bool sp, Recompute r,
                                         Attention a, bool mlp) {
  if (r == Recompute::full) return 0;
  const int64_t T = b * s, rep = sp ? t : 1;
  int64_t delta = -2 * T * m.hidden / rep;  // qkv and fc1 inputs (norm outputs): 2 -> 1 byte
  delta += (a == Attention::fused ? 1 : -1) * T * m.q_dim() / t;  // the projection's input
  if (mlp) delta -= T * m.ffn_hidden / t;  // fc2's input: the GELU output or the SwiGLU product
  return delta;
}

void fp8_buffers(std::vector<Buffer>& v, int zero, int64_t weights_rank, int64_t layers, bool fp8_params) {
  const bool sharded = zero >= 3 && layers > 0;
  const int64_t held = sharded ? (weights_rank + layers - 1) / layers : weights_rank;
  const int64_t bytes = (fp8_params ? 1 : 2) * held;  // FP8 copy + FP8 transpose, or the transpose
  if (bytes > 0)
    v.push_back({"fp8 weight copies", MemCategory::weights, sharded ? Lifetime::transient : Lifetime::step, bytes});
}

// Per FP8 GEMM call (M, N, K): the forward casts its input (M, K) and the backward its output
// gradient (M, N), each read in bf16 (2) and written in FP8 with its FP8 transpose (1 + 1).
// Per step, over G FP8 GEMM calls of a micro-batch: the weights cast with their transposes
// (2 + 1 + 1 bytes per weight; one call per weight, scale 1 / m: once per step) and the
// delayed-scaling update, which reads and writes each of the G calls' three amax histories
// (input, weight, output gradient: kFp8AmaxHistory fp32 values each).
void fp8_ops(std::vector<Op>& ops, int zero, int64_t micro_batches, int64_t weights_rank, Fp8Recipe recipe,
             bool fp8_params) {
  const size_t n = ops.size();
  const bool current = recipe == Fp8Recipe::tensorwise;
  int64_t calls = 0;
  for (size_t i = 0; i < n; ++i) {
    Op& o = ops[i];
    if (!is_fp8_linear(o)) continue;
    o.fp8 = true;
    const bool bwd = o.kind == OpKind::gemm_bwd;
    if (!bwd && o.pass == Pass::forward) calls += o.count;
    const double elems = o.m * (bwd ? o.n : o.k) * o.batch;  // grouped GEMMs: every product
    if (current)
      ops.push_back(memory_op(bwd ? "fp8 gradient amax" : "fp8 input amax", MemKind::cast, o.pass, 2 * elems, o.count));
    ops.push_back(
        memory_op(bwd ? "fp8 gradient cast" : "fp8 input cast", MemKind::cast, o.pass, fp8_cast_bytes(elems), o.count));
  }
  if (calls == 0) return;
  const double per_step = zero >= 3 ? 1 : 1 / static_cast<double>(micro_batches);
  const double weight_bytes = static_cast<double>(weights_rank) / static_cast<double>(calls);
  if (current && !fp8_params)
    ops.push_back(memory_op("fp8 weight amax", MemKind::cast, Pass::forward, 2 * weight_bytes, calls, per_step));
  ops.push_back(
      memory_op("fp8 weight cast", MemKind::cast, Pass::forward, (fp8_params ? 2 : 4) * weight_bytes, calls, per_step));
  if (current) return;  // the scale comes from the tensor itself: no history
  const double history_bytes = 2.0 * 4 * kFp8AmaxHistory;  // read and write, fp32
  ops.push_back(memory_op("fp8 amax and scale update", MemKind::elementwise, Pass::forward,
                          3 * static_cast<double>(calls) * history_bytes, 1, 1 / static_cast<double>(micro_batches)));
}

Fp8TpGathers fp8_sp_gathers(int64_t layers, int64_t mlp_free, int64_t recomputed, int64_t recomputed_mlp_free) {
  const int64_t fwd = 2 * layers - mlp_free;
  // The recompute runs the forward's gathers again for the layers it recomputes (every layer, or
  // a block recompute's first layers of each chunk): 2 each, less those of its MoE layers
  // without an MLP over tp.
  return {fwd, 2 * fwd, 2 * recomputed - recomputed_mlp_free};
}

// Micikevicius et al. 2022, Sec. 4: FP8 GEMMs read FP8 operands and write a higher-precision
// output (bf16 here), so the roofline's bytes are M K + K N (1 byte) and 2 M N.
double fp8_gemm_s(const OpTimer& t, double M, double N, double K, double out_bytes) {
  const double flops = 2 * M * N * K, bytes = M * K + K * N + 2 * M * N;
  if (t.prof && t.prof->has_fp8_gemms()) return t.prof->fp8_gemm_s(M, N, K, out_bytes);
  if (t.gemm_model_fp8) return t.model_s(*t.gemm_model_fp8, M, N, K, out_bytes, 1, t.gemm_model_fp8->hw.peak_flops);
  if (t.gemm_model) return t.model_s(M, N, K, out_bytes, 1, t.peak_flops_fp8);
  // Without an FP8 model: the bf16 time of the shape at the FP8 peak, its efficiency times the
  // cluster's stated FP8-over-bf16 ratio (fp8_efficiency_ratio).
  if (t.prof) {  // the profile's time holds one launch
    const double bf16_s = std::max(0.0, t.prof->gemm_s(M, N, K, out_bytes) - t.gemm_launch_s(M, N, K, out_bytes));
    return std::max(bf16_s * t.peak_flops / (t.peak_flops_fp8 * t.fp8_efficiency_ratio), t.prof->memory_s(bytes)) +
           t.launch_s;
  }
  const double eff = t.gemm_eff * t.fp8_efficiency_ratio * flops / (flops + t.gemm_half);
  return std::max(flops / (t.peak_flops_fp8 * eff), bytes / (t.hbm * t.mem_eff)) + t.launch_s;
}

// The input gradient (M, K, N) and the weight gradient (N, K, M), both FP8 GEMMs (E5M2
// gradients times E4M3 weights or inputs, the hybrid format).
double fp8_gemm_bwd_s(const OpTimer& t, double M, double N, double K) {
  return fp8_gemm_s(t, M, K, N) + fp8_gemm_wgrad_s(t, M, N, K);
}

double fp8_gemm_wgrad_s(const OpTimer& t, double M, double N, double K) { return fp8_gemm_s(t, N, K, M, t.wgrad_out); }

}  // namespace loom
