// FP8 training as NVIDIA Transformer Engine runs it (TrainSpec::fp8; the plan's dtype stays
// bf16). Sources: Micikevicius et al. 2022, "FP8 Formats for Deep Learning" (arXiv 2209.05433):
// E4M3 for weights and activations, E5M2 for gradients ("hybrid"), one scale per tensor;
// Transformer Engine's documentation ("Using FP8 with Transformer Engine": delayed scaling from
// an amax history, FP8 GEMMs in te.Linear / LayerNormLinear, everything else in higher
// precision).
//
// What loom prices, per linear layer (qkv, projection, fc1/fc2 or gate|up/down, MoE experts and
// shared experts; not the attention core, not the router, not the output layer, which TE and
// Megatron keep in bf16):
//  - the forward, input-gradient and weight-gradient GEMMs at the GPU's FP8 peak
//    (GpuSpec::peak_flops_fp8): measured FP8 GEMMs where a profile has them, else the
//    efficiency bf16 GEMMs of that shape reach times the cluster's stated FP8-over-bf16 ratio
//    (EfficiencySpec::fp8_gemm_efficiency_ratio; see fp8_gemm_s): FP8 operands (1 byte), bf16
//    output;
//  - the casts, memory-bound: each GEMM input cast to FP8 with its FP8 transpose for the
//    weight-gradient GEMM (TE's fused cast-transpose: read 2, write 1 + 1 bytes per element,
//    the amax computed in the same pass), in forward and in a full recompute's forward; the
//    output gradient cast the same way in backward; each weight cast with its transpose once
//    per step (TE caches it over the step's micro-batches; under ZeRO-3 every micro-batch, as
//    each gathered layer is cast again); the delayed-scaling update once per step (TE's
//    amax_and_scale_update: every FP8 tensor's amax history read and rolled);
//  - memory: the FP8 weight copy and its transpose (2 bytes per linear weight) beside the bf16
//    weights for the whole step (ZeRO-3: one gathered layer's at a time); the saved inputs of
//    the FP8 GEMMs held in FP8 (1 byte instead of 2; see fp8_layer_activation_delta_bytes).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/specs.hpp"
#include "sim/stage_work.hpp"

namespace loom {

struct OpTimer;
struct MoeStage;

// The amax history length loom assumes and exports (Megatron's --fp8-amax-history-len 1024, the
// length NeMo's and Megatron-Bridge's FP8 recipes set).
inline constexpr int64_t kFp8AmaxHistory = 1024;

// "dtype" as plans, flags and tables name it: "bf16", "fp32" or "fp8" (dtype bf16, fp8 set).
const std::vector<std::string>& train_dtype_names();
std::string train_dtype_name(const TrainSpec& t);
// Sets dtype and fp8 from one of train_dtype_names (false for any other name).
bool set_train_dtype(TrainSpec& t, const std::string& name);

// An FP8 plan needs a GPU with FP8 tensor cores (gpu.peak_flops_fp8 > 0): one line naming
// `field` otherwise.
Status check_fp8(const ClusterSpec& c, const TrainSpec& t, const std::string& field);

// Whether an op is one of the FP8 GEMMs: a gemm or gemm_bwd other than the output layer
// ("logits") and the MoE router ("router").
bool is_fp8_linear(const Op& o);

// Linear-layer weights (the FP8 GEMMs' (K, N) operands) this GPU holds for a stage of `layers`
// transformer layers, `moe` of them MoE layers, before ZeRO sharding: the tp shards of qkv,
// projection and MLP (less their biases), a MoE layer's shared experts in place of its MLP, and
// the stage's local experts.
int64_t fp8_weight_params(const ModelSpec& m, int64_t tp, int64_t layers, const MoeStage& moe);

// Signed change of one dense layer's saved activation bytes (one micro-batch, one tp rank) when
// its linear layers run in FP8, TE's choice of what to keep: the inputs of qkv and fc1 (the norm
// outputs, T h / rep each) and of fc2 (GELU output or SwiGLU product, T f / t) in FP8, 1 byte
// less per element; the projection's input in FP8 beside the bf16 attention output a fused
// attention's backward still reads (+T q / t), or in its place when unfused (-T q / t). A full
// recompute keeps only the layer input (no change). `mlp`: false for a MoE layer, whose expert
// inputs loom keeps in bf16.
int64_t fp8_layer_activation_delta_bytes(const ModelSpec& m, int64_t micro_batch, int64_t seq, int64_t tp, bool sp,
                                         Recompute r, Attention a, bool mlp);

// The FP8 weight copy and its transpose (2 bytes per weight; the transpose alone where the
// weights are FP8 themselves, fp8_param_gather): `weights_rank` for the step, or under ZeRO-3
// one gathered layer's of the stage's `layers` (their mean), transient.
void fp8_buffers(std::vector<Buffer>& v, int zero, int64_t weights_rank, int64_t layers, bool fp8_params);

// Marks the FP8 GEMMs among `ops` and appends their casts (see above). `micro_batches` per step
// per replica; `weights_rank` the stage's FP8 weights on this GPU (fp8_weight_params).
// Fp8Recipe::tensorwise (current scaling) adds before each cast an amax pass that reads the
// bf16 tensor once more (TE's compute_amax kernel ahead of the cast: transformer_engine/common/
// recipe/current_scaling.cu, nvte_compute_amax, then nvte_compute_scale_from_amax and the
// cast; Float8CurrentScalingQuantizer in transformer_engine/pytorch/tensor/float8_tensor.py) and
// has no amax history to update. The amax all-reduce over the tensor-parallel group that TE runs
// for sequence-parallel inputs (one fp32 per cast, latency-bound) is not priced.
// With fp8_params the weight cast is the transpose of the FP8 weights alone (read 1, write 1
// byte per weight: the optimizer writes the FP8 weights from its master copy).
void fp8_ops(std::vector<Op>& ops, int zero, int64_t micro_batches, int64_t weights_rank, Fp8Recipe recipe,
             bool fp8_params);

// Sequence parallelism's all-gathers that Transformer Engine runs in FP8 (1 byte per element
// instead of bf16's 2), per micro-batch on a stage of `layers` layers, `mlp_free` of them MoE
// layers whose MLP runs no tp collective. TE quantizes a column-parallel layer's input before
// its SP all-gather (LayerNormLinear: the norm writes FP8, then gather_along_first_dim with the
// input quantizer; TransformerEngine v2.1, transformer_engine/pytorch/module/layernorm_linear.py
// _LayerNormLinear.forward "with_quantized_all_gather", and distributed.py _all_gather_fp8,
// which gathers the uint8 data; v1.13 the same with ln_out in torch.uint8), gathers it again
// in FP8 for the weight gradient (the same file's backward), and casts a row-parallel layer's
// output gradient to FP8 before its all-gather (module/base.py grad_output_preprocess, "FP8
// with all-gather"). The reduce-scatters move the GEMMs' bf16 outputs. So per dense layer:
// forward 2 FP8 gathers (qkv and fc1 inputs), backward 4 (the output gradients of the
// projection and fc2, the two norm outputs again), a full recompute's forward 2 more per
// recomputed layer (`recomputed` of them); a MoE layer without a tp MLP half of that (`mlp_free`
// of the stage's layers, `recomputed_mlp_free` of those recomputed). (With --tp-comm-overlap TE's userbuffers also
// gather FP8; loom prices the overlapped halves at bf16 size.)
inline constexpr const char* kFp8TpGatherMessage = "tp fp8 all-gathers";
struct Fp8TpGathers {
  int64_t forward = 0, backward = 0, recompute = 0;
};
Fp8TpGathers fp8_sp_gathers(int64_t layers, int64_t mlp_free, int64_t recomputed, int64_t recomputed_mlp_free);

// Time of one FP8 GEMM call (M, N, K), its backward and the backward's weight-gradient half
// (its output of OpTimer::wgrad_out bytes per element), from the first of:
//  - the profile's FP8 GEMMs (HardwareProfile::fp8_gemm_s: measured by `loom calibrate`);
//  - the FP8 GEMM model the cluster carries (gemm_model_fp8): from a profile that measured FP8,
//    or its bf16 model at peak_flops_fp8 with the main loop's efficiency times the cluster's
//    fp8_gemm_efficiency_ratio where it states one;
//  - the cluster's bf16 GEMM model at peak_flops_fp8 with 1-byte operands (sim/gemm_model.hpp:
//    the bf16 fit carried over, not measured in FP8; no ratio stated);
//  - peak_flops_fp8 with the efficiency a bf16 GEMM of that shape reaches times
//    fp8_efficiency_ratio (the cluster's saturating curve, or a bf16-only profile's measured
//    time scaled by peak_bf16 / peak_fp8), never faster than streaming its FP8 operands and
//    bf16 output from HBM, plus one launch.
double fp8_gemm_s(const OpTimer& t, double M, double N, double K, double out_bytes = 2);
double fp8_gemm_bwd_s(const OpTimer& t, double M, double N, double K);
double fp8_gemm_wgrad_s(const OpTimer& t, double M, double N, double K);

}  // namespace loom
