// Tensor-parallel communication overlapped with the GEMMs beside it: Megatron-LM's
// --tp-comm-overlap (Transformer Engine's userbuffers) and torchtitan's async TP
// (enable_async_tensor_parallel). With sequence parallelism every layer's all-gather before a
// column-parallel GEMM and reduce-scatter after a row-parallel one is split into tp chunks that
// are pipelined with the GEMM's tp chunks (Wang et al., "Overlap communication with dependent
// computation via decomposition in large deep learning models", ASPLOS 2023, Sec. 4).
//
// In a stage's work (sim/stage_work.hpp) the knob shows twice: the layers' tp halves are the
// message "tp overlapped activations" (the model's ends and the cross-entropy stay in-line),
// and the GEMMs they pair with (by Op::tp_slot: QKV or the attention's first column-parallel
// GEMM, the projection, fc1 or gate|up, fc2, the shared experts' too) run in the forward as tp
// chunks of T / tp rows (chunk_overlapped_gemms), so a skinny chunk costs what the GEMM time
// model says it costs. The backward's GEMMs run whole: QKV's and fc1's by the bulk method (one
// GEMM beside one collective), and Transformer Engine splits only the data gradient of the
// projection and fc2 (ring exchange), never a weight gradient, whose fp32 accumulator a split
// would read and write tp times; that dgrad split is not priced (its chunks keep all of N and
// K, so they lose little to tiles). The cost model and the simulator then take off the communication time the chunks
// hide (tp_overlap_hidden_s).
#pragma once
#include <cstdint>
#include <vector>

#include "sim/specs.hpp"
#include "sim/stage_work.hpp"
#include "sim/topology.hpp"

namespace loom {

struct OpTimer;

// The name of the message that holds the overlapped halves (one half: b s h bytes).
inline constexpr const char* kTpOverlappedMessage = "tp overlapped activations";

// Streaming multiprocessors of the GPU: the cluster file's gpu.sm_count (A100 108, H100 SXM and
// H200 132, from NVIDIA's A100 and H100 architecture whitepapers); 0 where the file does not
// state it, which validate_config then refuses with tp_comm_overlap.
int64_t gpu_sm_count(const GpuSpec& gpu);

// SMs the reduce-scatter and bulk communication kernels occupy while their GEMM runs:
// Transformer Engine's default userbuffers configuration (initialize_ub in
// transformer_engine/pytorch/module/base.py) gives the "pipeline" and "bulk" methods 16 SMs
// and the "ring_exchange" all-gathers 1 (their copies go over NVLink by copy engine), which
// loom counts as none.
inline constexpr int64_t kTpOverlapCommSms = 16;

// `gemm` marked as the GEMM beside the tp collective of `slot` (Op::tp_slot): what
// chunk_overlapped_gemms chunks and tp_overlap_hidden_s pairs, never a GEMM's name.
inline Op beside_tp_collective(Op gemm, TpOverlapSlot slot) {
  gemm.tp_slot = slot;
  return gemm;
}

// Rewrites the layer GEMMs that pair with overlapped tp communication as `tp` chunks each
// (rows T / tp, tp times the calls, the same FLOPs), the ones beside an SM-driven collective
// slowed by sms / (sms - 16). `gpu` must have a known SM count.
void chunk_overlapped_gemms(std::vector<Op>& ops, const GpuSpec& gpu, int64_t tp);

// Communication time per micro-batch the chunked GEMMs hide, by pass.
struct TpHiddenTime {
  double forward_s = 0, backward_s = 0, recompute_s = 0;
  double total_s() const { return forward_s + backward_s + recompute_s; }
};
// Per GEMM and its c seconds of tp communication (1 or 2 halves), on g seconds of chunked GEMM:
// the pair takes max(c, g) + min(c, g) / tp (tp chunks, one chunk to fill the pipeline) in
// place of c + g, so it hides (1 - 1/tp) min(c, g). Zero without overlapped halves.
TpHiddenTime tp_overlap_hidden_s(const StageWork& w, const GroupLinks& tp, const OpTimer& op);

// Megatron-LM's tensor-parallel backward (TrainSpec::tp_backward_overlap), without
// --tp-comm-overlap: per micro-batch, the communication time a column-parallel layer's backward
// (Op::tp_slot qkv and fc1) hides behind its own GEMMs. Without sequence parallelism its input
// gradient's all-reduce (two halves, c each) runs beside its weight-gradient GEMM w: min(2c, w);
// with it, the all-gather of its input beside the input-gradient GEMM d and the reduce-scatter
// of that gradient beside w: min(c, d) + min(c, w). The row-parallel layers' backward
// collectives (SP's all-gathers of the output gradient) and the recomputed forward's stay
// in-line. c is one "tp activations" half on the tp links (bf16, also under FP8, whose SP
// gathers move FP8: an upper bound there).
double tp_backward_hidden_s(const StageWork& w, const GroupLinks& tp, const OpTimer& op, bool sp);
// Whether a plan's tensor-parallel backward hides anything that way: the knob on, tp > 1, and
// neither --tp-comm-overlap (which prices its own) nor a schedule that splits the backward
// (zb-h1, zb-v: the weight gradients wait for the W pass, and Megatron-LM then waits for the
// collective at once: wgrad_compute false in the same backward).
bool tp_backward_beside_gemms(const TrainSpec& t, const ParallelConfig& p);

}  // namespace loom
