// The rules a configuration must meet before it can be priced or run. Each broken rule is
// one line naming the field (through `name`, which maps "tp" to "--tp" for flags or to
// "plan.json: /parallel/tp" for files) and the rule, as Megatron's argument checks do.
#pragma once
#include <functional>
#include <string>

#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom {

using FieldNamer = std::function<std::string(const std::string& field)>;

// The largest value loom accepts for each size a file or flag supplies. Each is far above any
// published model or cluster (GPT-3 175B: 96 layers, hidden 12288, 96 heads, vocab 50257;
// Llama 3 405B: 126 layers, hidden 16384, vocab 128256; the longest published contexts ~10M
// tokens; the largest clusters ~1e5 GPUs), and together they keep the integer arithmetic of
// the cost model, the simulator and the search far from int64's 2^63: a value above its bound
// is refused with the bound in the message instead of wrapping around.
namespace limits {
inline constexpr int64_t kLayers = int64_t{1} << 20;        // 1048576
inline constexpr int64_t kHidden = int64_t{1} << 20;
inline constexpr int64_t kHeads = int64_t{1} << 16;         // heads and kv_heads: 65536
inline constexpr int64_t kFfnHidden = int64_t{1} << 22;     // 4 x kHidden
inline constexpr int64_t kVocab = int64_t{1} << 26;         // 67108864
inline constexpr int64_t kSeq = int64_t{1} << 26;           // tokens per sequence and seq_len
inline constexpr int64_t kGlobalBatch = int64_t{1} << 40;   // sequences per step
inline constexpr int64_t kBytes = int64_t{1} << 50;         // any byte size in a file: 1 PiB
inline constexpr int64_t kGpusPerNode = int64_t{1} << 16;
inline constexpr int64_t kNodes = int64_t{1} << 20;
inline constexpr int64_t kGpus = int64_t{1} << 24;          // GPUs in use, and dp, tp, pp each
inline constexpr int64_t kNicsPerNode = int64_t{1} << 10;
inline constexpr int64_t kNcclChannels = 1024;  // NCCL's own cap is MAXCHANNELS (32, 64 in 2.2x)
inline constexpr double kRate = 1e18;  // FLOP/s and bytes/s of one GPU or link (H100: ~1e15)
inline constexpr double kTimeS = 1.0;  // a latency or a kernel launch (real ones: microseconds)
inline constexpr double kMinEfficiency = 1e-4;  // a fraction of peak below this is not a measurement
// Derived quantities, computed exactly in 128 bits (or long double) before the cost model
// multiplies them in int64: each must stay below these, with room left for the sums of a few
// dozen terms the model forms from them.
inline constexpr int64_t kParams = int64_t{1} << 50;        // x 20 bytes of weights, grads, AdamW < 2^55
inline constexpr int64_t kTokensPerStep = int64_t{1} << 40;
inline constexpr int64_t kDerivedBytes = int64_t{1} << 56;  // activations and logits of a whole step
inline constexpr long double kFlopsPerStep = 0x1p100L;      // FlopCount is 128-bit; printed as double
}  // namespace limits

// Sizes of the model and the arithmetic that only depends on the model: each field within
// its bound, the parameter count (per layer, embedding, total) within kParams.
Status check_model_sizes(const ModelSpec& m, const FieldNamer& name);
// Sizes of the training job and what the model multiplies them with, at their largest over
// every parallel split (one micro-batch of the whole global batch on one GPU): tokens per
// step, activation and logits bytes of the step, FLOPs per step.
Status check_train_sizes(const ModelSpec& m, const TrainSpec& t, const FieldNamer& name);

// Sets cluster.gpus and cluster.nodes for `gpus` GPUs (nodes = ceil(gpus / gpus_per_node);
// more than one node must be whole nodes).
Status size_cluster(ClusterSpec& cluster, int64_t gpus, const std::string& where);

// Every rule of a configuration, sizes first (check_train_sizes and the parallel sizes), so no
// later product of two sizes can wrap around.
Status validate_config(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                       const ParallelConfig& p, const FieldNamer& name);

// Whether a block recompute (ParallelConfig::recompute_layers) of this split is priced: a MoE
// model's needs equal interleaved chunks (the stage work finds the chunk holding the most by
// walking equal chunks), which validate_config requires and the search asks before it tries one.
bool block_recompute_priced(const ModelSpec& m, const ParallelConfig& p);

// With recompute op (torchtitan's per-op selective checkpointing), whether the configuration is
// one loom prices it for: a dense Llama block of bias-free bf16 GEMMs, fused attention, no
// context parallelism, sequence parallelism with tp > 1 (the rule broken, on `recompute`).
Status check_recompute_op(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, const FieldNamer& name);

}  // namespace loom
