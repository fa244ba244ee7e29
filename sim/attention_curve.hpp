// A fused causal attention kernel's speed against sequence length and head size, as a published
// benchmark of that kernel reports it (a cluster file's efficiency.attention_curve), for GPUs
// `loom calibrate` has not measured. Without it the cluster's one `attention` efficiency prices
// every shape alike, which a kernel does not do: FlashAttention-2 on an A100 runs a causal
// forward + backward of head size 64 at 88 TFLOP/s at 512 tokens and 171 at 16k (Dao 2023),
// because each (batch, head) row block has a fixed prologue and epilogue, the causal mask leaves
// the diagonal blocks half used, and a short sequence gives the SMs few blocks.
//
// A point is the kernel's forward and backward speed in FLOP/s as FlashAttention's benchmark
// counts them: causal forward 2 b h s^2 d (half of 4 b h s^2 d), backward 2.5x that (loom's
// attention_bwd counts the same). A benchmark that timed the two passes together gives both the
// same figure (their total time is then what it timed); one that published only the forward
// gives the backward the forward's figure and says so in its source (every published backward
// runs slower, so that is a lower bound on the time). Between measured sequence lengths a speed
// is interpolated linearly in log2(seq), and held flat beyond the shortest and the longest;
// between measured head sizes linearly in the head size, held flat beyond them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

struct AttentionCurvePoint {
  int64_t head_dim = 0;
  int64_t seq = 0;
  double forward_flops_per_s = 0, backward_flops_per_s = 0;  // causal, FlashAttention's count
};

struct AttentionCurve {
  std::string kernel;  // which kernel and precision the benchmark ran
  std::vector<AttentionCurvePoint> points;  // sorted by (head_dim, seq), each pair once
  bool measured = false;  // timed on this cluster's GPU (attention_curve_bench.py), not published
  std::string source;

  // The forward's and the backward's speed for a causal attention of `seq` tokens and head size
  // `head_dim` (both > 0).
  double forward_flops_per_s(double head_dim, double seq) const;
  double backward_flops_per_s(double head_dim, double seq) const;
};

}  // namespace loom
