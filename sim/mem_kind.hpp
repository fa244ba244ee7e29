// What a memory-bound kernel does, and the bytes loom counts for it. A stage's memory-bound ops
// (sim/stage_work.hpp) carry their kind so that a calibration profile can price each kind from
// its own measured bandwidth curve (sim/profile.hpp "memory_by_kind"): a norm's row reduction, a
// rotary embedding's strided pairs or a softmax's two passes reach less of HBM's bandwidth than a
// plain elementwise sum does. `loom calibrate` times a kernel of each kind on a tensor of n
// elements and records the bytes these functions count for that tensor, so that the cost model,
// asking for the same op, gets the measured time back: the byte count is a unit shared by the two
// sides, not a claim about the kernel's exact traffic.
#pragma once
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>

namespace loom {

enum class MemKind : uint8_t {
  elementwise,    // anything without its own curve: the profile's elementwise sum (memory_bound)
  norm,           // LayerNorm or RMSNorm over (tokens, width)
  activation,     // GELU, or a gated unit (SwiGLU, GeGLU) and its product
  residual,       // a sum of two tensors: residual adds, gradient accumulation
  rotary,         // rotary position embedding of q and k
  softmax,        // the unfused attention's softmax over its scores; the MoE router's
  dropout,        // dropout with its one-byte mask
  cast,           // FP8 casts (with the transposed copy) and their amax reductions
  cross_entropy,  // the loss over the logits
  embedding,      // the token (and position) embedding gather
  copy,           // layout copies: ZeRO-3's flat buffers, MoE token permutes
};

// Every kind in the enum's order, with the name profiles use for it.
struct MemKindName {
  MemKind kind;
  const char* name;
};
inline constexpr MemKindName kMemKinds[] = {
    {MemKind::elementwise, "elementwise"}, {MemKind::norm, "norm"},       {MemKind::activation, "activation"},
    {MemKind::residual, "residual"},       {MemKind::rotary, "rotary"},   {MemKind::softmax, "softmax"},
    {MemKind::dropout, "dropout"},         {MemKind::cast, "cast"},       {MemKind::cross_entropy, "cross_entropy"},
    {MemKind::embedding, "embedding"},     {MemKind::copy, "copy"}};

constexpr bool mem_kinds_in_enum_order() {
  for (int i = 0; i < static_cast<int>(std::size(kMemKinds)); ++i)
    if (static_cast<int>(kMemKinds[i].kind) != i) return false;
  return true;
}
static_assert(mem_kinds_in_enum_order(), "kMemKinds is indexed by MemKind");

inline const char* mem_kind_name(MemKind k) { return kMemKinds[static_cast<int>(k)].name; }

inline std::optional<MemKind> mem_kind_from_name(const std::string& s) {
  for (const MemKindName& k : kMemKinds)
    if (s == k.name) return k.kind;
  return std::nullopt;
}

// A layer's elementwise kernels in backward read two tensors and write one where the forward
// read one and wrote one: 1.5x the forward's bytes.
inline constexpr double kElementwiseBackwardScale = 1.5;
// The unfused attention's backward (its batched GEMMs, softmax and dropout) costs twice its
// forward.
inline constexpr double kUnfusedAttentionBackwardScale = 2;

// Bytes counted for one forward call over a tensor of n elements of e bytes each:
//   norm: reads x, writes y                          2 e n (n = tokens x width)
//   residual: reads two, writes one                  3 e n
//   GELU: reads its input, writes its output         2 e n (n = tokens x ffn)
//   gated unit: reads gate and up, writes product    3 e n (n = the product's elements)
//   rotary: reads and writes q and k                 2 e n (n = q and k elements)
//   softmax: reads the scores, writes probabilities  2 e n (n = scores)
//   dropout: reads x, writes y and a 1-byte mask     (2 e + 1) n
//   fused cross-entropy: reads the logits, writes their gradient over them   2 e n (n = logits)
//   FP8 cast: reads bf16, writes the FP8 tensor and its transpose (Transformer Engine's
//   cast-transpose: Hopper runs FP8 GEMMs K-major only, so the backward needs both)  4 n
inline double norm_bytes(double n, double e) { return 2 * e * n; }
inline double residual_bytes(double n, double e) { return 3 * e * n; }
inline double gelu_bytes(double n, double e) { return 2 * e * n; }
inline double gated_unit_bytes(double n, double e) { return 3 * e * n; }
inline double rotary_bytes(double n, double e) { return 2 * e * n; }
inline double softmax_bytes(double n, double e) { return 2 * e * n; }
inline double dropout_bytes(double n, double e) { return (2 * e + 1) * n; }
inline double fused_cross_entropy_bytes(double n, double e) { return 2 * e * n; }
inline double fp8_cast_bytes(double n) { return 4 * n; }

}  // namespace loom
