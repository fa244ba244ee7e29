// A GEMM time model for any shape (M, N, K): how a tiled tensor-core kernel (cuBLAS, CUTLASS)
// spends its time, with four coefficients `loom calibrate` fits to the GEMMs it measured.
//
// The kernel cuts the output into tiles of tm x tn and gives each SM one tile at a time
// (a CTA per SM); a tile runs the K loop in steps of 64 and then writes its part of the
// output. With split-K s, the K loop is cut into s parts whose fp32 partial outputs are summed
// afterwards. So, for one choice (tile, s):
//   tiles  = ceil(M / tm) ceil(N / tn) s
//   waves  = ceil(tiles / SMs)                                    (wave quantization)
//   k_tile = 64 ceil(K / (64 s))                                  (the K loop's steps)
//   tile_s = tile_overhead_s + 2 tm tn k_tile / (peak / SMs x mainloop_efficiency)
//   memory = (A + B + C bytes [+ s partial outputs written and read]) / (HBM x memory_efficiency)
//   time   = launch_s + max(waves x tile_s, memory)
// and the kernel is the choice of the least time among the large tiles cuBLAS's Ampere and
// Hopper kernels run training shapes with (kGemmTiles: 128 x 256, 256 x 128, 128 x 128;
// smaller tiles feed the tensor cores too slowly to pay) and split-K of 1-16: the library's
// heuristic picks a good kernel, not always the best, so this is a lower bound on its choice.
// The terms are the effects GEMM studies name: tile and wave quantization (NVIDIA, "Matrix
// Multiplication Background User's Guide", Deep Learning Performance docs), the per-tile
// prologue and epilogue that make small K slow, and the memory-bound regime of skinny shapes
// (roofline, Williams et al. 2009). With the six tiles 64 x 128 to 128 x 256 the fit to the
// H100 profile is no better (10.6% against 10.8% mean error) and picks 64-wide tiles for large
// shapes, which cuBLAS does not.
//
// Bytes: inputs of `in_bytes` each (bf16: 2; a model fitted to FP8 GEMMs, 1); the output is `out_bytes` per element: 2 for a bf16 result,
// 8 for a weight gradient accumulated into fp32 (read and written: beta = 1, as Megatron-LM's
// gradient-accumulation fusion and loom's executor run it).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

// The GPU a model describes (its own figures, so a model read from a profile is complete).
struct GemmHardware {
  double peak_flops = 0;       // dense tensor-core peak of the operands' type (bf16, or FP8)
  int64_t sm_count = 0;
  double hbm_bytes_per_s = 0;
};

struct GemmCoefficients {
  double mainloop_efficiency = 0;  // fraction of an SM's peak in the K loop
  double tile_overhead_s = 0;      // per tile: prologue and epilogue not hidden
  double memory_efficiency = 0;    // fraction of HBM bandwidth when streaming
  double launch_s = 0;             // per call
};

struct GemmModel {
  GemmHardware hw;
  GemmCoefficients c;
  double in_bytes = 2;      // bytes per input element of the GEMMs it describes (FP8: 1)
  int64_t samples = 0;      // measured shapes it was fitted to
  double fit_mape = 0;      // mean |predicted / measured - 1| over them
  double fit_worst = 0;     // the largest |predicted / measured - 1|
  std::string source;

  bool valid() const { return hw.sm_count > 0 && hw.peak_flops > 0 && c.mainloop_efficiency > 0; }
  double seconds(double M, double N, double K, double out_bytes = 2) const;
  // Another input precision: operands of `in_bytes` each, a tensor-core peak of `peak_flops`
  // (FP8: 1 byte, twice the bf16 peak on Hopper), the fitted coefficients unchanged. Not
  // measured where the model was fitted to another type: the same kernels' structure carried
  // to the other data type.
  double seconds_at(double M, double N, double K, double out_bytes, double in_bytes, double peak_flops) const;
};

// The kernel the model picks for a shape, for tests and `loom calibrate`'s report.
struct GemmChoice {
  int64_t tile_m = 0, tile_n = 0, split_k = 0, tiles = 0, waves = 0;
  double seconds = 0;
};
GemmChoice gemm_choice(const GemmModel& m, double M, double N, double K, double out_bytes = 2, double in_bytes = 2,
                       double peak_flops = 0);

inline constexpr std::array<std::pair<int64_t, int64_t>, 3> kGemmTiles = {{{128, 256}, {256, 128}, {128, 128}}};
inline constexpr std::array<int64_t, 5> kGemmSplitK = {1, 2, 4, 8, 16};
inline constexpr int64_t kGemmKStep = 64;

// GEMM times by their exact inputs, for one search thread (never shared between threads): a
// planner prices the same layer shapes in thousands of configurations, and the model's choice
// of tile and split is the cost model's hottest loop. The same bits out as GemmModel::seconds_at.
// Keyed by the model's address: a memo must not outlive the models it saw (a search's memo
// lives inside the search, its clusters outside).
class GemmMemo {
 public:
  double seconds(const GemmModel& g, double M, double N, double K, double out_bytes, double in_bytes,
                 double peak_flops);

 private:
  struct Key {
    const GemmModel* model;
    double m, n, k, out_bytes, in_bytes, peak_flops;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  std::unordered_map<Key, double, KeyHash> times_;
};

// One measured GEMM: inputs of `in_bytes` per element (bf16 2, FP8 1), output of `out_bytes`
// per element (see above).
struct GemmSample {
  double m = 0, n = 0, k = 0, out_bytes = 2, seconds = 0, in_bytes = 2;
};

// Fits the four coefficients by least squares on ln(predicted / measured): coordinate descent,
// each coefficient in turn by Brent's method over its range in log space (boost::math
// brent_find_minima), until a sweep improves the error by less than 1e-5. Deterministic.
// `hw.peak_flops` is the peak of the samples' input type (an FP8 fit: the FP8 peak), and the
// model keeps their in_bytes. Errors: fewer than 8 samples, a non-positive dimension or time,
// samples of two input widths, or hardware figures missing.
Expected<GemmModel> fit_gemm_model(const std::vector<GemmSample>& samples, const GemmHardware& hw);

// A model carried to another GPU by stated hardware ratios (a cluster file's "gemm_model"):
// the target's peak, SMs and HBM; the K loop's efficiency times `efficiency_scale`; a tile's
// fixed cost in clocks kept (so its seconds over `clock_ratio`, the target's SM clock over the
// source's); memory efficiency and launch kept.
GemmModel scale_gemm_model(const GemmModel& from, const GemmHardware& to, double efficiency_scale, double clock_ratio);

}  // namespace loom
