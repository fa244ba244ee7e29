// A hardware profile: what `loom calibrate` measured on one GPU with microbenchmarks only
// (never fitted to an end-to-end step time), and the lookups the cost model's OpTimer makes in
// it. A cluster file names its profile ("profile": "traces/profiles/h100-sxm.json"); without one
// the cost model keeps the cluster's documented EfficiencySpec and RuntimeMemorySpec defaults.
//
// Schema (JSON, read strictly: unknown keys are errors; times in seconds, sizes in bytes):
//   {
//     "schema": "loom-profile-1",
//     "name": "h100-sxm", "device": "NVIDIA H100 80GB HBM3", "source": "how, when, driver, ...",
//     "kernel_launch_s": 2.5e-6,               // back-to-back empty kernel launches, per launch
//     "gemm": [ {"m": 8192, "n": 2304, "k": 768, "seconds": 1.2e-4}, ... ],
//         // plain bf16 GEMM through cuBLASLt (the executor's Gemm class), D (m x n, bf16) =
//         // A (m x k) B (k x n), fp32 accumulate, no epilogue; median GPU time over repeats,
//         // launched back to back (CUDA events), so a launch gap is inside each time;
//         // "accumulate_fp32": true marks a weight gradient, D fp32 += A B (read and written)
//     "gemm_model": {"mainloop_efficiency": .., "tile_overhead_s": ..,
//                    "memory_efficiency": .., "launch_s": .., "peak_flops": .., "sm_count": ..,
//                    "hbm_bytes_per_s": .., "samples": .., "fit_mape": .., "fit_worst": .., "source": ".."}
//         // optional: the tile and wave model (sim/gemm_model.hpp) fitted to "gemm" by
//         // `loom calibrate` (or `loom calibrate --fit-gemm` on a profile already measured)
//     "gemm_fp8": [ {"m": 8192, "n": 2304, "k": 768, "seconds": 7.1e-5}, ... ],
//     "gemm_model_fp8": { as gemm_model, with "in_bytes": 1 and the FP8 peak }
//         // optional (GPUs with FP8 tensor cores): FP8 GEMMs as Transformer Engine runs a
//         // linear layer's, through cuBLASLt: E4M3 (forward) or E5M2 gradients times E4M3
//         // operands, both K-major (the only layout cuBLASLt runs FP8 in), per-tensor scales,
//         // bf16 output or, "accumulate_fp32", a weight gradient added into fp32; the model
//         // fitted to them as gemm_model is to "gemm"
//     "gemm_variants": [ {"kind": "fwd_bias", "m":..,"n":..,"k":.., "seconds":..}, ... ],
//         // the executor's own calls at the same shapes (fwd_bias, fwd_bias_gelu, bwd_input,
//         // bwd_input_dgelu, bwd_weight (fp32 += with the bias column sum)): for per-op
//         // analysis; the time model reads only "gemm"
//     "attention": [ {"bh": 384, "seq": 1024, "head_dim": 64, "fwd_s": .., "bwd_s": ..}, ... ],
//         // the executor's causal flash-style kernel, bh = batch x heads
//     "memory_bound": [ {"bytes": 1.0e9, "bytes_per_s": 2.9e12}, ... ],
//         // a bf16 elementwise kernel (read two tensors, write one; 16-byte accesses),
//         // bytes read + written over its median time, buffers rotated so that L2 holds none
//     "memory_by_kind": [ {"kind": "norm", "pass": "forward", "bytes": 6.7e7, "bytes_per_s": 2.4e12}, ... ],
//         // optional: a kernel of each kind (sim/mem_kind.hpp: norm, activation, rotary,
//         // softmax, dropout, cast, ...) on tensors of growing size, forward and backward;
//         // "bytes" are those loom's cost model counts for that op on that tensor (the
//         // mem_kind.hpp formulas, times its backward scale), so that the op priced at that
//         // size gets the measured time back; sorted by (kind, pass, bytes), each once
//     "optimizer": {"params": 1.5e9, "adamw_s": .., "grad_norm_s": .., "bytes_per_param": 34},
//         // the executor's AdamW (fp32 master, m, v, grads; bf16 copy) and gradient norm
//     "memory": {"cuda_context_bytes": .., "cublaslt_handle_bytes": .., "kernel_modules_bytes": ..,
//                "workspace_bytes": .., "malloc_granularity_bytes": ..}
//         // cudaMemGetInfo deltas: after cudaFree(0) (context, from cudaMemGetInfo's own total),
//         // after cublasLtCreate, after the first call of every GEMM and kernel (lazily loaded
//         // modules); the executor's cuBLASLt workspace; cudaMalloc's rounding unit
//   }
//
// Lookups (what the cost model does with the numbers):
//  - gemm_s(M, N, K, out_bytes): the measured time of that exact shape (and output);
//    any other shape from the fitted gemm_model when the profile has one, else the efficiency
//    (FLOP/s) of the NEAREST measured shape, distance |ln M/M'| + |ln N/N'| + |ln K/K'|, i.e.
//    time = t' x (M N K)/(M' N' K'). Held out by hidden size, the model predicts the measured
//    shapes better than the nearest one does (tests/test_gemm_model.cpp).
//  - fp8_gemm_s(M, N, K, out_bytes): the same over gemm_fp8 and gemm_model_fp8 (has_fp8_gemms:
//    whether the profile measured any; without, sim/fp8.hpp carries the bf16 times over).
//  - attention_fwd_s / attention_bwd_s(bh, seq, d): at the nearest measured seq (log
//    distance), linear in bh between the two measured bh around it (proportional beyond the
//    ends), then scaled by (seq / seq')^2 x d / d'.
//  - memory_s(bytes): bytes over the bandwidth interpolated linearly in ln(bytes) between
//    measured sizes (clamped at the ends); no launch is added (it is inside the measurement).
//  - kind_bandwidth(kind, backward, bytes): the same over that kind's curve for that pass (a
//    backward without its own curve takes the forward's); 0 where the kind has none, and the
//    caller takes memory_s.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/gemm_model.hpp"
#include "sim/mem_kind.hpp"

namespace loom {

struct ProfileGemm {
  std::string kind;  // "" for the plain table; a variant name in gemm_variants
  int64_t m = 0, n = 0, k = 0;
  bool accumulate_fp32 = false;  // a weight gradient: D fp32 += A B
  double seconds = 0;
};
struct ProfileAttention {
  int64_t bh = 0, seq = 0, head_dim = 0;
  double fwd_s = 0, bwd_s = 0;
};
struct ProfileBandwidth {
  double bytes = 0, bytes_per_s = 0;
};
struct ProfileKindBandwidth {
  MemKind kind = MemKind::elementwise;
  bool backward = false;
  double bytes = 0, bytes_per_s = 0;
};
struct ProfileOptimizer {
  int64_t params = 0;
  double adamw_s = 0, grad_norm_s = 0;
  double bytes_per_param = 0;  // what the AdamW kernel moves per parameter
};
struct ProfileMemory {
  int64_t cuda_context_bytes = 0;
  int64_t cublaslt_handle_bytes = 0;
  int64_t kernel_modules_bytes = 0;
  int64_t workspace_bytes = 0;
  int64_t malloc_granularity_bytes = 0;
  // Everything a process holds on the device beyond its own allocations.
  int64_t runtime_bytes() const { return cuda_context_bytes + cublaslt_handle_bytes + kernel_modules_bytes; }
};

struct HardwareProfile {
  std::string name, device, source;
  double kernel_launch_s = 0;
  std::vector<ProfileGemm> gemm, gemm_variants;
  std::vector<ProfileGemm> gemm_fp8;  // FP8 GEMMs (see the schema); empty where not measured
  std::vector<ProfileAttention> attention;
  std::vector<ProfileBandwidth> memory_bound;
  std::vector<ProfileKindBandwidth> memory_by_kind;  // empty where not measured
  ProfileOptimizer optimizer;
  ProfileMemory memory;
  GemmModel gemm_model;  // fitted to `gemm`; !valid() when the profile has none
  GemmModel gemm_model_fp8;  // fitted to `gemm_fp8`; !valid() when the profile has none

  // out_bytes: 2 for a bf16 output; 8 for an fp32 accumulation (the measured rows marked
  // accumulate_fp32), any other for the model only.
  double gemm_s(double M, double N, double K, double out_bytes = 2) const;
  bool measured(double M, double N, double K, double out_bytes = 2) const;  // an exact row
  // The measured GEMMs as the model's samples.
  std::vector<GemmSample> gemm_samples() const;
  // FP8 GEMMs: an exact gemm_fp8 row, else gemm_model_fp8, else the nearest row's FLOP/s.
  bool has_fp8_gemms() const { return !gemm_fp8.empty() || gemm_model_fp8.valid(); }
  double fp8_gemm_s(double M, double N, double K, double out_bytes = 2) const;
  std::vector<GemmSample> fp8_gemm_samples() const;
  double attention_fwd_s(double bh, double seq, double head_dim) const;
  double attention_bwd_s(double bh, double seq, double head_dim) const;
  double memory_s(double bytes) const;
  double bandwidth(double bytes) const;  // bytes per second at that size
  // A kind's measured bytes per second at that size, or 0 (see the lookups above).
  double kind_bandwidth(MemKind kind, bool backward, double bytes) const;
  bool has_kind(MemKind kind) const;
  // AdamW + gradient norm of `params` parameters (linear in params from the measured size).
  double optimizer_s(double params) const;
};

inline constexpr const char* kProfileSchema = "loom-profile-1";

Expected<HardwareProfile> profile_from_json(const nlohmann::json& j, const std::string& where);
class ObjectReader;
void read_gemm_model(ObjectReader& r, GemmModel& g);
nlohmann::json to_json(const GemmModel& g);
nlohmann::json to_json(const HardwareProfile& p);
// Reads a profile file. A relative path is tried as given (from the working directory), then
// beside `relative_to` (the cluster file's folder, when there is one), then from the
// repository root this binary was built from.
Expected<std::shared_ptr<const HardwareProfile>> load_profile(const std::string& path,
                                                              const std::string& relative_to = "");

}  // namespace loom
