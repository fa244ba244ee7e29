#include "planner/export.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <utility>

#include "planner/export_fp8.hpp"
#include "planner/export_offload.hpp"
#include "sim/context_parallel.hpp"
#include "sim/moe.hpp"
#include "sim/rank_grid.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"

namespace loom {

namespace {

std::string s(int64_t v) { return std::to_string(v); }

std::string num(double v) {
  nlohmann::json j = v;  // shortest round-trip form, as in the JSON files
  return j.dump();
}

// ---------------------------------------------------------------------------------------------
// Megatron-LM, pretrain_gpt.py arguments. Names read at NVIDIA/Megatron-LM
// d98e8a64ddf34856e74b24714e3bedb2f5a39553 (2026-08-22): megatron/training/arguments.py and
// the flags generated from ModelParallelConfig, TransformerConfig and TrainingConfig
// (field foo_bar -> --foo-bar; notes/export_options.md section 1 has the line of each).
// ---------------------------------------------------------------------------------------------
constexpr const char* kMegatronCommit = "d98e8a64ddf34856e74b24714e3bedb2f5a39553";

using Args = std::vector<std::pair<std::string, std::string>>;  // (flag, value or "")

std::string render_args(const Args& args) {
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    out += "  " + args[i].first;
    if (!args[i].second.empty()) out += " " + args[i].second;
    out += i + 1 < args.size() ? " \\\n" : "\n";
  }
  return out;
}

// Multi-head latent attention (DeepSeek-V2/V3; arguments.py: --multi-latent-attention,
// --q-lora-rank (default None: a direct q projection), --kv-lora-rank, --qk-head-dim (the
// no-RoPE part), --qk-pos-emb-head-dim (the RoPE part), --v-head-dim), each said, not defaulted.
void megatron_mla(const ModelSpec& m, Args& a) {
  if (!m.is_mla()) return;
  a.push_back({"--multi-latent-attention", ""});
  if (m.q_lora_rank > 0) a.push_back({"--q-lora-rank", s(m.q_lora_rank)});
  a.push_back({"--kv-lora-rank", s(m.kv_lora_rank)});
  a.push_back({"--qk-head-dim", s(m.qk_nope_head_dim)});
  a.push_back({"--qk-pos-emb-head-dim", s(m.qk_rope_head_dim)});
  a.push_back({"--v-head-dim", s(m.v_head_dim)});
}

void megatron_model(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, Args& a,
                    std::vector<std::string>& no) {
  a.push_back({"--num-layers", s(m.layers)});
  a.push_back({"--hidden-size", s(m.hidden)});
  a.push_back({"--num-attention-heads", s(m.heads)});
  // Projection size per head: hidden / heads by default; set where the model's head size differs.
  if (m.head_size > 0 && m.head_size * m.heads != m.hidden) a.push_back({"--kv-channels", s(m.head_size)});
  // --num-query-groups is ignored unless --group-query-attention is given.
  if (m.kv_heads != m.heads) {
    a.push_back({"--group-query-attention", ""});
    a.push_back({"--num-query-groups", s(m.kv_heads)});
  }
  megatron_mla(m, a);
  a.push_back({"--ffn-hidden-size", s(m.ffn_hidden)});
  a.push_back({"--seq-length", s(t.seq)});
  a.push_back({"--max-position-embeddings", s(m.seq_len)});  // required, even with RoPE
  if (m.family == Family::gpt) {
    a.push_back({"--normalization", "LayerNorm"});
    a.push_back({"--position-embedding-type", "learned_absolute"});
  } else {
    a.push_back({"--normalization", "RMSNorm"});
    a.push_back({"--swiglu", ""});
    a.push_back({"--position-embedding-type", "rope"});
    a.push_back({"--disable-bias-linear", ""});
    if (m.qkv_bias) a.push_back({"--add-qkv-bias", ""});  // Qwen2: biases on q, k, v only
    if (m.qk_norm) a.push_back({"--qk-layernorm", ""});   // Qwen3: norms of q and k per head
    if (m.post_norms) no.push_back("post_norms: Megatron-LM's GPT layer has no norms after attention and MLP (Gemma 2)");
    if (m.gated_gelu) no.push_back("gated_gelu: Megatron-LM's gated MLP is --swiglu; GeGLU (Gemma) emitted as SwiGLU (same shapes)");
    // arguments.py declares --rotary-base type=int, default 10000: always said, never defaulted.
    if (m.rope_theta == static_cast<double>(static_cast<int64_t>(m.rope_theta)))
      a.push_back({"--rotary-base", s(static_cast<int64_t>(m.rope_theta))});
    else
      no.push_back("rope_theta " + num(m.rope_theta) + ": --rotary-base takes an integer; Megatron's 10000 applies");
  }
  a.push_back({"--norm-epsilon", num(m.norm_eps)});
  if (!m.tied_embeddings) a.push_back({"--untie-embeddings-and-output-weights", ""});
  // Synthetic data with the model's vocabulary, embedding rows padded as loom counts them
  // (to a multiple of tp); for real data use a tokenizer instead (see the header).
  a.push_back({"--tokenizer-type", "NullTokenizer"});
  a.push_back({"--vocab-size", s(m.vocab)});
  a.push_back({"--padded-vocab-size", s((m.vocab + p.tp - 1) / p.tp * p.tp)});
  a.push_back({"--mock-data", ""});
  a.push_back({"--attention-backend", t.attention == Attention::fused ? "flash" : "unfused"});
  // Megatron-LM's --hidden-dropout and --attention-dropout default to 0.1; loom's dropout-free
  // models (Llama, Mistral, Qwen) must turn them off. Dropout-on models (GPT-2/3) use 0.1 too.
  if (!m.dropout) {
    a.push_back({"--hidden-dropout", "0.0"});
    a.push_back({"--attention-dropout", "0.0"});
  }
}

// Uneven stages (arguments.py: --decoder-first-pipeline-num-layers and
// --decoder-last-pipeline-num-layers; Megatron-core's get_num_layers_to_build splits the
// layers left over evenly between the other stages, and a stage's layers evenly between its
// virtual stages, so each must be a multiple of them), or, for a split whose first or last
// chunk is short, the embedding and the loss counted as layers (--account-for-embedding-in-
// pipeline-split, --account-for-loss-in-pipeline-split: megatron_account_split). Returns
// whether any of those flags was written.
bool megatron_stage_layers(const ModelSpec& m, const ParallelConfig& p, Args& a, std::vector<std::string>& no) {
  if (p.stage_layers.empty()) return false;
  const auto fl = megatron_first_last(p.stage_layers);
  const bool whole_chunks =
      std::all_of(p.stage_layers.begin(), p.stage_layers.end(), [&](int64_t x) { return x % p.vpp == 0; });
  if (fl && whole_chunks) {
    if (fl->first > 0) a.push_back({"--decoder-first-pipeline-num-layers", s(fl->first)});
    if (fl->last > 0) a.push_back({"--decoder-last-pipeline-num-layers", s(fl->last)});
    return fl->first > 0 || fl->last > 0;
  }
  if (const auto af = megatron_account_for(p.stage_layers, m.layers, p.vpp)) {
    if (af->embedding) a.push_back({"--account-for-embedding-in-pipeline-split", ""});
    if (af->loss) a.push_back({"--account-for-loss-in-pipeline-split", ""});
    return true;
  }
  no.push_back("stage_layers " + stage_layers_text(p.stage_layers) +
               ": Megatron-LM's --decoder-first/last-pipeline-num-layers keep the middle stages equal and each stage a "
               "multiple of its chunks, and --account-for-embedding/loss-in-pipeline-split take one layer from the first "
               "and last chunk; emitted as the even split");
  return false;
}

// A block recompute (ParallelConfig::recompute_layers), for an engine that recomputes every layer.
void note_recompute_layers(const ParallelConfig& p, const std::string& what, std::vector<std::string>& no) {
  if (p.recompute == Recompute::full && p.recompute_layers > 0)
    no.push_back("recompute_layers " + s(p.recompute_layers) + ": " + what +
                 " recomputes every layer, not each chunk's first; emitted as full recompute");
}
// Every K-th layer of each chunk recomputed (ParallelConfig::recompute_every), likewise.
void note_recompute_every(const ParallelConfig& p, const std::string& what, std::vector<std::string>& no) {
  if (p.recompute == Recompute::full && p.recompute_every > 0)
    no.push_back("recompute_every " + s(p.recompute_every) + ": " + what +
                 " recomputes every layer, not every K-th of each chunk; emitted as full recompute");
}

// A block recompute of each chunk's first N layers (ParallelConfig::recompute_layers) as
// torchtitan's every K-th block: the K, if any, with which every chunk recomputes as many
// layers (chunk_layers / K = min(N, chunk_layers)) and torchtitan counts them so
// (torchtitan_count_parts finds none), which for a dense model costs the same time and memory; none
// otherwise, or for a MoE model.
std::optional<int64_t> block_as_every(const ModelSpec& m, const ParallelConfig& p) {
  if (m.is_moe() || p.recompute != Recompute::full || p.recompute_layers <= 0) return std::nullopt;
  std::vector<int64_t> chunks;
  for (int64_t c = 0; c < p.pp * p.vpp; ++c) chunks.push_back(chunk_layers_at(p, m.layers, c % p.pp, c / p.pp));
  const int64_t most = *std::max_element(chunks.begin(), chunks.end());
  for (int64_t k = 1; k <= most; ++k)
    if (std::all_of(chunks.begin(), chunks.end(), [&](int64_t n) { return n / k == p.recomputed_layers(n); }) &&
        !torchtitan_count_parts(m, p, k))
      return k;
  return std::nullopt;
}

// Every K-th layer of each chunk recomputed (ParallelConfig::recompute_every) as Megatron-LM's
// block of each chunk's first N layers: the same N wherever every chunk recomputes as many
// (chunk_layers / K), which for a dense model costs the same time and memory; none otherwise.
std::optional<int64_t> every_as_block(const ModelSpec& m, const ParallelConfig& p) {
  std::optional<int64_t> n;
  for (int64_t c = 0; c < p.pp * p.vpp; ++c) {
    const int64_t r = p.recomputed_layers(chunk_layers_at(p, m.layers, c % p.pp, c / p.pp));
    if (n && *n != r) return std::nullopt;
    n = r;
  }
  return n;
}

// Megatron-LM 2021's scatter/gather of pipeline transfers (TrainSpec::pp_scatter_gather),
// which no engine loom exports to runs today.
void note_pp_scatter_gather(const TrainSpec& t, const ParallelConfig& p, const std::string& engine,
                            std::vector<std::string>& no) {
  if (t.pp_scatter_gather && p.pp > 1 && p.tp > 1 && !p.sp)
    no.push_back("pp_scatter_gather on: " + engine + " sends each pipeline tensor whole from every tp rank (plan with "
                 "--pp-scatter-gather off)");
}

// Megatron-LM's recompute flags: selective, full of every layer or of a block of each chunk's
// first layers (a block also for an every-K-th plan, where one gives as many), and full for
// torchtitan's per-op checkpointing, which Megatron-LM has not.
void megatron_recompute(const ModelSpec& m, const ParallelConfig& p, Args& a, std::vector<std::string>& no) {
  if (p.recompute == Recompute::selective) a.push_back({"--recompute-granularity", "selective"});
  if (p.recompute == Recompute::op) {  // no per-op checkpointing in Megatron-LM: the plan that fits, in full
    no.push_back("recompute op: Megatron-LM has no per-op checkpointing (torchtitan's); emitted as full recompute, "
                 "which holds less memory and costs more time than the plan priced");
    a.push_back({"--recompute-granularity", "full"});
    a.push_back({"--recompute-method", "uniform"});
    a.push_back({"--recompute-num-layers", "1"});
    return;
  }
  // Every K-th layer of each chunk: Megatron-LM's block of as many first layers where it can.
  const std::optional<int64_t> every_block = p.recompute_every > 0 ? every_as_block(m, p) : std::nullopt;
  const bool recomputes_none = every_block && *every_block == 0;  // K beyond every chunk: none recomputed
  if (p.recompute == Recompute::full && p.recompute_every > 0)
    no.push_back("recompute_every " + s(p.recompute_every) + ": Megatron-LM recomputes a block of each chunk's first "
                 "layers, not every K-th; " +
                 (recomputes_none ? "no chunk holds " + s(p.recompute_every) + " layers, so none is recomputed; emitted "
                                    "without recompute"
                  : every_block   ? "emitted as the block of as many (" + s(*every_block) +
                                      "), which costs a dense model the same"
                                  : "its chunks recompute unequal counts; emitted as full recompute"));
  const int64_t block = p.recompute_layers > 0 ? p.recompute_layers : every_block.value_or(0);
  if (p.recompute == Recompute::full && !recomputes_none) {  // every layer (uniform, groups of 1) or a block
    a.push_back({"--recompute-granularity", "full"});
    a.push_back({"--recompute-method", block > 0 ? "block" : "uniform"});
    a.push_back({"--recompute-num-layers", s(block > 0 ? block : 1)});
  }
}

// ZeRO (the distributed optimizer, Megatron-FSDP), offload and the data-parallel overlaps.
void megatron_data_parallel(const ParallelConfig& p, Args& a, std::vector<std::string>& no) {
  if (p.zero == 1) a.push_back({"--use-distributed-optimizer", ""});
  if (p.zero >= 2) {
    a.push_back({"--use-megatron-fsdp", ""});
    a.push_back({"--data-parallel-sharding-strategy", p.zero == 2 ? "optim_grads" : "optim_grads_params"});
    a.push_back({"--ckpt-format", "fsdp_dtensor"});
    if (p.pp > 1) no.push_back("zero " + s(p.zero) + " with pp > 1: Megatron-FSDP does not document pipeline parallelism");
  }
  megatron_offload(p, a, no);
  // The gradient reduction beside the backward (ParallelConfig::overlap_grad_reduce); without the
  // flag Megatron-core reduces after it (finalize_model_grads), as loom's off prices.
  if (dp_cp(p) > 1 && p.overlap_grad_reduce) a.push_back({"--overlap-grad-reduce", ""});
  if (dp_cp(p) > 1 && !p.overlap_grad_reduce && p.zero >= 2)
    no.push_back("overlap_grad_reduce off: Megatron-FSDP reduce-scatters the gradients beside the backward, as the "
                 "exported run will");
  // The distributed optimizer's weight all-gather under the next forward (arguments.py asserts
  // --use-distributed-optimizer and --overlap-grad-reduce beside it).
  if (p.overlap_param_gather && p.zero == 1 && p.overlap_grad_reduce) a.push_back({"--overlap-param-gather", ""});
  if (p.overlap_param_gather && p.zero == 1 && !p.overlap_grad_reduce)
    no.push_back("overlap_param_gather on with overlap_grad_reduce off: Megatron-LM's arguments.py requires "
                 "--overlap-grad-reduce beside --overlap-param-gather; emitted without either (the weight gather shows)");
  // Megatron-FSDP (zero 2 here) overlaps its parameter all-gathers with compute itself
  // (megatron/core/distributed/fsdp/src/README.md, "Communication Overlapping"): no flag.
  if (!p.overlap_param_gather && p.zero == 2 && p.dp > 1)
    no.push_back("overlap_param_gather off: Megatron-FSDP overlaps its weight gathers with the forward, as the exported "
                 "run will");
}

void megatron_parallel(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, Args& a,
                       std::vector<std::string>& no) {
  a.push_back({"--tensor-model-parallel-size", s(p.tp)});
  a.push_back({"--pipeline-model-parallel-size", s(p.pp)});
  const bool uneven = megatron_stage_layers(m, p, a, no);
  // No --virtual-pipeline-model-parallel-size flag exists; layers per virtual stage instead, or
  // with uneven stages chunks per rank (arguments.py refuses layers per virtual stage there).
  if (p.schedule == Schedule::interleaved && uneven)
    a.push_back({"--num-virtual-stages-per-pipeline-rank", s(p.vpp)});
  else if (p.schedule == Schedule::interleaved)
    a.push_back({"--num-layers-per-virtual-pipeline-stage", s(m.layers / (p.pp * p.vpp))});
  if (p.schedule == Schedule::gpipe && p.pp > 1)
    no.push_back("schedule gpipe: Megatron-LM has only 1F1B and interleaved 1F1B; emitted as 1F1B");
  if (p.schedule == Schedule::zb_h1 && p.pp > 1)
    no.push_back("schedule zb-h1: Megatron-LM has no zero-bubble schedule; emitted as 1F1B (1F1B's bubble, no more memory)");
  if (p.schedule == Schedule::zb_v)
    no.push_back("schedule zb-v: Megatron-LM has no zero-bubble V schedule; emitted as 1F1B with one block of layers per "
                 "stage (1F1B's bubble, about the same memory)");
  // Pipeline sends (ParallelConfig::pp_comm_overlap): Megatron-core overlaps them with the next
  // chunk in the interleaved schedule only, on unless --no-overlap-p2p-communication; arguments.py
  // sets overlap_p2p_comm False for any other schedule, whose sends then block.
  if (p.pp > 1 && p.schedule == Schedule::interleaved && !p.pp_overlapped())
    a.push_back({"--no-overlap-p2p-communication", ""});
  if (p.pp > 1 && p.schedule != Schedule::interleaved && p.pp_overlapped())
    no.push_back("pp_comm_overlap on: Megatron-LM overlaps pipeline sends with compute only in the interleaved schedule; "
                 "the exported run's sends block (--pp-comm-overlap off prices that)");
  if (p.sp) a.push_back({"--sequence-parallel", ""});
  // Transformer Engine's userbuffers overlap of the SP collectives with their GEMMs, as loom
  // prices it (sim/tp_overlap.hpp); arguments.py asserts --sequence-parallel beside it.
  if (p.tp_comm_overlap) a.push_back({"--tp-comm-overlap", ""});
  a.push_back({"--micro-batch-size", s(p.micro_batch)});
  a.push_back({"--global-batch-size", s(t.global_batch)});
  megatron_data_parallel(p, a, no);
  // A bucket other than Megatron-core's default for this dp (dp_bucket_bytes_for): in elements.
  if (dp_cp(p) > 1 && t.dp_bucket_bytes > 0 &&
      t.dp_bucket_bytes / dtype_bytes(t.grad_dtype) != megatron_bucket_elements(p.dp))
    a.push_back({"--ddp-bucket-size", s(t.dp_bucket_bytes / dtype_bytes(t.grad_dtype))});
  megatron_recompute(m, p, a, no);
  if (t.dtype == Dtype::bf16) a.push_back({"--bf16", ""});
  megatron_fp8(t, a);  // FP8 GEMMs (planner/export_fp8.hpp)
  if (t.grad_dtype == Dtype::bf16) a.push_back({"--grad-reduce-in-bf16", ""});
  else if (t.dtype == Dtype::bf16) a.push_back({"--accumulate-allreduce-grads-in-fp32", ""});
  // Gradient accumulation fusion is on by default (arguments.py); loom's separate add is its off.
  if (t.grad_accumulation == GradAccumulation::separate) a.push_back({"--no-gradient-accumulation-fusion", ""});
  if (!t.tp_backward_overlap && p.tp > 1)
    no.push_back("tp_backward_overlap off: Megatron-LM's column-parallel layers always overlap their backward "
                 "collectives with their gradient GEMMs");
  note_pp_scatter_gather(t, p, "Megatron-LM (since 2023)", no);
  // Context parallelism (sim/context_parallel.hpp): the ring of KV blocks over point-to-point
  // sends (--cp-comm-type p2p, Megatron-core's default) or K and V all-gathered (all_gather).
  if (p.cp > 1) {
    a.push_back({"--context-parallel-size", s(p.cp)});
    a.push_back({"--cp-comm-type", to_string(p.cp_comm)});
  }
  // Megatron-LM orders ranks tp-cp-ep-dp-pp (loom's tp-dp-pp, tp-cp-dp-pp in full); --use-tp-pp-dp-mapping
  // gives tp-cp-ep-pp-dp (loom's tp-pp-dp). No option sets any other order.
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  const std::string order = grid ? grid->order_string() : p.order;
  if (order == "tp-cp-pp-dp") a.push_back({"--use-tp-pp-dp-mapping", ""});
  else if (order != "tp-cp-dp-pp")
    no.push_back("rank order " + p.order + ": Megatron-LM orders ranks tp-dp-pp or, with --use-tp-pp-dp-mapping, "
                 "tp-pp-dp; emitted as tp-dp-pp");
}

// Mixture of experts (arguments.py's MoE group, checked at the same commit): experts, top-k,
// the expert FFN size, the shared experts' total size (Megatron: "num_shared_experts x
// ffn_size_of_each_shared_expert"), which layers are MoE (--moe-layer-freq: a per-layer 0/1
// list), the expert grid, and the capacity loom prices: every expert padded to capacity factor
// x its mean load (--moe-expert-capacity-factor with --moe-pad-expert-input-to-capacity), the
// tokens moved by the all-to-all dispatcher, the experts run as one grouped GEMM.
void megatron_moe(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, Args& a) {
  if (!m.is_moe()) return;
  a.push_back({"--num-experts", s(m.experts)});
  a.push_back({"--moe-router-topk", s(m.experts_per_token)});
  a.push_back({"--moe-ffn-hidden-size", s(m.expert_ffn_hidden)});
  if (m.shared_experts > 0)
    a.push_back({"--moe-shared-expert-intermediate-size", s(m.shared_experts * m.expert_ffn_hidden)});
  if (moe_layer_total(m) != m.layers) {  // quoted: brackets are glob characters in bash
    std::string freq = "'[";
    for (int64_t l = 0; l < m.layers; ++l) freq += std::string(l > 0 ? "," : "") + (is_moe_layer(m, l) ? "1" : "0");
    a.push_back({"--moe-layer-freq", freq + "]'"});
  }
  a.push_back({"--expert-model-parallel-size", s(p.ep)});
  a.push_back({"--expert-tensor-parallel-size", s(p.etp)});
  a.push_back({"--moe-token-dispatcher-type", "alltoall"});
  a.push_back({"--moe-grouped-gemm", ""});
  a.push_back({"--moe-expert-capacity-factor", num(t.moe_capacity_factor)});
  a.push_back({"--moe-pad-expert-input-to-capacity", ""});
}

ExportResult megatron(const Plan& plan) {
  ExportResult r;
  Args a;
  const auto& p = plan.parallel;
  megatron_model(plan.model, plan.train, p, a, r.unexpressible);
  megatron_parallel(plan.model, plan.train, p, a, r.unexpressible);
  megatron_moe(plan.model, plan.train, p, a);
  const auto& c = plan.cluster;
  const int64_t per_node = c.nodes > 1 ? c.gpus_per_node : c.gpus;
  r.text = std::string("#!/usr/bin/env bash\n") +
           "# loom export: a Megatron-LM pretrain_gpt.py launch (option names checked at NVIDIA/Megatron-LM " +
           kMegatronCommit + ",\n# megatron/training/arguments.py). Run it from a Megatron-LM checkout on each of the " +
           s(c.nodes) + " node(s), with NODE_RANK and MASTER_ADDR set there.\n# " + s(p.gpus()) +
           " ranks: dp = WORLD_SIZE / (tp x pp) = " + s(p.dp) +
           " is implicit\n# synthetic data; for real data replace the NullTokenizer/--vocab-size/--mock-data lines "
           "with your tokenizer and data paths\nset -euo pipefail\n"
           "export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-LM needs it for sequence parallel and overlap\n"
           "torchrun --nnodes " + s(c.nodes) + " --nproc-per-node " + s(per_node) +
           " --node-rank \"${NODE_RANK:-0}\" \\\n  --master-addr \"${MASTER_ADDR:-localhost}\" --master-port "
           "\"${MASTER_PORT:-6000}\" \\\n  pretrain_gpt.py \\\n" +
           render_args(a);
  return r;
}

// ---------------------------------------------------------------------------------------------
// torchtitan, TOML for v0.2.2 (pytorch/torchtitan 73a0e6979dd10b6b1904098eb3c8f62c18ab87ce,
// torchtitan/config/job_config.py), the last release that reads TOML: main replaced it with
// Python config functions (PR #2386). Unknown keys are rejected there, so only known keys go out.
// ---------------------------------------------------------------------------------------------
constexpr const char* kTorchtitanCommit = "73a0e6979dd10b6b1904098eb3c8f62c18ab87ce";

std::string q(const std::string& v) { return "\"" + v + "\""; }

// A plan that adds micro-batches' gradients in the weight-gradient GEMM (GradAccumulation::fused)
// with more than one micro-batch per step, for an engine that adds them in a separate pass
// (autograd's AccumulateGrad or its own buffers), which runs it slower: a note saying so.
void note_fused_accumulation(const TrainSpec& t, const ParallelConfig& p, const std::string& engine,
                             std::vector<std::string>& no) {
  if (t.grad_accumulation == GradAccumulation::fused && t.global_batch / (p.dp * p.micro_batch) > 1)
    no.push_back("grad_accumulation fused: " + engine + " adds each micro-batch's gradients in a separate pass "
                 "(plan with --grad-accumulation separate)");
}

// A plan whose tensor-parallel backward runs its collectives beside the GEMMs (Megatron-LM's
// TrainSpec::tp_backward_overlap), for an engine whose tensor parallelism runs them in-line.
void note_tp_backward_overlap(const TrainSpec& t, const ParallelConfig& p, const std::string& engine,
                              std::vector<std::string>& no) {
  if (t.tp_backward_overlap && p.tp > 1 && !p.tp_comm_overlap)
    no.push_back("tp_backward_overlap on: " + engine + "'s tensor-parallel backward runs its collectives in-line "
                 "(plan with --tp-backward-overlap off)");
}

std::string llama3_flavor(const ModelSpec& m) {
  if (m.name == "llama3-8b") return "8B";
  if (m.name == "llama3-70b") return "70B";
  if (m.name == "llama3-405b") return "405B";
  return "";
}

// torchtitan's split of pp x vpp virtual stages (pipeline_parallel.py,
// generate_llm_fqn_per_model_part: the embedding counts as first_stage_less_layers layers, the
// norm and output as last_stage_less_layers, the sum spread evenly, the remainder on the first
// stages). The two counts that reproduce loom's split, found by trying each up to the even
// share; layers_per_stage only where their sum fits pp x vpp stages exactly (torchtitan infers
// one stage per rank without it). The first and last virtual stages are the only ones made
// smaller, so an uneven split with vpp > 1 (every chunk of a stage smaller) rarely fits.
std::optional<std::pair<int64_t, int64_t>> tt_less_layers(const ModelSpec& m, const ParallelConfig& p) {
  std::vector<int64_t> chunks;  // loom's layers per virtual stage, in torchtitan's order
  for (int64_t c = 0; c < p.pp * p.vpp; ++c) chunks.push_back(chunk_layers_at(p, m.layers, c % p.pp, c / p.pp));
  const int64_t stages = p.pp * p.vpp, most = (m.layers + stages - 1) / stages + 1;
  for (int64_t a = 0; a <= most; ++a)
    for (int64_t b = 0; b <= most; ++b) {
      auto v = torchtitan_split(m.layers, stages, a, b, "");
      if (v && *v == chunks && (p.vpp == 1 || (m.layers + a + b) % stages == 0)) return std::make_pair(a, b);
    }
  return std::nullopt;
}

void tt_stage_layers(const ModelSpec& m, const ParallelConfig& p, std::string& o, std::vector<std::string>& no) {
  const auto ab = tt_less_layers(m, p);
  if (!ab) {
    no.push_back("stage_layers " + stage_layers_text(p.stage_layers) + " with vpp " + s(p.vpp) +
                 ": torchtitan's first/last_stage_less_layers make only the first and last virtual stages smaller; "
                 "emitted torchtitan's split of " + s(m.layers) + " layers without them");
    o += "pipeline_parallel_first_stage_less_layers = 0\n";
    o += "pipeline_parallel_last_stage_less_layers = 0\n";
    return;
  }
  const auto [a, b] = *ab;
  // Exactly vpp stages per rank: (L + a + b) / (pp vpp) effective layers each.
  if ((m.layers + a + b) % (p.pp * p.vpp) == 0)
    o += "pipeline_parallel_layers_per_stage = " + s((m.layers + a + b) / (p.pp * p.vpp)) + "\n";
  o += "pipeline_parallel_first_stage_less_layers = " + s(a) + "\n";
  o += "pipeline_parallel_last_stage_less_layers = " + s(b) + "\n";
}

// Expert parallelism (v0.2.2 job_config.py Parallelism: expert_parallel_degree and
// expert_tensor_parallel_degree, "either 1 or the same as tp"). torchtitan builds MoE layers
// only in its own MoE model flavors (deepseek_v3, llama4, qwen3), not in the llama3 model this
// export names, and has no capacity padding.
void tt_experts(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, std::string& o,
                std::vector<std::string>& no) {
  if (!m.is_moe()) return;
  o += "expert_parallel_degree = " + s(p.ep) + "\n";
  o += "expert_tensor_parallel_degree = " + s(p.etp) + "\n";
  if (p.etp != 1 && p.etp != p.tp)
    no.push_back("etp " + s(p.etp) + ": torchtitan supports expert tp of 1 or tp (" + s(p.tp) + ") only");
  no.push_back("experts " + s(m.experts) + " (top-" + s(m.experts_per_token) +
               "): torchtitan's llama3 model has no MoE layers; its MoE models are the deepseek_v3, llama4 and qwen3 "
               "flavors, whose shapes are set in code");
  no.push_back("moe capacity factor " + num(t.moe_capacity_factor) +
               ": torchtitan's MoE is dropless (no capacity padding); loom prices the padded capacity");
}

void tt_parallelism(const ModelSpec& m, const TrainSpec& t, const ParallelConfig& p, std::string& o,
                    std::vector<std::string>& no) {
  // DDP (replicate) only for pure data parallelism; v0.2.2 raises "DDP has not supported > 1D
  // parallelism" otherwise, so dp goes on the FSDP shard dimension.
  const bool ddp = p.zero == 0 && p.tp == 1 && p.pp == 1;
  o += "[parallelism]\n";
  o += "data_parallel_replicate_degree = " + s(ddp ? p.dp : 1) + "\n";
  o += "data_parallel_shard_degree = " + s(ddp ? 1 : p.dp) + "\n";
  if (!ddp && p.dp > 1) {
    o += std::string("fsdp_reshard_after_forward = ") + (p.zero == 3 ? q("always") : q("never")) + "\n";
    if (p.zero == 0) no.push_back("zero 0 with tp or pp > 1: torchtitan v0.2.2 has no DDP with > 1D parallelism; emitted FSDP without reshard (ZeRO-2-like)");
    if (p.zero == 1) no.push_back("zero 1: torchtitan v0.2.2 cannot shard only the optimizer; emitted FSDP without reshard (ZeRO-2-like)");
    if (p.zero == 2) no.push_back("zero 2: approximated by FSDP with fsdp_reshard_after_forward = \"never\"");
  }
  o += "tensor_parallel_degree = " + s(p.tp) + "\n";
  // Async TP (v0.2.2 parallelize.py: symmetric-memory micro-pipelined TP, sim/tp_overlap.hpp);
  // it raises "Async TP requires torch.compile" without the model compiled ([compile] below).
  if (p.tp_comm_overlap) o += "enable_async_tensor_parallel = true\n";
  if (p.tp > 1 && !p.sp) no.push_back("sp off: torchtitan v0.2.2 always applies sequence parallelism when tp > 1");
  if (p.sp && t.seq % (2 * p.tp) != 0) no.push_back("sp: torchtitan needs seq_len divisible by 2 x tp");
  o += "pipeline_parallel_degree = " + s(p.pp) + "\n";
  if (p.pp > 1) {
    // zb-v: torch.distributed.pipelining's ScheduleZBVZeroBubble, two stages per rank placed as a V.
    const char* sched = p.schedule == Schedule::gpipe         ? "GPipe"
                        : p.schedule == Schedule::interleaved ? "Interleaved1F1B"
                        : p.schedule == Schedule::zb_v        ? "ZBVZeroBubble"
                                                              : "1F1B";
    o += std::string("pipeline_parallel_schedule = ") + q(sched) + "\n";
    // torch.distributed.pipelining's zero-bubble schedules (InterleavedZeroBubble, ZBVZeroBubble)
    // are multi-stage: torchtitan requires >= 2 stages per rank for them, and ZB-H1 has one.
    if (p.schedule == Schedule::zb_h1)
      no.push_back("schedule zb-h1: torchtitan's zero-bubble schedules (InterleavedZeroBubble, ZBVZeroBubble) need "
                   ">= 2 stages per rank; emitted as 1F1B (1F1B's bubble, no more memory)");
    o += "pipeline_parallel_microbatch_size = " + s(p.micro_batch) + "\n";
    tt_stage_layers(m, p, o, no);
  }
  // Context parallelism (v0.2.2 job_config.py): "alltoall" passes the K and V blocks around the
  // ring, as loom's CpComm::p2p prices it; torchtitan's default "allgather" gathers K and V first
  // but passes dK and dV round a ring in backward (PyTorch's _templated_ring_attention_backward),
  // which is not TransformerEngine's all-gather (CpComm::all_gather). FSDP then shards over dp x
  // cp, as loom's ZeRO does.
  o += "context_parallel_degree = " + s(p.cp) + "\n";
  if (p.cp > 1) o += "context_parallel_rotate_method = " + q("alltoall") + "\n";
  if (p.cp > 1 && p.cp_comm == CpComm::all_gather)
    no.push_back("cp_comm all_gather: torchtitan has no TransformerEngine-style K/V all-gather (its \"allgather\" "
                 "passes dK and dV round a ring); emitted as the ring, \"alltoall\"");
  tt_experts(m, t, p, o, no);
  o += "\n";
}

// [activation_checkpoint]: none, full, torchtitan's layer-level selective checkpointing (every
// K-th block: ParallelConfig::recompute_every, or a block recompute written so where one K gives
// as many layers), per op (Recompute::op, as loom prices it; loom's selective recompute is
// written so too, with a note).
std::string tt_activation_checkpoint(const ModelSpec& m, const ParallelConfig& p, std::vector<std::string>& no) {
  std::string o = "[activation_checkpoint]\n";
  const std::optional<int64_t> every = p.recompute_every > 0 ? std::optional<int64_t>(p.recompute_every)
                                                               : block_as_every(m, p);
  if (p.recompute == Recompute::full && every) {
    o += "mode = \"selective\"\nselective_ac_option = " + q(s(*every)) + "\n";
    if (torchtitan_count_parts(m, p, *every))
      no.push_back("recompute_every " + s(*every) + ": torchtitan v0.2.2 counts blocks on across a rank's model parts, so "
                   "with a part that is not a multiple of " + s(*every) + " blocks it checkpoints other blocks than "
                   "each chunk's layers " + s(*every) + ", " + s(2 * *every) + ", ...");
    if (p.recompute_layers > 0)
      no.push_back("recompute_layers " + s(p.recompute_layers) + ": torchtitan checkpoints every K-th block of each "
                   "model part, not each chunk's first; emitted as selective_ac_option \"" + s(*every) +
                   "\", as many blocks, which costs a dense model the same");
    return o;
  }
  if (p.recompute == Recompute::op) return o + "mode = \"selective\"\nselective_ac_option = \"op\"\n";
  o += std::string("mode = ") + q(to_string(p.recompute)) + "\n";
  note_recompute_layers(p, "torchtitan's full activation checkpointing", no);
  if (p.recompute == Recompute::selective) {
    o += "selective_ac_option = \"op\"\n";
    no.push_back("recompute selective: torchtitan's is per-op (saves matmul outputs), not Megatron's attention-core recompute");
  }
  return o;
}

ExportResult torchtitan(const Plan& plan) {
  ExportResult r;
  auto& no = r.unexpressible;
  const auto& m = plan.model;
  const auto& t = plan.train;
  const auto& p = plan.parallel;
  std::string o = std::string("# loom export: torchtitan v0.2.2 TOML (keys checked at pytorch/torchtitan ") +
                  kTorchtitanCommit + "); torchtitan main no longer reads TOML\n";
  std::string flavor = llama3_flavor(m);
  if (m.family == Family::gpt) no.push_back("model " + m.name + ": torchtitan has no GPT (LayerNorm, GELU, learned positions) model");
  if (flavor.empty()) {
    flavor = m.name;
    no.push_back("model shape: torchtitan takes a registered flavor; register \"" + flavor + "\" (layers " + s(m.layers) +
                 ", hidden " + s(m.hidden) + ", heads " + s(m.heads) + ", kv heads " + s(m.kv_heads) + ", ffn " +
                 s(m.ffn_hidden) + ", vocab " + s(m.vocab) + ") in Python first");
  }
  if (m.tied_embeddings) no.push_back("tied embeddings: torchtitan's llama3 unties them");
  // torchtitan's deepseek_v3 model (DeepSeekV3ModelArgs: q_lora_rank, kv_lora_rank,
  // qk_nope_head_dim, qk_rope_head_dim, v_head_dim) has latent attention; its shapes are set in
  // code, per flavor, not in the TOML.
  if (m.is_mla())
    no.push_back("multi-head latent attention (q_lora_rank " + s(m.q_lora_rank) + ", kv_lora_rank " +
                 s(m.kv_lora_rank) + ", qk_nope_head_dim " + s(m.qk_nope_head_dim) + ", qk_rope_head_dim " +
                 s(m.qk_rope_head_dim) + ", v_head_dim " + s(m.v_head_dim) +
                 "): torchtitan's llama3 model has none; register these in a deepseek_v3 flavor and set name = "
                 "\"deepseek_v3\"");
  std::string converters;  // FP8 (planner/export_fp8.hpp)
  const std::string fp8 = torchtitan_fp8(t, converters, no);
  o += "[model]\nname = \"llama3\"\nflavor = " + q(flavor) + "\n" + converters + "\n" + fp8;
  // Without PP local_batch_size is one forward's batch (grad accumulation makes up the rest);
  // with PP it is the whole per-replica batch, cut into pipeline micro-batches.
  o += "[training]\n";
  o += "local_batch_size = " + s(p.pp > 1 ? t.global_batch / p.dp : p.micro_batch) + "\n";
  o += "global_batch_size = " + s(t.global_batch) + "\n";
  o += "seq_len = " + s(t.seq) + "\n";
  o += std::string("mixed_precision_param = ") + q(t.dtype == Dtype::bf16 ? "bfloat16" : "float32") + "\n";
  o += "mixed_precision_reduce = \"float32\"\n";
  o += torchtitan_offload(p, no) + "\n";
  if (t.grad_dtype == Dtype::bf16)
    no.push_back("grad dtype bf16: torchtitan v0.2.2 reduces gradients in float32 only; emitted float32");
  tt_parallelism(m, t, p, o, no);
  if (p.overlap_param_gather)
    no.push_back("overlap_param_gather: torchtitan shards with FSDP (ZeRO-3), not ZeRO 1/2");
  // FSDP2 and DDP (replicate) reduce each bucket as the backward produces it: no switch.
  if (!p.overlap_grad_reduce && dp_cp(p) > 1)
    no.push_back("overlap_grad_reduce off: torchtitan's FSDP and DDP reduce gradients beside the backward; the exported "
                 "run overlaps them");
  // torch.distributed.pipelining's schedules post their sends asynchronously and wait only on
  // the receives the next action needs.
  if (p.pp > 1 && !p.pp_overlapped())
    no.push_back("pp_comm_overlap off: torch.distributed.pipelining's sends are asynchronous; the exported run overlaps "
                 "them");
  if (p.tp_comm_overlap) {
    o += "[compile]\nenable = true\ncomponents = [\"model\"]\n\n";
    no.push_back("tp_comm_overlap: async TP runs only under torch.compile, whose kernel fusion loom does not price");
  }
  o += tt_activation_checkpoint(m, p, no);
  if (p.order != "tp-dp-pp") no.push_back("rank order " + p.order + ": torchtitan builds its own device mesh");
  if (t.attention == Attention::unfused) no.push_back("attention unfused: torchtitan uses fused SDPA");
  note_fused_accumulation(t, p, "torchtitan", no);
  note_tp_backward_overlap(t, p, "torchtitan", no);
  note_pp_scatter_gather(t, p, "torchtitan", no);
  r.text = o;
  return r;
}

// ---------------------------------------------------------------------------------------------
// DeepSpeed JSON config. Keys read at deepspeedai/DeepSpeed edaa7221267243c7be7fb49c5d5f5c4fb97b4641
// (0.19.6): deepspeed/runtime/constants.py, config.py, zero/config.py, precision_config.py,
// tensor_parallel/config.py, pipe/engine.py. Sub-configs reject unknown keys.
// ---------------------------------------------------------------------------------------------
// DeepSpeed's pipeline engine (PipelineModule): what of a pp > 1 plan its JSON holds, and what not.
void deepspeed_pipeline(const ParallelConfig& p, nlohmann::ordered_json& j, std::vector<std::string>& no) {
  j["pipeline"] = {{"activation_checkpoint_interval",
                    p.recompute == Recompute::full || p.recompute == Recompute::op ? 1 : 0}};
  no.push_back("pp " + s(p.pp) + ": not in the JSON; build PipelineModule(layers, num_stages=" + s(p.pp) +
               ", topology=PipeModelDataParallelTopology(num_pp=" + s(p.pp) + ", num_mp=" + s(p.tp) +
               ", num_dp=" + s(p.dp) + "), partition_method=\"uniform\")");
  // pipe/module.py's partition methods balance layer counts, parameters or layers of a type;
  // none takes counts per stage.
  if (!p.stage_layers.empty())
    no.push_back("stage_layers " + stage_layers_text(p.stage_layers) +
                 ": DeepSpeed's partition_method (uniform, parameters, type:regex) takes no per-stage layer counts; "
                 "\"parameters\" also lightens the stages holding the embedding and output");
  if (p.schedule != Schedule::one_f_one_b)
    no.push_back("schedule " + to_string(p.schedule) + ": DeepSpeed runs its own 1F1B-style TrainSchedule");
  if (p.tp > 1) no.push_back("tp " + s(p.tp) + " with pp > 1: tensor parallelism must come from the model code (e.g. Megatron-DeepSpeed)");
  // deepspeed/runtime/pipe/p2p.py send(): dist.send, synchronous ("Doesn't support async_op true").
  if (p.pp_overlapped())
    no.push_back("pp_comm_overlap on: DeepSpeed's pipeline engine sends synchronously (pipe/p2p.py dist.send); the "
                 "exported run's sends block");
}

// What DeepSpeed's activation checkpointing (whole layers, every one) does not express of a plan.
void deepspeed_recompute_notes(const ParallelConfig& p, std::vector<std::string>& no) {
  if (p.recompute == Recompute::selective) no.push_back("recompute selective: not expressible in DeepSpeed");
  if (p.recompute == Recompute::op)
    no.push_back("recompute op: DeepSpeed has no per-op checkpointing (torchtitan's); its activation checkpointing "
                 "recomputes whole layers, which holds less memory and costs more time than the plan priced");
  note_recompute_layers(p, "DeepSpeed's activation checkpointing", no);
  note_recompute_every(p, "DeepSpeed's activation checkpointing", no);
  if ((p.recompute == Recompute::full || p.recompute == Recompute::op) && p.pp == 1)
    no.push_back("recompute " + to_string(p.recompute) + " without pp: the model code must call deepspeed.checkpointing");
}

ExportResult deepspeed(const Plan& plan) {
  ExportResult r;
  auto& no = r.unexpressible;
  const auto& t = plan.train;
  const auto& p = plan.parallel;
  nlohmann::ordered_json j;
  // train_batch_size = micro x accumulation x world size, the world size being the DP size
  // when an mpu is supplied (PipelineModule supplies its grid).
  j["train_batch_size"] = t.global_batch;
  j["train_micro_batch_size_per_gpu"] = p.micro_batch;
  j["gradient_accumulation_steps"] = t.global_batch / (p.dp * p.micro_batch);
  if (t.dtype == Dtype::bf16) j["bf16"] = {{"enabled", true}};
  deepspeed_fp8(t, no);
  if (p.cp > 1)  // DeepSpeed's sequence parallelism is Ulysses: an all-to-all over heads, not a ring
    no.push_back("cp " + s(p.cp) + ": DeepSpeed has no ring-attention context parallelism (its sequence_parallel_size "
                 "is Ulysses, all-to-alls that split the heads); left out");
  const std::string gd = t.grad_dtype == Dtype::bf16 ? "bf16" : "fp32";
  // bf16 + ZeRO-0 + fp32 gradient accumulation raises NotImplementedError (engine.py).
  if (t.dtype == Dtype::bf16 && p.zero == 0 && t.grad_dtype == Dtype::fp32)
    no.push_back("grad dtype fp32 with bf16 and zero 0: DeepSpeed rejects fp32 gradient accumulation there; data_types left out (reduce in fp32 kept)");
  else
    j["data_types"] = {{"grad_accum_dtype", gd}};
  j["communication_data_type"] = gd;
  int zero = p.zero;
  if (p.pp > 1 && zero >= 2) {
    no.push_back("zero " + s(zero) + " with pp > 1: DeepSpeed's pipeline engine rejects ZeRO-2/3; emitted stage 1");
    zero = 1;
  }
  nlohmann::ordered_json zero_j = {{"stage", zero}};
  // overlap_comm (zero/config.py; default on for stage 3 only): each bucket reduced on its own
  // stream during the backward, else on the compute stream. Without ZeRO, and in the pipeline
  // engine, DeepSpeed reduces after the backward (engine.py allreduce_gradients,
  // pipe/engine.py _exec_reduce_grads).
  if (zero >= 1) zero_j["overlap_comm"] = p.overlap_grad_reduce;
  if (p.overlap_grad_reduce && dp_cp(p) > 1 && (zero == 0 || p.pp > 1))
    no.push_back("overlap_grad_reduce on: DeepSpeed" + std::string(p.pp > 1 ? "'s pipeline engine" : " without ZeRO") +
                 " reduces gradients after the backward (--overlap-grad-reduce off prices the exported run)");
  // Gradient buckets (engine.py): ZeRO 1-3 reduce in buckets of reduce_bucket_size elements;
  // without ZeRO DeepSpeed reduces in fixed buckets of 5e8 (MEMORY_OPT_ALLREDUCE_SIZE).
  const int64_t bucket_elems = dp_bucket_bytes_for(t, p) / dtype_bytes(t.grad_dtype);
  if (zero >= 1) zero_j["reduce_bucket_size"] = bucket_elems;
  else if (p.dp > 1 && bucket_elems != 500'000'000)
    no.push_back("dp bucket " + s(bucket_elems) + " elements: DeepSpeed without ZeRO reduces in fixed buckets of 500000000");
  deepspeed_offload(p, zero, zero_j, no);
  j["zero_optimization"] = zero_j;
  if (p.pp > 1) {
    deepspeed_pipeline(p, j, no);
  } else if (p.tp > 1) {
    j["tensor_parallel"] = {{"autotp_size", p.tp}};
    no.push_back("train_batch_size assumes DeepSpeed counts the DP size (" + s(p.dp) +
                 ") as its world size, as it does when an mpu is supplied; without one it checks against all " +
                 s(p.gpus()) + " GPUs");
  }
  if (p.sp) no.push_back("sp on: DeepSpeed has no Megatron-style sequence parallelism (its sequence_parallel_size is Ulysses)");
  if (p.tp_comm_overlap)
    no.push_back("tp_comm_overlap on: DeepSpeed has no tensor-parallel communication overlapped with GEMMs");
  if (p.overlap_param_gather)
    no.push_back("overlap_param_gather on: DeepSpeed's ZeRO 1/2 gathers the updated weights after the step, not under "
                 "the next forward");
  deepspeed_recompute_notes(p, no);
  note_fused_accumulation(t, p, "DeepSpeed", no);
  note_tp_backward_overlap(t, p, "DeepSpeed", no);
  note_pp_scatter_gather(t, p, "DeepSpeed", no);
  no.push_back("model shape and architecture: not in the DeepSpeed config (the model code defines them)");
  // DeepSpeed-MoE (deepspeed/moe/layer.py): num_experts, ep_size, k and capacity_factor are
  // arguments of deepspeed.moe.layer.MoE in the model code, not config keys.
  if (plan.model.is_moe())
    no.push_back("experts: not in the DeepSpeed config; build deepspeed.moe.layer.MoE(num_experts=" +
                 s(plan.model.experts) + ", ep_size=" + s(p.ep) + ", k=" + s(plan.model.experts_per_token) +
                 ", capacity_factor=" + num(t.moe_capacity_factor) + ") in the model code" +
                 (p.etp > 1 ? "; expert tp " + s(p.etp) + " is not expressible" : ""));
  if (p.order != "tp-dp-pp") no.push_back("rank order " + p.order + ": not expressible");
  r.text = j.dump(2) + "\n";
  return r;
}

}  // namespace

const std::vector<std::string>& engine_names() {
  static const std::vector<std::string> names{"megatron", "torchtitan", "deepspeed"};
  return names;
}

std::optional<ChunkAt> torchtitan_count_parts(const ModelSpec& m, const ParallelConfig& p, int64_t k) {
  for (int64_t s = 0; s < p.pp; ++s)
    for (int64_t c = 0; c + 1 < p.vpp; ++c)
      if (const int64_t n = chunk_layers_at(p, m.layers, s, c); n % k != 0) return ChunkAt{s, c, n};
  return std::nullopt;
}

ExportResult export_plan(const Plan& plan, Engine engine) {
  ExportResult r = engine == Engine::megatron ? megatron(plan) : engine == Engine::torchtitan ? torchtitan(plan) : deepspeed(plan);
  const auto& p = plan.parallel;
  if (p.dp_comm == DpComm::parameter_server) r.unexpressible.push_back("dp_comm ps: no engine here has a parameter server");
  if (p.grad_compression > 1) r.unexpressible.push_back("grad_compression: not expressible");
  if (p.zero3_gather == Zero3Gather::tensor)
    r.unexpressible.push_back("zero3_gather tensor: DeepSpeed 0.3's blocking per-tensor ZeRO-3 gathers; today's engines gather "
                              "a layer (FSDP) or a sub-module's tensors coalesced and prefetched (DeepSpeed 0.19), as the "
                              "exported run will");
  return r;
}

}  // namespace loom
