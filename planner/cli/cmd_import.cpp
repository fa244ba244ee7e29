// loom import megatron|torchtitan|deepspeed FILE --cluster C --gpus N [-o plan.json]: the
// dispatch, the shared checks, and the Megatron-LM reader. torchtitan's job TOML and
// DeepSpeed's JSON config are read in cmd_import_torchtitan.cpp and cmd_import_deepspeed.cpp;
// --compare-best in cmd_import_compare.cpp.
//
// Megatron-LM: the argument list of a pretrain_gpt.py launch (a bare list, or a launch script
// such as `loom export --to megatron` writes) as a loom plan, priced by the cost model. Flag
// names and defaults are Megatron-LM's megatron/training/arguments.py (NVIDIA/Megatron-LM
// d98e8a64, the commit the exporter names). A flag that changes the model in a way loom does
// not price refuses the file; any other flag loom does not read is listed as ignored, one line
// each on stderr.
#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "planner/cli/cmd_import.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/flags.hpp"
#include "planner/cli/inputs.hpp"
#include "planner/cli/report.hpp"
#include "sim/context_parallel.hpp"
#include "sim/cost_model.hpp"
#include "sim/json_reader.hpp"
#include "sim/mla.hpp"
#include "sim/model_math.hpp"
#include "sim/moe.hpp"
#include "sim/plan.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"
#include "sim/step_result.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

namespace {

// Megatron flags as read: flag -> value ("" for a switch), and the flags used so far.
struct MegatronArgs {
  std::string where;
  std::map<std::string, std::string> values;
  std::set<std::string> used;
  bool has(const std::string& f) {
    used.insert(f);
    return values.count(f) != 0;
  }
};

// Tokens of a launch script or a bare list: comments and line continuations dropped; the
// arguments start after `pretrain_gpt.py` when the file names it.
Expected<MegatronArgs> tokenize(const std::string& text, const std::string& where) {
  std::vector<std::string> tokens;
  std::istringstream in(text);
  std::string line, tok;
  while (std::getline(in, line)) {
    std::istringstream ls(line.substr(0, line.find('#')));
    while (ls >> tok)
      if (tok != "\\") tokens.push_back(tok);
  }
  size_t start = 0;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i].size() >= 15 && tokens[i].substr(tokens[i].size() - 15) == "pretrain_gpt.py") start = i + 1;
  MegatronArgs a;
  a.where = where;
  for (size_t i = start; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t.rfind("--", 0) != 0) return make_error(where, "expected a --flag (got \"" + t + "\")");
    std::string flag = t, value;
    if (auto eq = t.find('='); eq != std::string::npos) flag = t.substr(0, eq), value = t.substr(eq + 1);
    else if (i + 1 < tokens.size() && tokens[i + 1].rfind("--", 0) != 0) value = tokens[++i];
    if (a.values.count(flag)) return make_error(where, flag + ": given twice");
    a.values[flag] = value;
  }
  return a;
}

// The switches loom reads (argparse store_true flags in megatron/training/arguments.py): a word
// after one is not its value, and Megatron-LM's parser refuses the stray word, so loom does too
// (`--sequence-parallel false` would otherwise read as sp on).
Status check_switches(const MegatronArgs& a) {
  static const char* const kSwitches[] = {
      "--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split", "--add-qkv-bias", "--bf16",
      "--disable-bias-linear", "--fp16", "--fp8-param-gather", "--grad-reduce-in-bf16", "--group-query-attention",
      "--multi-latent-attention", "--no-gradient-accumulation-fusion", "--no-overlap-p2p-communication",
      "--optimizer-cpu-offload", "--overlap-grad-reduce", "--overlap-param-gather", "--qk-layernorm",
      "--sequence-parallel", "--swiglu", "--tp-comm-overlap", "--untie-embeddings-and-output-weights",
      "--use-distributed-optimizer", "--use-megatron-fsdp", "--use-precision-aware-optimizer",
      "--use-tp-pp-dp-mapping"};
  for (const char* f : kSwitches)
    if (auto it = a.values.find(f); it != a.values.end() && !it->second.empty())
      return make_error(a.where + ": " + f, "is a switch and takes no value (got \"" + it->second + "\")");
  return ok_status();
}

// Reads an integer flag into `out` (left as is when absent).
Status get_int(MegatronArgs& a, const std::string& flag, int64_t& out, int64_t max) {
  if (!a.has(flag)) return ok_status();
  const std::string& v = a.values[flag];
  int64_t x = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (ec != std::errc() || p != v.data() + v.size() || x < 1 || x > max)
    return make_error(a.where + ": " + flag, "must be an integer in [1, " + std::to_string(max) + "] (got \"" + v + "\")");
  out = x;
  return ok_status();
}

Status get_number(MegatronArgs& a, const std::string& flag, double& out) {
  if (!a.has(flag)) return ok_status();
  const std::string& v = a.values[flag];
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !(x >= 0) || x > 1e12)
    return make_error(a.where + ": " + flag, "must be a number >= 0 (got \"" + v + "\")");
  out = x;
  return ok_status();
}

std::string get_str(MegatronArgs& a, const std::string& flag, const std::string& dflt) {
  return a.has(flag) ? a.values[flag] : dflt;
}

// The layer type: GPT (LayerNorm, learned positions, GeLU MLP, biases: Megatron's defaults)
// or Llama (RMSNorm, RoPE, SwiGLU, no biases). Any other mix is a model loom does not price.
Status read_family(MegatronArgs& a, ModelSpec& m) {
  const std::string norm = get_str(a, "--normalization", "LayerNorm");
  const std::string pos = get_str(a, "--position-embedding-type", "learned_absolute");
  const bool swiglu = a.has("--swiglu"), no_bias = a.has("--disable-bias-linear");
  if (norm == "LayerNorm" && pos == "learned_absolute" && !swiglu && !no_bias) {
    m.family = Family::gpt;
  } else if (norm == "RMSNorm" && pos == "rope" && swiglu && no_bias) {
    m.family = Family::llama;
  } else {
    return make_error(a.where + ": --normalization/--position-embedding-type/--swiglu/--disable-bias-linear",
                      "loom prices GPT layers (LayerNorm, learned_absolute, GeLU, biases) or Llama layers "
                      "(RMSNorm, rope, --swiglu, --disable-bias-linear) (got " + norm + ", " + pos +
                          (swiglu ? ", swiglu" : ", gelu") + (no_bias ? ", no biases)" : ", biases)"));
  }
  m.qkv_bias = a.has("--add-qkv-bias") && m.family == Family::llama;
  m.qk_norm = a.has("--qk-layernorm");
  m.tied_embeddings = !a.has("--untie-embeddings-and-output-weights");
  return ok_status();
}

Status read_shape(MegatronArgs& a, ModelSpec& m, TrainSpec& t) {
  for (auto* f : {"--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--vocab-size"})
    if (!a.values.count(f))
      return make_error(a.where + ": " + f, std::string("is required") +
                                                (std::string(f) == "--vocab-size" ? " (loom reads no tokenizer files)" : ""));
  Status st = get_int(a, "--num-layers", m.layers, limits::kLayers);
  if (st) st = get_int(a, "--hidden-size", m.hidden, limits::kHidden);
  if (st) st = get_int(a, "--num-attention-heads", m.heads, limits::kHeads);
  if (!st) return st;
  m.kv_heads = m.heads;
  if (st && a.has("--kv-channels")) {  // the head size, where it is not hidden / heads
    st = get_int(a, "--kv-channels", m.head_size, limits::kHidden);
    if (st && m.head_size * m.heads == m.hidden) m.head_size = 0;
  }
  if (!st) return st;
  if (a.has("--group-query-attention")) st = get_int(a, "--num-query-groups", m.kv_heads, limits::kHeads);
  else a.used.insert("--num-query-groups");  // ignored by Megatron without --group-query-attention
  // arguments.py: ffn_hidden_size defaults to 4 h, or int(4 h x 2/3 / 64) x 64 with --swiglu.
  m.ffn_hidden = m.family == Family::llama ? (4 * m.hidden * 2 / 3) / 64 * 64 : 4 * m.hidden;
  if (st) st = get_int(a, "--ffn-hidden-size", m.ffn_hidden, limits::kFfnHidden);
  if (st) st = get_int(a, "--vocab-size", m.vocab, limits::kVocab);
  if (st) st = get_int(a, "--seq-length", t.seq, limits::kSeq);
  m.seq_len = t.seq;  // arguments.py: max_position_embeddings defaults to seq_length
  if (st) st = get_int(a, "--max-position-embeddings", m.seq_len, limits::kSeq);
  if (st) st = get_number(a, "--norm-epsilon", m.norm_eps);
  if (st) st = get_number(a, "--rotary-base", m.rope_theta);
  if (!st) return st;
  double hidden_drop = 0.1, attn_drop = 0.1;  // arguments.py defaults
  if (st = get_number(a, "--hidden-dropout", hidden_drop); st) st = get_number(a, "--attention-dropout", attn_drop);
  m.dropout = hidden_drop > 0 || attn_drop > 0;
  return st;
}

// Uneven stages (--decoder-first/last-pipeline-num-layers): Megatron-core's split, the other
// stages sharing the layers left evenly (sim/stage_split.hpp megatron_split).
Status read_uneven_stages(MegatronArgs& a, const ModelSpec& m, ParallelConfig& p) {
  int64_t first = 0, last = 0;
  Status st = get_int(a, "--decoder-first-pipeline-num-layers", first, limits::kLayers);
  if (st) st = get_int(a, "--decoder-last-pipeline-num-layers", last, limits::kLayers);
  if (!st || (first == 0 && last == 0)) return st;
  if (p.pp < 2)
    return make_error(a.where + ": " + (first > 0 ? "--decoder-first-pipeline-num-layers" : "--decoder-last-pipeline-num-layers"),
                      "needs --pipeline-model-parallel-size > 1");
  auto v = megatron_split(m.layers, p.pp, first, last, a.where + ": --decoder-first-pipeline-num-layers");
  if (!v) return v.error();
  p.stage_layers = *v;
  return ok_status();
}

// --account-for-embedding-in-pipeline-split and --account-for-loss-in-pipeline-split: the
// embedding and the loss counted as layers of the model's first and last chunk, which give one
// up each (sim/stage_split.hpp megatron_account_split); read once pp and the chunks per rank are.
Status read_account_for(MegatronArgs& a, const ModelSpec& m, int64_t per_virtual, ParallelConfig& p) {
  const AccountFor f{a.has("--account-for-embedding-in-pipeline-split"), a.has("--account-for-loss-in-pipeline-split")};
  if (!f.embedding && !f.loss) return ok_status();
  const std::string flag = a.where + ": " + (f.embedding ? "--account-for-embedding-in-pipeline-split"
                                                         : "--account-for-loss-in-pipeline-split");
  if (!p.stage_layers.empty())
    return make_error(flag, "Megatron-LM refuses it beside --decoder-first/last-pipeline-num-layers");
  if (per_virtual > 0)
    return make_error(flag, "give the chunks per rank (--num-virtual-stages-per-pipeline-rank), not "
                            "--num-layers-per-virtual-pipeline-stage, beside it");
  auto v = megatron_account_split(m.layers, p.pp, p.vpp, f, flag);
  if (!v) return v.error();
  p.stage_layers = *v;
  return ok_status();
}

// --optimizer-cpu-offload (with --use-precision-aware-optimizer, which it needs): the whole
// optimizer on the CPU, loom's offload optimizer; a fraction below 1 splits it, not modelled.
Status read_offload(MegatronArgs& a, ParallelConfig& p) {
  a.has("--use-precision-aware-optimizer");  // read: it changes where the optimizer state lives, not what is priced
  if (!a.has("--optimizer-cpu-offload")) return ok_status();
  double fraction = 1;
  if (auto st = get_number(a, "--optimizer-offload-fraction", fraction); !st) return st;
  if (fraction != 1)
    return make_error(a.where + ": --optimizer-offload-fraction",
                      "loom prices the whole optimizer on the CPU (1.0; got " + a.values["--optimizer-offload-fraction"] + ")");
  p.offload = Offload::optimizer;
  return ok_status();
}

// --moe-layer-freq: an integer k (every k-th layer, Megatron's `layer % k == 0`), a 0/1 list
// "[0,1,1,...]" (as loom exports it) or "([0]*d+[1]*n)" (Megatron's examples), quotes allowed;
// loom's MoE layers are dense_layers dense ones, then every moe_layer_interval-th.
Status read_moe_layers(MegatronArgs& a, ModelSpec& m) {
  std::string v = get_str(a, "--moe-layer-freq", "1");
  std::erase_if(v, [](char ch) { return ch == '\'' || ch == '"' || ch == ' '; });
  std::vector<int> is_moe;
  int64_t k = 0, d = 0, n = 0;
  if (!v.empty() && std::all_of(v.begin(), v.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); })) {
    k = std::stoll(v.substr(0, 9));
    for (int64_t l = 0; l < m.layers && k > 0; ++l) is_moe.push_back(l % k == 0);
  } else if (std::sscanf(v.c_str(), "([0]*%ld+[1]*%ld)", &d, &n) == 2 && d >= 0 && n >= 0) {
    is_moe.assign(static_cast<size_t>(std::min<int64_t>(d, m.layers)), 0);
    is_moe.resize(static_cast<size_t>(std::min<int64_t>(d + n, m.layers + 1)), 1);
  } else if (v.size() >= 2 && v.front() == '[' && v.back() == ']') {
    for (size_t i = 1; i + 1 < v.size(); ++i)
      if (v[i] == '0' || v[i] == '1') is_moe.push_back(v[i] == '1');
      else if (v[i] != ',') is_moe.assign(1, 2);  // not a 0/1 list: refused below
  }
  const std::string bad = a.where + ": --moe-layer-freq";
  if (static_cast<int64_t>(is_moe.size()) != m.layers)
    return make_error(bad, "must be an integer or a 0/1 pattern of --num-layers entries (got \"" + v + "\")");
  // The fewest dense layers first, then the smallest interval, that give the pattern.
  const int64_t first = std::find(is_moe.begin(), is_moe.end(), 1) - is_moe.begin();
  for (m.dense_layers = 0; m.dense_layers <= std::min(first, m.layers - 1); ++m.dense_layers)
    for (m.moe_layer_interval = 1; m.moe_layer_interval <= m.layers; ++m.moe_layer_interval) {
      bool same = true;
      for (int64_t l = 0; l < m.layers && same; ++l) same = is_moe[l] == (is_moe_layer(m, l) ? 1 : 0);
      if (same) return ok_status();
    }
  return make_error(bad, "loom's MoE layers are a dense prefix, then every k-th layer (got \"" + v + "\")");
}

// Mixture of experts (arguments.py's MoE group): --num-experts, --moe-router-topk (default 2),
// --moe-ffn-hidden-size (default --ffn-hidden-size), --moe-shared-expert-intermediate-size (a
// multiple of the expert size: loom counts shared experts of that size), --moe-layer-freq, the
// expert grid (--expert-tensor-parallel-size defaults to tp, as arguments.py sets it) and the
// capacity factor (without one Megatron drops no tokens; loom then prices the busiest expert at
// its documented default factor, TrainSpec::moe_capacity_factor).
Status read_moe(MegatronArgs& a, ModelSpec& m, TrainSpec& t, ParallelConfig& p) {
  int64_t experts = 0;
  Status st = get_int(a, "--num-experts", experts, int64_t{1} << 16);
  if (st) st = get_int(a, "--expert-model-parallel-size", p.ep, limits::kGpus);
  if (!st || experts <= 1) return st;
  m.experts = experts;
  m.experts_per_token = 2;
  m.expert_ffn_hidden = m.ffn_hidden;
  p.etp = p.tp;
  int64_t shared = 0;
  if (st) st = get_int(a, "--moe-router-topk", m.experts_per_token, experts);
  if (st) st = get_int(a, "--moe-ffn-hidden-size", m.expert_ffn_hidden, limits::kFfnHidden);
  if (st) st = get_int(a, "--moe-shared-expert-intermediate-size", shared, limits::kFfnHidden);
  if (st) st = get_int(a, "--expert-tensor-parallel-size", p.etp, limits::kGpus);
  if (st) st = get_number(a, "--moe-expert-capacity-factor", t.moe_capacity_factor);
  if (st) st = read_moe_layers(a, m);
  if (!st) return st;
  if (shared % m.expert_ffn_hidden != 0)
    return make_error(a.where + ": --moe-shared-expert-intermediate-size",
                      "must be a multiple of --moe-ffn-hidden-size (" + std::to_string(shared) + " % " +
                          std::to_string(m.expert_ffn_hidden) + " != 0)");
  m.shared_experts = shared / m.expert_ffn_hidden;
  // Read, priced the same: padding to capacity is what loom prices; the dispatcher and the
  // grouped GEMM are how the same tokens move and multiply; the load-balancing loss is elementwise.
  for (auto* f : {"--moe-pad-expert-input-to-capacity", "--moe-token-dispatcher-type", "--moe-grouped-gemm",
                  "--moe-router-load-balancing-type", "--moe-aux-loss-coeff"})
    a.used.insert(f);
  return ok_status();
}

// --recompute-method block --recompute-num-layers n: each chunk's first n layers. Megatron-LM
// takes an n of at least a chunk's layers as every layer of it (transformer_block.py
// _checkpointed_forward), which loom writes as 0 (every layer), said on stderr.
int64_t block_layers(const MegatronArgs& a, const ModelSpec& m, const ParallelConfig& p, int64_t n) {
  // Stage sizes are checked later: only a split of pp entries is walked.
  const bool walkable = p.stage_layers.empty() || static_cast<int64_t>(p.stage_layers.size()) == p.pp;
  const int64_t most = walkable ? max_chunk_layer_count(p, m.layers) : 0;
  if (most == 0 || n < most) return n;
  fmt::print(stderr, "loom: {}: --recompute-num-layers {}: at least each model chunk's {} layers, so every layer is "
             "recomputed (priced as such)\n", a.where, n, most);
  return 0;
}

Status read_parallel(MegatronArgs& a, const ModelSpec& m, TrainSpec& t, ParallelConfig& p) {
  Status st = get_int(a, "--tensor-model-parallel-size", p.tp, limits::kGpus);
  if (st) st = get_int(a, "--pipeline-model-parallel-size", p.pp, limits::kGpus);
  if (st) st = get_int(a, "--micro-batch-size", p.micro_batch, limits::kGlobalBatch);
  if (st && !a.values.count("--global-batch-size")) return make_error(a.where + ": --global-batch-size", "is required");
  if (st) st = get_int(a, "--global-batch-size", t.global_batch, limits::kGlobalBatch);
  int64_t per_virtual = 0, chunks = 0;
  if (st) st = get_int(a, "--num-layers-per-virtual-pipeline-stage", per_virtual, limits::kLayers);
  if (st) st = get_int(a, "--num-virtual-stages-per-pipeline-rank", chunks, limits::kLayers);
  if (st) st = read_uneven_stages(a, m, p);
  if (!st) return st;
  if (per_virtual > 0 && (chunks > 0 || !p.stage_layers.empty()))
    return make_error(a.where + ": --num-layers-per-virtual-pipeline-stage",
                      "Megatron-LM refuses it beside --num-virtual-stages-per-pipeline-rank or uneven stages");
  if (chunks > 1) p.schedule = Schedule::interleaved, p.vpp = chunks;
  if (per_virtual > 0) {
    if (m.layers % (p.pp * per_virtual) != 0)
      return make_error(a.where + ": --num-layers-per-virtual-pipeline-stage", "pp x it must divide --num-layers");
    p.schedule = Schedule::interleaved, p.vpp = m.layers / (p.pp * per_virtual);
  }
  // Megatron-core refuses a first or last stage its chunks do not divide ("must be divisible by
  // virtual pipeline parallel degree"): only the account-for flags leave a chunk short.
  for (size_t i : {size_t{0}, p.stage_layers.size() - 1})
    if (st && !p.stage_layers.empty() && p.stage_layers[i] % p.vpp != 0)
      return make_error(a.where + ": " + (i == 0 ? "--decoder-first-pipeline-num-layers" : "--decoder-last-pipeline-num-layers"),
                        "must be a multiple of the chunks per rank, " + std::to_string(p.vpp) + ", as Megatron-LM requires (got " +
                            std::to_string(p.stage_layers[i]) + ")");
  if (st) st = read_account_for(a, m, per_virtual, p);
  if (st) st = get_int(a, "--context-parallel-size", p.cp, limits::kGpus);
  // p2p (the ring, the default) or all_gather (sim/context_parallel.hpp); a2a is Ulysses.
  const std::string cp_comm = get_str(a, "--cp-comm-type", "p2p");
  if (st && p.cp > 1 && cp_comm != "p2p" && cp_comm != "all_gather")
    return make_error(a.where + ": --cp-comm-type", "loom prices p2p and all_gather (got " + cp_comm + ")");
  if (p.cp > 1 && cp_comm == "all_gather") p.cp_comm = CpComm::all_gather;
  a.used.insert("--cp-comm-type");
  if (!st) return st;
  p.sp = a.has("--sequence-parallel");
  p.tp_comm_overlap = a.has("--tp-comm-overlap");  // validate_config: needs sp and tp > 1, as arguments.py
  p.overlap_param_gather = a.has("--overlap-param-gather");  // validate_config: needs zero 1 or 2 and dp > 1
  // Without --overlap-grad-reduce (its default) Megatron-core reduces the gradients after the
  // backward (finalize_model_grads).
  p.overlap_grad_reduce = a.has("--overlap-grad-reduce");
  if (p.overlap_param_gather && !p.overlap_grad_reduce && !a.has("--use-megatron-fsdp"))
    return make_error(a.where + ": --overlap-param-gather", "needs --overlap-grad-reduce beside it, as Megatron-LM's "
                                                            "arguments.py asserts");
  // Pipeline sends overlapped with compute in the interleaved schedule unless turned off;
  // arguments.py turns overlap_p2p_comm off for every other schedule, whose sends block (what
  // an unset ParallelConfig::pp_comm_overlap prices).
  if (a.has("--no-overlap-p2p-communication") && p.schedule == Schedule::interleaved) p.pp_comm_overlap = false;
  if (a.has("--use-distributed-optimizer")) p.zero = 1;
  if (a.has("--use-megatron-fsdp")) {
    const std::string s = get_str(a, "--data-parallel-sharding-strategy", "optim_grads_params");
    if (s != "optim_grads" && s != "optim_grads_params")
      return make_error(a.where + ": --data-parallel-sharding-strategy", "must be optim_grads or optim_grads_params (got " + s + ")");
    p.zero = s == "optim_grads" ? 2 : 3;
    // Megatron-FSDP overlaps its parameter all-gathers with compute itself (its README,
    // "Communication Overlapping"), ZeRO-2's gather of the updated weights included.
    if (p.zero == 2) p.overlap_param_gather = true;
    p.overlap_grad_reduce = true;  // and its gradient reduce-scatters with the backward (the same README)
  }
  const std::string rg = get_str(a, "--recompute-granularity", "");
  if (rg == "selective") p.recompute = Recompute::selective;
  else if (rg == "full") p.recompute = Recompute::full;
  else if (!rg.empty()) return make_error(a.where + ": --recompute-granularity", "must be selective or full (got " + rg + ")");
  if (p.recompute == Recompute::full) {
    // uniform with groups of 1 layer: every layer; block: each chunk's first N layers
    // (ParallelConfig::recompute_layers). uniform groups of N > 1 hold N layers' activations at
    // once in backward, which loom does not price.
    const std::string method = get_str(a, "--recompute-method", "uniform");
    int64_t n = 1;
    if (auto st = get_int(a, "--recompute-num-layers", n, limits::kLayers); !st) return st;
    if (method == "block") p.recompute_layers = block_layers(a, m, p, n);
    else if (method != "uniform" || n != 1)
      return make_error(a.where + ": --recompute-method", "loom prices full recompute of every layer (uniform, 1 layer) "
                                                          "or of each chunk's first N (block, N layers)");
  }
  if (a.has("--use-tp-pp-dp-mapping")) p.order = "tp-pp-dp";
  return read_offload(a, p);
}

Status read_train(MegatronArgs& a, TrainSpec& t) {
  if (a.has("--fp16")) return ok_status();  // refused in refuse_unpriced
  t.dtype = a.has("--bf16") ? Dtype::bf16 : Dtype::fp32;
  // Gradients are reduced in fp32 unless --grad-reduce-in-bf16 (arguments.py).
  t.grad_dtype = a.has("--grad-reduce-in-bf16") ? Dtype::bf16 : Dtype::fp32;
  // Gradient accumulation fusion (the weight-gradient GEMM adds into main_grad) unless turned off.
  t.grad_accumulation = a.has("--no-gradient-accumulation-fusion") ? GradAccumulation::separate : GradAccumulation::fused;
  a.used.insert("--accumulate-allreduce-grads-in-fp32");
  const std::string backend = get_str(a, "--attention-backend", "auto");
  t.attention = backend == "unfused" ? Attention::unfused : Attention::fused;
  // --ddp-bucket-size (elements); absent: Megatron-core's default for the dp, max(40e6, 1e6 x dp)
  // (dp_bucket_bytes_for).
  int64_t elements = 0;
  if (auto st = get_int(a, "--ddp-bucket-size", elements, limits::kBytes / 4); !st) return st;
  t.dp_bucket_bytes = elements * dtype_bytes(t.grad_dtype);
  return ok_status();
}

// FP8 (sim/fp8.hpp; what planner/export_fp8.hpp writes): --fp8-format hybrid or e4m3 (the same
// GEMMs; the formats differ in range, not in time) with --bf16, under Transformer Engine's
// delayed per-tensor scaling (--fp8-recipe delayed, the default) or current per-tensor scaling
// (--fp8-recipe tensorwise: Fp8Recipe::tensorwise). The amax history and its reduction are
// read as given: loom prices any of them the same. mxfp8 and blockwise scale blocks of a
// tensor, which loom does not price.
Status read_fp8(MegatronArgs& a, TrainSpec& t) {
  for (const char* f : {"--fp8-amax-history-len", "--fp8-amax-compute-algo"}) a.used.insert(f);
  if (!a.has("--fp8-format")) return ok_status();
  const std::string format = a.values["--fp8-format"], recipe = get_str(a, "--fp8-recipe", "delayed");
  if (format != "hybrid" && format != "e4m3")
    return make_error(a.where + ": --fp8-format", "must be hybrid or e4m3 (got " + format + ")");
  if (recipe != "delayed" && recipe != "tensorwise")
    return make_error(a.where + ": --fp8-recipe",
                      "loom prices per-tensor scaling only, delayed or tensorwise (got " + recipe + ")");
  if (t.dtype != Dtype::bf16) return make_error(a.where + ": --fp8-format", "FP8 training needs --bf16 beside it");
  t.fp8 = true;
  t.fp8_recipe = recipe == "tensorwise" ? Fp8Recipe::tensorwise : Fp8Recipe::delayed;
  t.fp8_param_gather = a.has("--fp8-param-gather");
  return ok_status();
}

// Multi-head latent attention (sim/mla.hpp; what planner/export.cpp writes): with
// --multi-latent-attention, --q-lora-rank (default None: a direct q projection), --kv-lora-rank
// (32), --qk-head-dim (128, the no-RoPE part), --qk-pos-emb-head-dim (64), --v-head-dim (128),
// arguments.py's defaults. Without it the five are unused by Megatron-LM and stay unread.
Status read_mla(MegatronArgs& a, ModelSpec& m) {
  if (!a.has("--multi-latent-attention")) return ok_status();
  a.used.insert("--multi-latent-attention");
  m.kv_lora_rank = 32, m.qk_nope_head_dim = 128, m.qk_rope_head_dim = 64, m.v_head_dim = 128;
  Status st = get_int(a, "--q-lora-rank", m.q_lora_rank, limits::kHidden);
  if (st) st = get_int(a, "--kv-lora-rank", m.kv_lora_rank, limits::kHidden);
  if (st) st = get_int(a, "--qk-head-dim", m.qk_nope_head_dim, limits::kHidden);
  if (st) st = get_int(a, "--qk-pos-emb-head-dim", m.qk_rope_head_dim, limits::kHidden);
  if (st) st = get_int(a, "--v-head-dim", m.v_head_dim, limits::kHidden);
  if (!st) return st;
  m.kv_heads = m.heads;  // --num-query-groups has no meaning for latent attention
  static const std::pair<const char*, const char*> flags[] = {
      {"q_lora_rank", "--q-lora-rank"}, {"kv_lora_rank", "--kv-lora-rank"}, {"qk_nope_head_dim", "--qk-head-dim"},
      {"qk_rope_head_dim", "--qk-pos-emb-head-dim"}, {"v_head_dim", "--v-head-dim"}};
  return check_mla_model(m, [&a](const std::string& field) {
    for (auto [f, flag] : flags)
      if (field == f) return a.where + ": " + flag;
    return a.where + ": --multi-latent-attention";
  });
}

// Flags that change the parameters, the FLOPs or the parallel layout in ways loom does not price.
Status refuse_unpriced(MegatronArgs& a) {
  static const std::vector<std::pair<std::string, std::string>> refused{
      {"--fp16", "fp16 with loss scaling is not modelled (bf16 or fp32)"},
      {"--squared-relu", "loom prices GeLU or SwiGLU MLPs"}};
  for (const auto& [flag, why] : refused) {
    if (!a.values.count(flag)) continue;
    const std::string& v = a.values[flag];
    return make_error(a.where + ": " + flag, why + (v.empty() ? std::string() : " (got " + v + ")"));
  }
  return ok_status();
}

}  // namespace

Expected<Plan> plan_from_megatron(const ImportOptions& o) {
  auto text = read_text_file(o.path);
  if (!text) return text.error();
  auto a = tokenize(*text, o.path);
  if (!a) return a.error();
  if (auto st = check_switches(*a); !st) return st.error();
  if (auto st = refuse_unpriced(*a); !st) return st.error();
  Plan plan;
  plan.model.name = "megatron:" + o.path;
  plan.model.source = "imported from " + o.path;
  if (auto st = read_family(*a, plan.model); !st) return st.error();
  if (auto st = read_shape(*a, plan.model, plan.train); !st) return st.error();
  if (auto st = read_mla(*a, plan.model); !st) return st.error();
  if (auto st = read_parallel(*a, plan.model, plan.train, plan.parallel); !st) return st.error();
  if (auto st = read_moe(*a, plan.model, plan.train, plan.parallel); !st) return st.error();
  if (auto st = read_train(*a, plan.train); !st) return st.error();
  if (auto st = read_fp8(*a, plan.train); !st) return st.error();
  // Read but priced the same either way: data and checkpoint settings, and loom's own
  // vocabulary padding (to a multiple of tp).
  for (auto* f : {"--tokenizer-type", "--mock-data", "--padded-vocab-size", "--ckpt-format"})
    a->used.insert(f);
  auto c = import_cluster(o);
  if (!c) return c.error();
  plan.cluster = *c;
  auto& p = plan.parallel;
  if (*o.gpus % (p.tp * p.pp) != 0 || (*o.gpus / (p.tp * p.pp)) % p.cp != 0)
    return make_error("--gpus", "must be a multiple of tp x pp x cp = " + std::to_string(p.tp * p.pp) + " x " +
                                    std::to_string(p.cp));
  p.dp = *o.gpus / (p.tp * p.pp) / p.cp;  // Megatron: dp = WORLD_SIZE / (tp x pp x cp)
  if (dp_cp(p) <= 1) p.overlap_param_gather = false;  // one replica: no weight gather to overlap
  if (dp_cp(p) <= 1) p.overlap_grad_reduce = true;     // nor gradients to reduce: the default stays
  std::vector<std::pair<std::string, std::string>> ignored;
  for (const auto& [flag, v] : a->values)
    if (!a->used.count(flag)) ignored.emplace_back(flag, v);
  print_ignored(o.path, ignored);
  auto st = validate_config(plan.model, plan.cluster, plan.train, p, [&](const std::string& f) { return o.path + ": " + f; });
  if (!st) return st.error();
  return plan;
}

Expected<ClusterSpec> import_cluster(const ImportOptions& o) {
  if (o.cluster.empty()) return make_error("--cluster", "is required");
  if (!o.gpus) return make_error("--gpus", "is required");
  auto c = load_cluster(o.cluster, "--cluster");
  if (!c) return c.error();
  if (auto st = size_cluster(*c, *o.gpus, "--gpus"); !st) return st.error();
  return c;
}

void print_ignored(const std::string& path, const std::vector<std::pair<std::string, std::string>>& keys) {
  for (const auto& [key, v] : keys)
    fmt::print(stderr, "loom: {}: {}{}: ignored (not a model, parallel or precision setting loom prices)\n", path, key,
               v.empty() ? "" : " " + v);
}

namespace {

// The options each engine's file already holds are refused on the command line, so a value is
// never given twice; the ones it lacks are required.
Status check_engine_flags(const ImportOptions& o) {
  const bool deepspeed = o.engine == "deepspeed";
  auto refuse = [&](const char* flag, bool given, const char* holder) -> Status {
    if (!given) return ok_status();
    return make_error(flag, std::string("not for ") + o.engine + " (" + holder + ")");
  };
  Status st = ok_status();
  if (o.engine == "megatron") st = refuse("--model", !o.model.empty(), "the launch names the model's shape");
  if (st && !deepspeed) st = refuse("--seq", o.seq.has_value(), "the file names the sequence length");
  if (st && !deepspeed) st = refuse("--tp", o.tp.has_value(), "the file names it");
  if (st && !deepspeed) st = refuse("--pp", o.pp.has_value(), "the file names it");
  if (st && !deepspeed) st = refuse("--recompute", !o.recompute.empty(), "the file names it");
  if (st && deepspeed && o.model.empty())
    return make_error("--model", "is required for deepspeed (a DeepSpeed config does not describe the model)");
  return st;
}

Expected<Plan> import_plan(const ImportOptions& o) {
  if (auto st = check_engine_flags(o); !st) return st.error();
  if (o.engine == "torchtitan") return plan_from_torchtitan(o);
  if (o.engine == "deepspeed") return plan_from_deepspeed(o);
  return plan_from_megatron(o);
}

int run_import(const ImportOptions& o) {
  auto plan = import_plan(o);
  if (!plan) return fail(plan.error());
  plan->prediction = CostModel(plan->model, plan->cluster, plan->train).evaluate(plan->parallel);
  if (!o.out_path.empty()) {
    auto st = write_text_file_atomic(o.out_path, plan_to_json(*plan).dump(2) + "\n");
    if (!st) return fail(st.error());
  }
  std::optional<BestComparison> best;
  if (o.compare_best) {
    auto b = compare_with_best(*plan);
    if (!b) return fail(b.error());
    best = std::move(*b);
  }
  if (o.json) fmt::print("{}\n", (best ? best->json : estimate_to_json(plan->prediction)).dump(2));
  else fmt::print("{}{}", full_report(plan->prediction, plan->cluster), best ? "\n" + best->text : "");
  return 0;
}

}  // namespace

void add_import(CLI::App& app, Run& run) {
  auto o = std::make_shared<ImportOptions>();
  auto* cmd = app.add_subcommand(
      "import", "an existing launch or config as a priced plan: `loom import megatron|torchtitan|deepspeed FILE`");
  cmd->add_option("engine", o->engine, "the engine the file is for")
      ->required()
      ->check(CLI::IsMember({"megatron", "torchtitan", "deepspeed"}));
  cmd->add_option("file", o->path,
                  "megatron: the pretrain_gpt.py argument list or launch script; torchtitan: the job TOML; "
                  "deepspeed: the ds_config JSON")
      ->required();
  cmd->add_option("--cluster", o->cluster, "cluster (zoo name or JSON file)")->required();
  cmd->add_option("--gpus", o->gpus, "GPUs the job runs on (dp = gpus / (tp x pp))")
      ->required()
      ->transform(Integer(1, limits::kGpus));
  cmd->add_option("--model", o->model,
                  "deepspeed (required): the model; torchtitan: the model of a flavor loom does not know (zoo name, "
                  "loom model file or Hugging Face config.json)");
  cmd->add_option("--seq", o->seq, "deepspeed: tokens per sequence (default: the model's)")->transform(Integer(1, limits::kSeq));
  cmd->add_option("--tp", o->tp, "deepspeed: tensor-parallel size of the model code (default tensor_parallel.autotp_size, or 1)")
      ->transform(Integer(1, limits::kGpus));
  cmd->add_option("--pp", o->pp, "deepspeed: PipelineModule's num_stages (default 1)")->transform(Integer(1, limits::kGpus));
  cmd->add_option("--recompute", o->recompute,
                  "deepspeed without pp: the activation recompute the model code does (default none)")
      ->check(CLI::IsMember(recompute_names()));
  cmd->add_option("-o,--out", o->out_path, "write the configuration and prediction as a plan.json");
  cmd->add_flag("--compare-best", o->compare_best,
                "also run `loom plan`'s search for the same model, cluster, GPUs and batch, and say how and why its "
                "best differs");
  cmd->add_flag("--json", o->json, "print the prediction as JSON (with --compare-best: {imported, best, speedup})");
  cmd->callback([o, &run] { run = [o] { return run_import(*o); }; });
}

}  // namespace loom::cli
