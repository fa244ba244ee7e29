// Time of one op of a stage's work (sim/stage_work.hpp) on one GPU.
// With a calibration profile (cluster "profile", sim/profile.hpp; bf16 plans only) every term
// comes from what `loom calibrate` measured: GEMMs from its shape table (exact shape, else the
// nearest measured shape's FLOP/s), attention from its forward and backward times,
// memory-bound kernels from the bandwidth-against-size curve of their kind (or of the plain
// elementwise sum), the optimizer from its AdamW + gradient-norm time per parameter. Without
// one, the cluster's EfficiencySpec defaults, with GEMMs from the tile and wave model its
// "gemm_model" carries from a profile when it names one, and memory-bound kernels from the
// curves its "memory_curves" carries (memory_call).
#pragma once
#include <algorithm>

#include "sim/fp8.hpp"
#include "sim/gemm_model.hpp"
#include "sim/profile.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"

namespace loom {

struct OpTimer {
  double peak_flops = 0, gemm_eff = 0, gemm_half = 0, attn_eff = 0, hbm = 0, mem_eff = 0, launch_s = 0;
  double e = 2;  // bytes per element
  const HardwareProfile* prof = nullptr;
  // Where memory-bound kernels' bandwidth curves come from: the profile, else the curves the
  // cluster carries (efficiency.memory_curves); none: hbm x mem_eff plus a launch.
  const HardwareProfile* mem_prof = nullptr;
  double peak_flops_fp8 = 0;  // FP8 GEMMs (Op::fp8, sim/fp8.hpp)
  // FP8 GEMMs priced from bf16 ones (no FP8 measured): their efficiency over the bf16 one
  // (EfficiencySpec::fp8_gemm_efficiency_ratio; 1 where the cluster states none).
  double fp8_efficiency_ratio = 1;
  const GemmModel* gemm_model = nullptr;  // bf16 GEMMs without a profile (sim/gemm_model.hpp)
  // FP8 GEMMs without a profile: measured, or carried from the bf16 model by the cluster's FP8
  // ratio (ClusterSpec::gemm_model_fp8; sim/fp8.hpp)
  const GemmModel* gemm_model_fp8 = nullptr;
  GemmMemo* gemm_memo = nullptr;          // a search thread's memo of gemm_model's times, or none
  // Fused attention without a profile: the kernel's published speed by sequence length and head
  // size (efficiency.attention_curve), bf16 plans; none: peak x attn_eff.
  const AttentionCurve* attn_curve = nullptr;
  // Bytes per output element of a weight-gradient GEMM: accumulated into the gradient buffer in
  // the GEMM (read and written: 8 in fp32, 4 in bf16), or written in bf16 for a separate add.
  double wgrad_out = 8;

  static OpTimer of(const ClusterSpec& c, const TrainSpec& t) {
    const bool bf16 = t.dtype == Dtype::bf16;
    const HardwareProfile* prof = bf16 ? c.calibration.get() : nullptr;
    OpTimer o{bf16 ? c.gpu.peak_flops_bf16 : c.gpu.peak_flops_fp32,
                   c.efficiency.gemm,
                   c.efficiency.gemm_half_size_flops,
                   c.efficiency.attention,
                   c.gpu.hbm_bytes_per_s,
                   c.efficiency.memory_bound,
                   prof ? prof->kernel_launch_s : c.efficiency.kernel_launch_s,
                   static_cast<double>(dtype_bytes(t.dtype)),
                   prof};
    o.peak_flops_fp8 = c.gpu.peak_flops_fp8;
    if (c.efficiency.fp8_gemm_efficiency_ratio > 0) o.fp8_efficiency_ratio = c.efficiency.fp8_gemm_efficiency_ratio;
    o.mem_prof = prof ? prof : bf16 ? c.memory_curves.get() : nullptr;
    if (bf16 && !prof) o.gemm_model = c.gemm_model.get(), o.gemm_model_fp8 = c.gemm_model_fp8.get();
    if (bf16 && !prof && c.efficiency.attention_curve) o.attn_curve = c.efficiency.attention_curve.get();
    o.wgrad_out = t.grad_accumulation == GradAccumulation::separate ? 2 : t.grad_dtype == Dtype::fp32 ? 8 : 4;
    return o;
  }

  // Matrix work: the profile's measured shape or its fitted model, the cluster's GEMM model,
  // or else peak x an efficiency that grows with size: eff(F) = gemm * F / (F + F_half) (a
  // saturating curve; F_half from the cluster file), never faster than streaming its operands
  // from HBM (roofline), plus one launch. `out_bytes`: per output element (wgrad_out for a
  // weight gradient).
  double gemm(double M, double N, double K, double out_bytes = 2) const {
    if (prof) return prof->gemm_s(M, N, K, out_bytes);
    if (gemm_model) return model_s(M, N, K, out_bytes, 2, gemm_model->hw.peak_flops);
    const double flops = 2 * M * N * K;
    const double eff = gemm_eff * flops / (flops + gemm_half);
    const double bytes = e * (M * K + K * N + M * N);
    return std::max(flops / (peak_flops * eff), bytes / (hbm * mem_eff)) + launch_s;
  }
  // The cluster's GEMM model for one call (through the memo when there is one).
  double model_s(double M, double N, double K, double out_bytes, double in_bytes, double peak) const {
    return model_s(*gemm_model, M, N, K, out_bytes, in_bytes, peak);
  }
  double model_s(const GemmModel& g, double M, double N, double K, double out_bytes, double in_bytes,
                 double peak) const {
    return gemm_memo ? gemm_memo->seconds(g, M, N, K, out_bytes, in_bytes, peak)
                     : g.seconds_at(M, N, K, out_bytes, in_bytes, peak);
  }
  // The launch inside gemm(M, N, K, out_bytes)'s time: the model's where a model priced it,
  // else the measured or documented one (launch_s).
  double gemm_launch_s(double M, double N, double K, double out_bytes = 2) const {
    if (prof) return prof->measured(M, N, K, out_bytes) || !prof->gemm_model.valid() ? launch_s : prof->gemm_model.c.launch_s;
    return gemm_model ? gemm_model->c.launch_s : launch_s;
  }
  // The launch inside an FP8 GEMM's time (sim/fp8.hpp): the FP8 model's where one priced it.
  double fp8_launch_s() const {
    if (prof && prof->has_fp8_gemms()) return prof->gemm_model_fp8.valid() ? prof->gemm_model_fp8.c.launch_s : launch_s;
    if (gemm_model_fp8) return gemm_model_fp8->c.launch_s;
    return gemm_model ? gemm_model->c.launch_s : launch_s;
  }
  // Backward of out (M, N) = in (M, K) W: the input gradient (M, K, N) and the weight
  // gradient (N, K, M); without a profile or model, twice the forward.
  double gemm_bwd(double M, double N, double K) const {
    if (prof || gemm_model) return gemm(M, K, N) + gemm(N, K, M, wgrad_out);
    return 2 * gemm(M, N, K);
  }
  double gemm_bwd_launch_s(double M, double N, double K) const {
    if (prof || gemm_model) return gemm_launch_s(M, K, N) + gemm_launch_s(N, K, M, wgrad_out);
    return 2 * launch_s;
  }
  // The weight-gradient half of gemm_bwd alone: (N, K, M), of the same FLOPs as the forward.
  double gemm_wgrad(double M, double N, double K) const {
    if (prof || gemm_model) return gemm(N, K, M, wgrad_out);
    return gemm(M, N, K);
  }
  // The weight-gradient half of a gemm_bwd op's call, FP8 or not (of all its `batch` products).
  double wgrad(const Op& o) const {
    if (o.fp8) return grouped(o, fp8_gemm_wgrad_s(*this, o.m, o.n, o.k), [&] { return fp8_launch_s(); });
    return grouped(o, gemm_wgrad(o.m, o.n, o.k), [&] {
      return prof || gemm_model ? gemm_launch_s(o.n, o.k, o.m, wgrad_out) : launch_s;
    });
  }
  // A gemm or gemm_bwd op of `batch` > 1 is a grouped GEMM (MoE experts, Megatron's
  // --moe-grouped-gemm): `batch` products of their own (m, n, k) in one launch per GEMM, so
  // each product's time less the launches inside one_s (`launches_s()`, asked only then: a
  // profile's answer is a search of its rows), `batch` times, plus the launches.
  template <class Launches>
  double grouped(const Op& o, double one_s, Launches launches_s) const {
    if (o.batch <= 1) return one_s;
    const double l = launches_s();
    return std::max(0.0, one_s - l) * o.batch + l;
  }
  // Memory-bound kernels: bytes moved at HBM bandwidth x efficiency, plus one launch.
  double memory(double bytes) const {
    if (prof) return prof->memory_s(bytes);
    return bytes / (hbm * mem_eff) + launch_s;
  }
  // A memory op's call, its scale included: at its kind's measured bandwidth where mem_prof
  // has that kind's curve (sim/profile.hpp), looked up at the bytes the call moves (in backward
  // the scale is the call's own traffic, elsewhere a share of calls: sim/stage_work.hpp's
  // memory_op). Otherwise a residual add (or other sum of two tensors) at the measured a + b's
  // bandwidth, which is that very kernel; any other kind at the profile's a + b curve too, but
  // with curves a cluster carries (no profile) at the documented hbm x mem_eff: a norm, a
  // rotary embedding or a cast reaches less of HBM than a plain sum, and where its own curve is
  // missing the documented figure is the nearer one.
  double memory_call(const Op& o) const {
    if (mem_prof) {
      const bool bwd = o.pass == Pass::backward;
      const double call_bytes = bwd ? o.bytes * o.scale : o.bytes;
      if (const double bw = mem_prof->kind_bandwidth(o.mem, bwd, call_bytes); bw > 0) return o.scale * o.bytes / bw;
      if (o.mem == MemKind::residual) return o.scale * mem_prof->memory_s(o.bytes);
    }
    return o.scale * memory(o.bytes);
  }
  // Causal fused attention of bh (batch x heads) sequences of s tokens, head size d: causal
  // FlashAttention runs half of the non-causal 4 bh s^2 d; FlashAttention-2's backward runs
  // 2.5x the forward's matmul FLOPs (Dao 2023, Sec. 3). With a curve, each pass at its speed
  // for (d, s); else both at peak x attn_eff.
  double attention_fwd(double bh, double s, double d) const {
    if (prof) return prof->attention_fwd_s(bh, s, d);
    const double rate = attn_curve ? attn_curve->forward_flops_per_s(d, s) : peak_flops * attn_eff;
    return 0.5 * (4 * bh * s * s * d) / rate + launch_s;
  }
  // With a curve the backward is three launches, FlashAttention-2's (flash_bwd_launch_template.h:
  // the dO.O row sums, the dQ/dK/dV kernel, dQ's conversion from fp32).
  double attention_bwd(double bh, double s, double d) const {
    if (prof) return prof->attention_bwd_s(bh, s, d);
    if (!attn_curve) return 2.5 * attention_fwd(bh, s, d);
    return 2.5 * 0.5 * (4 * bh * s * s * d) / attn_curve->backward_flops_per_s(d, s) + 3 * launch_s;
  }
  // AdamW over `params` parameters moving `bytes` (memory-bound); the profile's measured AdamW
  // and gradient-norm time per parameter when there is one.
  double optimizer(double params, double bytes) const {
    if (prof) return prof->optimizer_s(params);
    return memory(bytes);
  }
  // One call of an op (times its scale; count is the caller's).
  double op(const Op& o) const {
    double t = 0;
    switch (o.kind) {
      case OpKind::gemm:
        t = o.fp8 ? grouped(o, fp8_gemm_s(*this, o.m, o.n, o.k), [&] { return fp8_launch_s(); })
                  : grouped(o, gemm(o.m, o.n, o.k), [&] { return gemm_launch_s(o.m, o.n, o.k); });
        break;
      case OpKind::gemm_bwd:
        t = o.fp8 ? grouped(o, fp8_gemm_bwd_s(*this, o.m, o.n, o.k), [&] { return 2 * fp8_launch_s(); })
                  : grouped(o, gemm_bwd(o.m, o.n, o.k), [&] { return gemm_bwd_launch_s(o.m, o.n, o.k); });
        break;
      case OpKind::batched_gemm: {  // `batch` products in one launch (unfused attention's scores)
        const double launch = gemm_launch_s(o.m, o.n, o.k);
        t = std::max(0.0, gemm(o.m, o.n, o.k) - launch) * o.batch + launch;
        break;
      }
      case OpKind::attention_fwd: t = attention_fwd(o.m, o.n, o.k); break;
      case OpKind::attention_bwd: t = attention_bwd(o.m, o.n, o.k); break;
      case OpKind::memory:
        return memory_call(o);
    }
    return o.scale * t;
  }
};

}  // namespace loom
