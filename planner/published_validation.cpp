#include "planner/published_validation.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <sstream>

#include "planner/search.hpp"
#include "sim/context_parallel.hpp"
#include "sim/cost_model.hpp"
#include "sim/fp8.hpp"
#include "sim/spec_json.hpp"
#include "sim/simulator.hpp"
#include "sim/stage_split.hpp"
#include "sim/validate.hpp"
#include "sim/validation.hpp"
#include "sim/zoo.hpp"

namespace loom {

// ---- reading ---------------------------------------------------------------------------

namespace {

std::string itos(int64_t v) { return std::to_string(v); }

std::vector<std::string> split(const std::string& line, const std::string& sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t at = line.find(sep, start);
    out.push_back(line.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return out;
    start = at + sep.size();
  }
}

// The first error among fields read together (none: all were read).
template <class... E>
std::optional<Error> first_error(const E&... e) {
  std::optional<Error> out;
  ((!out && !e.ok() ? (void)(out = e.error()) : (void)0), ...);
  return out;
}

std::string where(const CsvTable& t, const CsvRow& r, const std::string& column) {
  return t.path + ":" + itos(r.line) + ": " + column;
}

}  // namespace

Expected<CsvTable> parse_published_csv(const std::string& text, const std::string& path) {
  CsvTable t;
  t.path = path;
  std::istringstream in(text);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string at = path + ":" + itos(n);
    if (line.find('"') != std::string::npos)
      return make_error(at, "quoted fields are not supported (got " + line + ")");
    std::vector<std::string> fields = split(line, ",");
    if (t.header.empty()) {
      t.header = std::move(fields);
      t.header_line = n;
    } else if (fields != t.header) {  // a repeated header opens a second section: skipped
      if (fields.size() != t.header.size())
        return make_error(at, "must have " + itos(static_cast<int64_t>(t.header.size())) + " fields as the header on line " +
                                  itos(t.header_line) + " has (got " + itos(static_cast<int64_t>(fields.size())) + ")");
      t.rows.push_back({n, std::move(fields)});
    }
  }
  if (t.header.empty()) return make_error(path, "holds no header line (every line is blank or a '#' comment)");
  return t;
}

Expected<CsvTable> read_published_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path, "cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_published_csv(ss.str(), path);
}

Expected<std::string> text_field(const CsvTable& t, const CsvRow& r, const std::string& column) {
  for (size_t i = 0; i < t.header.size(); ++i)
    if (t.header[i] == column) return r.fields[i];
  return make_error(t.path + ":" + itos(t.header_line), "the header has no column \"" + column + "\"");
}

namespace {

Expected<PublishedNumber> parse_number(const std::string& text, const std::string& at) {
  PublishedNumber v;
  std::string x = text;
  if (!x.empty() && x.front() == '~') v.approximate = true, x.erase(0, 1);
  if (!x.empty() && x.back() == '*') v.footnote = true, x.pop_back();
  double d = 0;
  const auto [end, ec] = std::from_chars(x.data(), x.data() + x.size(), d, std::chars_format::fixed);
  if (x.empty() || ec != std::errc() || end != x.data() + x.size() || !std::isfinite(d) || !(d > 0))
    return make_error(at, "must be a positive decimal number, optionally marked ~ (approximate) or * (footnote) (got \"" +
                              text + "\")");
  v.value = d;
  return v;
}

}  // namespace

Expected<PublishedNumber> number_field(const CsvTable& t, const CsvRow& r, const std::string& column) {
  auto text = text_field(t, r, column);
  if (!text) return text.error();
  return parse_number(*text, where(t, r, column));
}

Expected<int64_t> count_field(const CsvTable& t, const CsvRow& r, const std::string& column, int64_t min) {
  auto text = text_field(t, r, column);
  if (!text) return text.error();
  std::string x = *text;
  if (!x.empty() && x.back() == '*') x.pop_back();  // a footnote marker
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(x.data(), x.data() + x.size(), v);
  if (x.empty() || ec != std::errc() || end != x.data() + x.size() || v < min || v > limits::kGlobalBatch)
    return make_error(where(t, r, column), "must be a whole number in [" + itos(min) + ", " + itos(limits::kGlobalBatch) +
                                               "] (got \"" + *text + "\")");
  return v;
}

// ---- the FLOP convention -----------------------------------------------------------------

FlopCount narayanan_flops(int64_t batch, int64_t seq, int64_t layers, int64_t hidden, int64_t vocab) {
  const FlopCount B = batch, S = seq, l = layers, h = hidden, V = vocab;
  // 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), multiplied out so that it stays exact.
  return 96 * B * S * l * h * h + 16 * B * S * S * l * h + 6 * B * S * h * V;
}

// ---- reasons -----------------------------------------------------------------------------

const std::vector<Reason>& unexpressible_reasons() {
  static const std::vector<Reason> reasons = {
      {"precision_unstated", "the table does not state the precision (the same setups in the neighbouring releases ran FP8)"},
      {"uneven_chunks",
       "no split of the layers over pp stages of vpp chunks each that loom runs: its uneven stages (--stage-layers, "
       "sim/stage_split.hpp) keep every stage a multiple of vpp but for a short model-end chunk on the first and "
       "last stage"},
      {"recompute_unstated",
       "the table does not state which activations were recomputed, and loom has not read it from the release's code"},
      {"config_unsettled", "the configurations published around the release disagree on what the row ran"},
      {"model_unknown", "the table gives no dimensions for the model and loom's zoo has none"},
      {"gpu_unprofiled",
       "the GPUs are not one loom has a cluster or profile for (torchtitan: H100 96 GB HBM2e, 2.4 TB/s, 500 W limit)"},
      {"compile", "torch.compile's kernel fusion is not modelled"},
      {"selective_op_fp8",
       "torchtitan's per-op selective checkpointing with Float8 GEMMs: torchao's aten._scaled_mm is outside its save "
       "list, which changes what is kept; loom prices per-op checkpointing (--recompute op) with bf16 GEMMs only"},
      {"seq_len_unstated", "the sequence length is not stated"},
      {"metric_unstated", "the column is labelled tokens/sec only: per GPU is an inference"},
      {"llmc_recompute", "llm.c's -r recomputes GeLU (1) or GeLU and LayerNorm (2): not a policy loom models"},
      {"scheme_unknown", "the row's parallel scheme is neither PTD-P nor ZeRO-3 without model parallelism"},
      {"experiment_unknown", "the row's experiment names no recompute and sequence-parallel setting loom knows"},
      {"config_rejected", "loom's configuration rules reject the row's configuration (the detail says which)"},
  };
  return reasons;
}

namespace {

// Every id given here is one of unexpressible_reasons() (tests/test_published_validation.cpp
// checks the ids of every row of the committed tables).
UnexpressedRow unexpressed(std::string label, int64_t line, std::vector<std::string> ids, std::string detail = "") {
  return UnexpressedRow{std::move(label), line, std::move(ids), std::move(detail)};
}

// ---- pricing: the path `loom predict` takes -----------------------------------------------

std::string describe(const ParallelConfig& p) {
  std::string d = "dp " + itos(p.dp) + " tp " + itos(p.tp) + " pp " + itos(p.pp) + " zero " + itos(p.zero) + " mb " +
                  itos(p.micro_batch) + " " + to_string(p.schedule);
  if (p.vpp > 1) d += " vpp " + itos(p.vpp);
  d += " rc " + to_string(p.recompute);
  if (p.recompute_layers > 0) d += " block " + itos(p.recompute_layers);  // each chunk's first N layers
  if (p.recompute_every > 0) d += " every " + itos(p.recompute_every);     // each chunk's K-th layers
  if (p.sp) d += " sp";
  if (p.zero >= 3 && p.zero3_gather == Zero3Gather::tensor) d += " gather per tensor";
  if (!p.overlap_grad_reduce && dp_cp(p) > 1) d += " ogr off";  // the gradient reduction after the backward
  return d;
}

Expected<ModelSpec> zoo_model(const std::string& name) {
  std::vector<std::string> ignored;
  return load_model(name, "--published", &ignored);
}

Expected<ClusterSpec> sized_cluster(const std::string& name, int64_t gpus) {
  auto c = load_cluster(name, "--published");
  if (!c) return c.error();
  if (auto st = size_cluster(*c, gpus, "--published: " + name); !st) return st.error();
  return c;
}

// bf16 weights and 16-bit gradients; the gradient bucket is Megatron-core's 40e6 elements
// (DistributedDataParallelConfig.bucket_size), as `loom predict` defaults it.
TrainSpec train_of(int64_t global_batch, int64_t seq, Attention a, CrossEntropy ce) {
  TrainSpec t;
  t.global_batch = global_batch;
  t.seq = seq;
  t.dtype = Dtype::bf16;
  t.grad_dtype = Dtype::bf16;
  t.attention = a;
  t.cross_entropy = ce;
  t.dp_bucket_bytes = 0;  // Megatron-core's default bucket for the row's dp (dp_bucket_bytes_for)
  return t;
}

// validate_config, then CostModel::evaluate: what `loom predict` runs.
Expected<Estimate> predict(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p) {
  auto st = validate_config(m, c, t, p, [](const std::string& f) { return f; });
  if (!st) return st.error();
  return CostModel(m, c, t).evaluate(p);
}

std::string fit_note(const Estimate& e) { return e.fits ? "" : "loom's memory model: " + e.reason; }

// The event simulator's step for the configuration `e` priced, against `e`'s analytical step:
// (simulated / analytical - 1) x 100 (what `loom plan` re-ranks by; the two should agree).
std::optional<double> sim_vs_analytical_pct(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                                            const Estimate& e) {
  SimOptions o;
  o.keep_tasks = false;
  auto r = simulate(CostModel(m, c, t), e.parallel, o);
  if (!r || e.step_time_s <= 0) return std::nullopt;
  return (r->step_time_s / e.step_time_s - 1) * 100;
}

}  // namespace

// ---- 02: Megatron-LM PTD-P against ZeRO-3 (Narayanan et al. 2021, Table 2) ----------------

namespace {

struct Row02 {
  std::string scheme, label;
  double params_b = 0;
  int64_t mp = 0, global_batch = 0, gpus = 0, micro_batch = 0;
  PublishedNumber tflops;
};

Expected<Row02> parse_02(const CsvTable& t, const CsvRow& r) {
  Row02 x;
  auto scheme = text_field(t, r, "scheme");
  auto params = number_field(t, r, "params_billion");
  auto mp = count_field(t, r, "model_parallel_size");
  auto gbs = count_field(t, r, "global_batch_size");
  auto gpus = count_field(t, r, "num_gpus");
  auto mb = count_field(t, r, "microbatch_size");
  auto tflops = number_field(t, r, "achieved_tflops_per_gpu");
  if (auto e = first_error(scheme, params, mp, gbs, gpus, mb, tflops)) return *e;
  x = Row02{*scheme, "", params->value, *mp, *gbs, *gpus, *mb, *tflops};
  std::ostringstream label;
  label << *scheme << " " << params->value << "B " << *gpus << " GPUs";
  x.label = label.str();
  return x;
}

// The table's models: GPT-3 175B (174.6B counted by the paper's eq. 2) and the 530B model of
// its Table 1, both with the vocabulary 51200 and sequence 2048 the table's header states.
Expected<std::optional<ModelSpec>> model_02(double params_b) {
  const char* name = std::abs(params_b - 174.6) < 0.05   ? "gpt3-175b"
                     : std::abs(params_b - 529.6) < 0.05 ? "megatron-529.6b"
                                                         : nullptr;
  if (!name) return std::optional<ModelSpec>{};
  auto m = zoo_model(name);
  if (!m) return m.error();
  m->vocab = 51200;
  m->seq_len = 2048;
  return std::optional<ModelSpec>{*m};
}

// PTD-P: the table gives t x p only. The split is the paper's own rule (Sec. 3.3, Takeaway #1:
// "tensor model parallelism should generally be used up to degree g when using g-GPU servers,
// and then pipeline model parallelism can be used to scale up to larger models across
// servers"): t the largest divisor of t x p up to the GPUs of a node, p the rest, as in every
// multi-node row of its Table 1 (t 8; 530B's t x p 280 is Table 1's t 8, p 35). The
// planner's fastest configuration with that split (dp = GPUs / (t x p)) is taken, vpp and
// schedule searched. Megatron-LM 2021 settings are pinned: the published micro-batch, no ZeRO
// (no distributed optimizer yet), full recompute, no sequence parallelism (2022), 16-bit
// gradients, Megatron's rank order, and the schedules it offered, 1F1B and interleaved 1F1B
// (the faster of the two searches is taken).
int64_t takeaway_one_tp(int64_t model_parallel, int64_t gpus_per_node) {
  int64_t t = std::min(model_parallel, gpus_per_node);
  while (t > 1 && model_parallel % t != 0) --t;
  return std::max<int64_t>(1, t);
}
Expected<Estimate> ptdp_search(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const Row02& x,
                               Schedule schedule) {
  SearchPins pins;
  pins.dp = x.gpus / x.mp;
  pins.tp = takeaway_one_tp(x.mp, c.gpus_per_node);
  pins.pp = x.mp / *pins.tp;
  pins.micro_batch = x.micro_batch;
  pins.zero = 0;
  pins.recompute = Recompute::full;
  pins.sp = false;
  pins.grad_dtype = Dtype::bf16;
  pins.order = "tp-dp-pp";
  pins.schedule = schedule;
  pins.pp_comm_overlap = false;
  pins.overlap_grad_reduce = false;  // local DDP: allreduce_gradients after forward_backward
  pins.dp_bucket_bytes = t.dp_bucket_bytes;
  auto space = make_search_space(m, c, t, pins);
  if (!space) return space.error();
  SearchOptions o;
  o.top_k = 1;
  const SearchResult r = search(m, c, *space, o);
  if (!r.top.empty()) return r.top.front();
  std::string why;
  for (const auto& [key, n] : r.rejected) why += (why.empty() ? "" : "; ") + key + " (" + itos(n) + ")";
  return make_error("t x p = " + itos(x.mp) + ", " + to_string(schedule), "no configuration is valid and fits memory: " + why);
}

Expected<Estimate> ptdp_estimate(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const Row02& x) {
  if (x.gpus % x.mp != 0)
    return make_error("num_gpus", "must be a multiple of model_parallel_size (" + itos(x.gpus) + " % " + itos(x.mp) + ")");
  auto plain = ptdp_search(m, c, t, x, Schedule::one_f_one_b);
  auto interleaved = ptdp_search(m, c, t, x, Schedule::interleaved);
  if (!plain) return interleaved ? interleaved : plain;
  if (interleaved && interleaved->step_time_s < plain->step_time_s) return interleaved;
  return plain;
}

// ZeRO-3 as DeepSpeed ran it when the paper was written (v0.3.15, 2c2a7f31bcc2, 2021-04-19):
// partition_parameters.py's _allgather_param all-gathers each parameter tensor on its own
// after torch.cuda.synchronize(), and stage3.py's fetch_sub_module waits for them
// (_synchronize_communication), so gathers do not overlap compute; gradients are
// reduce-scattered tensor by tensor (_reduce_scatter_gradient) and the next fetch's
// synchronize waits for those too. Hence Zero3Gather::tensor.
Expected<Estimate> zero3_estimate(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const Row02& x) {
  ParallelConfig p;
  p.dp = x.gpus;
  p.zero = 3;
  p.zero3_gather = Zero3Gather::tensor;
  p.micro_batch = x.micro_batch;
  p.recompute = Recompute::full;
  return predict(m, c, t, p);
}

Expected<std::optional<PublishedPoint>> point_02(const Row02& x, const CsvRow& r, TableResult& out) {
  auto m = model_02(x.params_b);
  if (!m) return m.error();
  if (!*m) {
    out.unexpressed.push_back(unexpressed(x.label, r.line, {"model_unknown"}));
    return std::optional<PublishedPoint>{};
  }
  const bool ptdp = x.scheme == "PTD-P", zero3 = x.scheme == "ZeRO-3 no MP" && x.mp == 1;
  if (!ptdp && !zero3) {
    out.unexpressed.push_back(unexpressed(x.label, r.line, {"scheme_unknown"}, x.scheme));
    return std::optional<PublishedPoint>{};
  }
  auto c = sized_cluster("dgx-a100", x.gpus);
  if (!c) return c.error();
  // Megatron-LM 2021 computes attention with batched GEMMs and a fused softmax that keeps
  // the s^2 scores (FlashAttention came in 2022) and the vocab-parallel cross-entropy.
  TrainSpec t = train_of(x.global_batch, 2048, Attention::unfused, CrossEntropy::unfused);
  // Neither engine had gradient accumulation fusion: each micro-batch's gradients are added by
  // a kernel of their own (GradAccumulation::separate; Megatron-LM at the paper's commit, f938e19,
  // megatron/model/distributed.py, or autograd's AccumulateGrad without contiguous buffers).
  t.grad_accumulation = GradAccumulation::separate;
  // Nor the asynchronous tensor-parallel backward (megatron/mpu/layers.py at f938e19 has none;
  // LinearWithGradAccumulationAndAsyncAllreduce came in 2022): its collectives run in-line.
  t.tp_backward_overlap = false;
  // Pipeline transfers scattered over the tp ranks and gathered again by the receiver
  // (megatron/p2p_communication.py at f938e19: scatter_gather_tensors_in_pipeline, on by default).
  t.pp_scatter_gather = true;
  auto e = ptdp ? ptdp_estimate(**m, *c, t, x) : zero3_estimate(**m, *c, t, x);
  if (!e) {
    out.unexpressed.push_back(unexpressed(x.label, r.line, {"config_rejected"}, e.error().message));
    return std::optional<PublishedPoint>{};
  }
  const ModelSpec& mm = **m;
  const double flops = static_cast<double>(narayanan_flops(x.global_batch, 2048, mm.layers, mm.hidden, mm.vocab));
  PublishedPoint p{x.label, r.line, "TFLOP/s per GPU", x.tflops.value,
                   flops / (static_cast<double>(x.gpus) * e->step_time_s) / 1e12, x.tflops.approximate,
                   describe(e->parallel), fit_note(*e)};
  p.sim_vs_analytical_pct = sim_vs_analytical_pct(mm, *c, t, *e);
  return std::optional<PublishedPoint>{p};
}

Status table_02(const CsvTable& t, TableResult& out) {
  out.title = "Megatron-LM PTD-P against ZeRO-3, GPT-3 175B and 530B on 384-2240 A100s (Narayanan et al. 2021, Table 2)";
  out.metric = "achieved TFLOP/s per GPU, FLOPs counted by Narayanan et al. eq. 3 (full s^2 attention, with the "
               "recomputed forward)";
  out.rules = {
      "cluster dgx-a100 (A100 80GB, NVSwitch, 8 HDR NICs per node: Selene's layout); GPT-3 175B (zoo gpt3-175b) and "
      "530B (zoo megatron-529.6b), vocab 51200 and seq 2048 as the table's header states",
      "PTD-P: the table gives only model_parallel_size = t x p; the split is the paper's Takeaway #1 (Sec. 3.3: "
      "tensor parallelism up to the GPUs of a server, pipeline across servers, as in every multi-node row of its "
      "Table 1): t 8, p = size / 8 (175B: t 8 p 12; 530B: t 8 p 35, Table 1's split), dp = GPUs / size; loom takes "
      "the planner's fastest configuration with that split, vpp and schedule searched (1F1B or interleaved 1F1B, "
      "Megatron-LM 2021 had no other); pinned: the published micro-batch, ZeRO 0, full recompute, no SP, 16-bit "
      "gradients, order tp-dp-pp",
      "ZeRO-3 no MP: dp = GPUs, tp = pp = 1, ZeRO-3, the published micro-batch, gathers per tensor (zero3_gather "
      "tensor): DeepSpeed's stage 3 at the paper's time (v0.3.15, commit 2c2a7f31bcc2, 2021-04-19): "
      "partition_parameters.py _allgather_param runs one all-gather per parameter tensor after torch.cuda.synchronize() "
      "and stage3.py fetch_sub_module waits for it, so no gather overlaps compute; gradients are reduce-scattered per "
      "tensor (_reduce_scatter_gradient), waited for by the next fetch; 12 tensors per GPT layer, gathered in forward, "
      "again for the recompute in backward, and a third time for the backward itself where the recompute released "
      "them: a module's parameters are kept only when reused within stage3_max_reuse_distance (default 1e9) "
      "elements, and at h 12288 and 20480 only fc2 is (10 of 12 tensors gathered again); the one tensor stage3.py "
      "prefetches while a sub-module computes (prefetch_next_sub_modules) is not credited",
      "recompute full in every row: the paper's TFLOP/s counts the recomputed forward pass (eq. 3)",
      "attention unfused and cross-entropy unfused (Megatron-LM 2021: no FlashAttention, vocab-parallel loss)",
      "the paper's fp16 mixed precision is priced as bf16: the same bytes and the same A100 peak (312 TFLOP/s)",
      "gradients accumulated over micro-batches by a separate add (grad_accumulation separate): Megatron-LM at the "
      "paper's time (commit f938e19, 2021-04) had no gradient accumulation fusion; its DDP adds each micro-batch's "
      "gradient into the accumulated one (megatron/model/distributed.py, param.main_grad.add_), as autograd does "
      "without contiguous buffers",
      "tensor-parallel backward collectives in-line (tp_backward_overlap off): the asynchronous all-reduce beside the "
      "weight-gradient GEMM (LinearWithGradAccumulationAndAsyncAllreduce) came to Megatron-LM in 2022; Korthikanti et "
      "al.'s per-layer times (table 06) are priced with it",
      "PTD-P's pipeline sends block their sender (pp_comm_overlap off) and are scattered over the tp ranks "
      "(pp_scatter_gather on): megatron/p2p_communication.py at f938e19 waits on each batch_isend_irecv and then "
      "torch.cuda.synchronize(), and with scatter_gather_tensors_in_pipeline (on unless --no-scatter-gather-tensors-"
      "in-pipeline) each tp rank sends 1/t of the tensor and the receiver all-gathers it over its tp group "
      "(mpu.gather_split_1d_tensor); overlap_p2p_comm came to Megatron-core's interleaved schedule later",
      "PTD-P's data-parallel gradient all-reduce after the backward (overlap_grad_reduce off): megatron/training.py "
      "train_step at f938e19 calls each model's allreduce_gradients once forward_backward_func has returned "
      "(--DDP-impl local, the default)",
      "predicted TFLOP/s per GPU = eq. 3 FLOPs / (GPUs x predicted step time); \"2560*\": the footnoted row ran "
      "global batch 2560 on 640 GPUs, as written",
  };
  for (const CsvRow& r : t.rows) {
    auto x = parse_02(t, r);
    if (!x) return x.error();
    auto p = point_02(*x, r, out);
    if (!p) return p.error();
    if (*p) out.points.push_back(**p);
  }
  return ok_status();
}

}  // namespace

// ---- 06: one 22B layer's forward and backward (Korthikanti et al. 2022, Table 4) -----------

namespace {

// The 22B model of Korthikanti et al. 2022 (arXiv 2205.05198) Table 3: 64 heads, hidden 6144,
// 48 layers, run with t 8, p 1 on 8 GPUs, global batch = micro-batch = 4, seq 2048 (also
// transcribed in calculon-ai/calculon examples/22B.json and validation/22B_full.json).
// ffn 4h, vocab 51200, dropout and tied embeddings are Megatron-LM's GPT defaults; the vocab
// does not enter one layer's time.
ModelSpec korthikanti_22b(int64_t layers) {
  ModelSpec m;
  m.name = "megatron-22b";
  m.family = Family::gpt;
  m.layers = layers;
  m.hidden = 6144;
  m.heads = 64;
  m.kv_heads = 64;
  m.ffn_hidden = 4 * 6144;
  m.vocab = 51200;
  m.seq_len = 2048;
  m.tied_embeddings = true;
  m.dropout = true;
  m.source = "Korthikanti et al. 2022, arXiv 2205.05198, Table 3 (22B)";
  return m;
}

struct Setting06 {
  bool sp = false;
  Recompute recompute = Recompute::none;
};

std::optional<Setting06> setting_06(const std::string& experiment) {
  if (experiment == "Baseline no recompute") return Setting06{false, Recompute::none};
  if (experiment == "Sequence Parallelism") return Setting06{true, Recompute::none};
  if (experiment == "Baseline with recompute") return Setting06{false, Recompute::full};
  if (experiment == "Selective Recompute") return Setting06{false, Recompute::selective};
  if (experiment == "Selective + Sequence") return Setting06{true, Recompute::selective};
  return std::nullopt;
}

struct PassTimes {
  double forward_s = 0, backward_s = 0;  // backward: with the recomputed forward
};

// One micro-batch on the single stage, as CostModel::evaluate prices it: compute, and the
// tensor-parallel messages with the pass they follow (on the critical path in the cost model).
Expected<PassTimes> pass_times(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p) {
  auto e = predict(m, c, t, p);
  if (!e) return e.error();
  const StageEstimate& st = e->stages.front();
  return PassTimes{st.forward_s + st.tp_forward_s,
                   st.backward_s + st.recompute_s + st.tp_comm_s - st.tp_forward_s};
}

// One layer = the stage with 48 layers less the stage with 47: the embedding, the loss and
// everything else that is not per layer cancel.
Expected<PassTimes> layer_times(const Setting06& set) {
  auto c = sized_cluster("dgx-a100", 8);
  if (!c) return c.error();
  ParallelConfig p;
  p.tp = 8;
  p.micro_batch = 4;
  p.sp = set.sp;
  p.recompute = set.recompute;
  const TrainSpec t = train_of(4, 2048, Attention::unfused, CrossEntropy::unfused);
  auto all = pass_times(korthikanti_22b(48), *c, t, p);
  if (!all) return all.error();
  auto less = pass_times(korthikanti_22b(47), *c, t, p);
  if (!less) return less.error();
  return PassTimes{all->forward_s - less->forward_s, all->backward_s - less->backward_s};
}

Status table_06(const CsvTable& t, TableResult& out) {
  out.title = "one 22B layer's forward and backward time per recompute variant, A100, t 8 (Korthikanti et al. 2022, "
              "Table 4)";
  out.metric = "per-layer forward and backward ms (backward includes the recomputed forward)";
  out.rules = {
      "22B model of Korthikanti et al. Table 3: 48 layers, hidden 6144, 64 heads, seq 2048; tp 8, pp 1, "
      "micro-batch = global batch = 4 on one dgx-a100 node",
      "one layer = the stage priced with 48 layers less the stage with 47 (CostModel::evaluate both), tensor-parallel "
      "messages counted with the pass they follow",
      "attention unfused (Megatron-LM 2022 keeps the softmax: the 5as/h term of the paper's Table 2)",
  };
  for (const CsvRow& r : t.rows) {
    auto name = text_field(t, r, "experiment");
    if (!name) return name.error();
    auto fwd = number_field(t, r, "forward_ms");
    if (!fwd) return fwd.error();
    auto bwd = number_field(t, r, "backward_ms");
    if (!bwd) return bwd.error();
    const auto set = setting_06(*name);
    if (!set) {
      out.unexpressed.push_back(unexpressed(*name, r.line, {"experiment_unknown"}));
      continue;
    }
    auto lt = layer_times(*set);
    if (!lt) return lt.error();
    ParallelConfig p;
    p.tp = 8, p.micro_batch = 4, p.sp = set->sp, p.recompute = set->recompute;
    out.points.push_back({*name, r.line, "forward ms", fwd->value, lt->forward_s * 1e3, false, describe(p), ""});
    out.points.push_back({*name, r.line, "backward ms", bwd->value, lt->backward_s * 1e3, false, describe(p), ""});
  }
  return ok_status();
}

}  // namespace

// ---- 09: NeMo and Megatron-Bridge H100 performance tables -----------------------------------

namespace {

// Model names of tables 09 and 10 that the zoo holds.
std::optional<std::string> llama_zoo_name(const std::string& model) {
  static const std::map<std::string, std::string> names = {
      {"LLAMA3_8B", "llama3-8b"},        {"LLAMA3-8B", "llama3-8b"},     {"Llama3.1-8B", "llama3-8b"},
      {"Llama3-8B", "llama3-8b"},        {"LLAMA3_70B", "llama3-70b"},   {"LLAMA3-70B", "llama3-70b"},
      {"Llama3.1-70B", "llama3-70b"},    {"Llama3-70B", "llama3-70b"},   {"LLAMA3.1_405B", "llama3-405b"},
      {"Llama3.1-405B", "llama3-405b"},  {"GPT3-175B", "gpt3-175b"},     {"LLAMA2-7B", "llama2-7b"},
      {"LLAMA2-13B", "llama2-13b"},      {"LLAMA2-70B", "llama2-70b"},   {"GPT3-5B", "nemo-gpt3-5b"},
      {"GPT3-20B", "nemo-gpt3-20b"},
  };
  const auto it = names.find(model);
  if (it == names.end()) return std::nullopt;
  return it->second;
}

// Reasons common to the rows of 09 and 10 that name a model: it is unknown, or no split of
// its layers over pp stages of vpp chunks is one loom runs (sim/stage_split.hpp: the even
// split, or an uneven one of whole multiples of vpp per stage but a short first or last chunk).
Status model_reasons(const std::string& model, int64_t pp, int64_t vpp, std::vector<std::string>& ids,
                     std::string& detail) {
  if (pp < 1 || vpp < 1)
    return make_error("pp", "the row's pipeline size and virtual stages must be >= 1 (got pp " + itos(pp) + ", vpp " +
                                itos(vpp) + ")");
  const auto name = llama_zoo_name(model);
  if (!name) {
    ids.push_back("model_unknown");
    detail = model;
    return ok_status();
  }
  auto m = zoo_model(*name);
  if (!m) return m.error();
  const auto splits = stage_split_candidates(m->layers, pp, vpp);
  const bool none = std::all_of(splits.begin(), splits.end(), [](const auto& s) { return s.empty(); });
  if (m->layers % (pp * vpp) != 0 && none) {
    ids.push_back("uneven_chunks");
    detail = itos(m->layers) + " layers on pp " + itos(pp) + " x vpp " + itos(vpp);
  }
  return ok_status();
}

struct Row09 {
  std::string source, model, precision;
  int64_t gpus = 0, gbs = 0, mbs = 0, seq = 0, tp = 0, pp = 0, cp = 0, vp = 1, fsdp = 0;
  PublishedNumber tokens_per_gpu;
};

Expected<Row09> parse_09(const CsvTable& t, const CsvRow& r) {
  Row09 x;
  int64_t* dst[] = {&x.gpus, &x.gbs, &x.mbs, &x.seq, &x.tp, &x.pp, &x.cp};
  const char* cols[] = {"gpus", "gbs", "mbs", "seq_len", "tp", "pp", "cp"};
  for (int i = 0; i < 7; ++i) {
    auto v = count_field(t, r, cols[i], 1);
    if (!v) return v.error();
    *dst[i] = *v;
  }
  auto tokens = number_field(t, r, "tokens_per_sec_per_gpu");
  if (!tokens) return tokens.error();
  x.tokens_per_gpu = *tokens;
  if (auto v = number_field(t, r, "model_tflops_per_gpu"); !v) return v.error();
  auto source = text_field(t, r, "source"), model = text_field(t, r, "model"), precision = text_field(t, r, "precision");
  auto vp = text_field(t, r, "vp"), fsdp = text_field(t, r, "fsdp");
  if (auto e = first_error(source, model, precision, vp, fsdp)) return *e;
  x.source = *source, x.model = *model, x.precision = *precision;
  if (*vp != "n/a") {
    auto v = count_field(t, r, "vp", 1);
    if (!v) return v.error();
    x.vp = *v;
  }
  if (!fsdp->empty()) {
    auto v = count_field(t, r, "fsdp", 0);
    if (!v) return v.error();
    x.fsdp = *v;
  }
  return x;
}

bool megatron_bridge(const Row09& x) { return x.source.rfind("MBridge", 0) == 0; }

// What the code of a row's release says the row ran where the table does not (table_09's rules
// cite it): its recompute ("none"; "block": a full recompute of each chunk's first
// `recompute_layers`; "unsettled": the configurations around the release disagree) and whether
// its cross-entropy was fused. Rows not listed: not looked up.
struct Setup09 {
  std::string recompute;
  bool ce_fused = false;
  int64_t recompute_layers = 0;
};
std::optional<Setup09> setup_09(const Row09& x) {
  if (megatron_bridge(x)) {
    if (x.model == "LLAMA3_70B" || x.model == "LLAMA3.1_405B") return Setup09{"none", true};
    // LLAMA3_8B_H100_FP8_CS_BASE_CONFIG: recompute_num_layers=5, which utils/helpers.py
    // set_recompute_overrides turns into recompute_granularity full, recompute_method block.
    if (x.model == "LLAMA3_8B") return x.source == "MBridge25.09" ? Setup09{"none", true} : Setup09{"block", true, 5};
    return std::nullopt;
  }
  if (x.source != "NeMo24.07") return std::nullopt;
  if (x.model == "LLAMA3-8B" || x.model == "LLAMA3-70B") return Setup09{"none", true};  // fee1762f
  if (x.model.rfind("LLAMA2-", 0) == 0 || x.model == "GPT3-5B" || x.model == "GPT3-20B")  // tag 24.07
    return Setup09{"none", false};
  // GPT-3 175B: the launcher's yaml and script disagree; Nemotron: the table's GPUs, batch and
  // micro-batch appear in no launcher file of the release.
  if (x.model == "GPT3-175B" || x.model.rfind("Nemotron-", 0) == 0) return Setup09{"unsettled", false};
  return std::nullopt;
}

// The reasons a row of 09 cannot be priced; none: it can.
Expected<std::vector<std::string>> reasons_09(const Row09& x, std::string& detail) {
  std::vector<std::string> ids;
  // "FP8": Transformer Engine's delayed scaling at NeMo 24.07, current (tensorwise) scaling in
  // Megatron-Bridge, whose H100 presets are FP8-CS only (table_09's rules); both priced.
  if (x.precision != "BF16" && x.precision != "FP8" && x.precision != "FP8-CS") ids.push_back("precision_unstated");
  if (auto st = model_reasons(x.model, x.pp, x.vp, ids, detail); !st) return st.error();
  const auto set = setup_09(x);
  if (!set) ids.push_back("recompute_unstated");
  if (set && set->recompute == "unsettled") ids.push_back("config_unsettled");
  return ids;
}

// The row as its release's code ran it (table_09's rules), and the simulator's step beside it.
struct Priced09 {
  Estimate e;
  std::optional<double> sim_pct;
};
Expected<Priced09> estimate_09(const Row09& x) {
  auto m = zoo_model(*llama_zoo_name(x.model));
  if (!m) return m.error();
  auto c = sized_cluster("dgx-h100", x.gpus);
  if (!c) return c.error();
  TrainSpec t = train_of(x.gbs, x.seq, Attention::fused, setup_09(x)->ce_fused ? CrossEntropy::fused : CrossEntropy::unfused);
  set_train_dtype(t, "fp8");
  t.fp8_recipe = megatron_bridge(x) ? Fp8Recipe::tensorwise : Fp8Recipe::delayed;
  t.fp8_param_gather = megatron_bridge(x);  // mixed_precision.py: fp8_param_gather True
  ParallelConfig p;
  p.tp = x.tp, p.pp = x.pp, p.cp = x.cp, p.vpp = x.vp;
  if (m->layers % (x.pp * x.vp) != 0) {  // 405B: the embedding and the loss counted as layers
    auto split = megatron_account_split(m->layers, x.pp, x.vp, AccountFor{true, true}, "stage_layers");
    if (!split) return split.error();
    p.stage_layers = *split;
  }
  if (x.gpus % (x.tp * x.pp * x.cp) != 0)
    return make_error("gpus", "must be a multiple of tp x pp x cp (got " + itos(x.gpus) + ")");
  p.dp = x.gpus / (x.tp * x.pp * x.cp);
  p.micro_batch = x.mbs;
  p.schedule = x.vp > 1 ? Schedule::interleaved : Schedule::one_f_one_b;
  if (setup_09(x)->recompute == "block") p.recompute = Recompute::full, p.recompute_layers = setup_09(x)->recompute_layers;
  p.zero = x.fsdp > 0 ? 3 : 1;  // Megatron-FSDP (optim_grads_params) shards as ZeRO-3; else the distributed optimizer
  // llama3_llm_pretrain.py's H100 configs under Megatron-FSDP: gradient_accumulation_fusion False.
  if (p.zero == 3) t.grad_accumulation = GradAccumulation::separate;
  p.overlap_param_gather = p.zero == 1 && p.dp > 1;
  p.sp = p.tp_comm_overlap = x.tp > 1;
  auto e = predict(*m, *c, t, p);
  if (!e) return e.error();
  return Priced09{*e, sim_vs_analytical_pct(*m, *c, t, *e)};
}

std::string describe_09(const Estimate& e, const Row09& x) {
  std::string d = describe(e.parallel);
  if (e.parallel.cp > 1) d += " cp " + itos(e.parallel.cp);
  if (e.parallel.tp_comm_overlap) d += " tpo";
  if (!e.parallel.stage_layers.empty()) d += " stages " + stage_layers_text(e.parallel.stage_layers);
  return d + (megatron_bridge(x) ? " fp8 tensorwise" : " fp8 delayed");
}

Status table_09(const CsvTable& t, TableResult& out) {
  out.title = "NeMo 24.07 and Megatron-Bridge 25.09-26.06 DGX-H100 performance tables";
  out.metric = "tokens/s per GPU";
  out.rules = {
      "no row states its recompute, FP8 recipe or overlaps; the rows priced are those whose release's code says "
      "what ran. NeMo 24.07 (NVIDIA/NeMo-Framework-Launcher launcher_scripts/conf/training/ and examples/training/*/h100/"
      "*_fp8.sh): Llama 2 7B, 13B, 70B and GPT-3 5B, 20B as at tag 24.07 (8325688d; its llama2_70b.yaml has the "
      "table's vp 20), Llama 3 8B and 70B as at fee1762f (2024-08-02, the first commit with the table's vp 5). "
      "Megatron-Bridge (NVIDIA-NeMo/Megatron-Bridge tags v0.1.0rc3, v0.2.0, v0.3.0, v0.3.1, v0.4.0, v0.4.2, v0.5.0 for "
      "25.09 to 26.06, docs/releases/software-versions.md): Llama 3 70B and 3.1 405B (scripts/performance/configs/"
      "llama*/*workload_base_configs.py *_H100_FP8_CS_*, llama3_llm_pretrain.py, utils/overrides.py, the llama3 recipe)",
      "no recompute in any of them (NeMo: activations_checkpoint_granularity null; Megatron-Bridge: "
      "recompute_granularity None), but Megatron-Bridge's 8B preset from 25.11 on, which recomputes the first 5 "
      "layers in full (LLAMA3_8B_H100_FP8_CS_BASE_CONFIG recompute_num_layers 5, which utils/helpers.py "
      "set_recompute_overrides turns into recompute_granularity full, recompute_method block: --recompute-layers 5)",
      "the table's FSDP column as Megatron-FSDP (use_megatron_fsdp, data_parallel_sharding_strategy "
      "optim_grads_params: ZeRO-3 over dp, the 8B rows' 8), which the perf scripts take as an override; "
      "llama3_llm_pretrain.py's H100 configs then turn gradient_accumulation_fusion off (grad_accumulation "
      "separate)",
      "FP8 GEMMs in every linear layer: NeMo 24.07 with Transformer Engine's delayed scaling (fp8_hybrid; amax "
      "history 1024, max; Llama 2 13B and 70B: 1 and most_recent, priced the same), Megatron-Bridge with current "
      "(tensorwise) scaling (bf16_with_fp8_current_scaling_mixed, first_last_layers_bf16 False; its H100 presets are "
      "FP8-CS only, so the 26.02+ \"FP8\" is FP8-CS; 25.09's recipe, delayed or current, is not stated); "
      "Megatron-Bridge stores the FP8 GEMMs' weights in FP8 and gathers them so (fp8_param_gather True: "
      "--fp8-param-gather), NeMo 24.07 keeps them in bf16 (fp8_params absent: False)",
      "the distributed optimizer (NeMo's distributed_fused_adam, Megatron-core's) as ZeRO-1 with the weight gather "
      "overlapped (overlap_param_sync / overlap_param_gather; Megatron-Bridge's overlap with the optimizer step is "
      "priced as under the first forward), 16-bit gradient reduction (grad_sync_dtype bf16, grad_reduce_in_fp32 "
      "False), gradient accumulation fusion, fused attention (Transformer Engine's choice on Hopper, cuDNN); "
      "cross-entropy fused for Llama 3 (cross_entropy_loss_fusion true), unfused for Llama 2 and GPT-3 at tag 24.07 "
      "(the key absent: Megatron-core's default)",
      "sequence parallelism and Transformer Engine's userbuffers overlap (ub_tp_comm_overlap / tp_comm_overlap) where "
      "tp > 1; interleaved 1F1B where vp > 1; dp = GPUs / (tp x pp x cp), the table's GPUs (Llama 2 13B's script "
      "ran 8, the table says 16); rank order tp-dp-pp; vocabularies unpadded; the deferred embedding weight gradient "
      "(defer_embedding_wgrad_compute, NeMo's Llama 3 70B) is not modelled",
      "Llama 3.1 405B (126 layers on pp 8 x vp 8): the embedding and the loss counted as layers "
      "(account_for_embedding_in_pipeline_split and account_for_loss_in_pipeline_split, the llama3 recipe), so stage 0 "
      "and stage 7 hold 15 layers, their model-end chunk 1, the others 16",
      "NeMo 24.07's GPT-3 175B rows are not priced: the launcher's gpt3/175b.yaml and example script around the "
      "release disagree (vp 12 or 6, tensor-parallel overlap on or off, selective recompute or none), and the "
      "512-GPU figure links to an MLPerf configuration that came later; Nemotron's squared-ReLU, layernorm1p and "
      "half-rotary layers are not a model family loom has",
      "predicted tokens/s per GPU = gbs x seq / (GPUs x predicted step time)",
  };
  for (const CsvRow& r : t.rows) {
    auto x = parse_09(t, r);
    if (!x) return x.error();
    std::string detail;
    auto ids = reasons_09(*x, detail);
    if (!ids) return ids.error();
    const std::string label = x->source + " " + x->model + " " + itos(x->gpus) + " GPUs";
    if (!ids->empty()) {
      out.unexpressed.push_back(unexpressed(label, r.line, *ids, detail));
      continue;
    }
    auto e = estimate_09(*x);
    if (!e) {
      out.unexpressed.push_back(unexpressed(label, r.line, {"config_rejected"}, e.error().message));
      continue;
    }
    const double tokens = static_cast<double>(x->gbs * x->seq) / (static_cast<double>(x->gpus) * e->e.step_time_s);
    PublishedPoint pt{label, r.line, "tokens/s per GPU", x->tokens_per_gpu.value, tokens,
                      x->tokens_per_gpu.approximate, describe_09(e->e, *x), fit_note(e->e)};
    pt.sim_vs_analytical_pct = e->sim_pct;
    out.points.push_back(pt);
  }
  return ok_status();
}

// ---- 10: torchtitan Llama 3.1 on H100 ------------------------------------------------------

// The degree of a parallelism in torchtitan's notation ("FSDP8 CP2 TP8 PP8": "PP" -> 8); 1
// when the dimension is not named.
int64_t degree(const std::string& parallelism, const std::string& dim) {
  for (const std::string& part : split(parallelism, " ")) {
    if (part.rfind(dim, 0) != 0) continue;
    int64_t v = 0;
    const char* first = part.data() + dim.size();
    const auto [end, ec] = std::from_chars(first, part.data() + part.size(), v);
    if (ec == std::errc() && end == part.data() + part.size() && end != first) return v;
  }
  return 1;
}

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// The reasons of one figure of table 10. Its async-TP figures (the second of an "x / y" cell)
// are loom's --tp-comm-overlap (sim/tp_overlap.hpp): they share the vanilla figure's reasons.
Expected<std::vector<std::string>> reasons_10(const CsvTable& t, const CsvRow& r, std::string& detail) {
  auto table = text_field(t, r, "table"), model = text_field(t, r, "model"), par = text_field(t, r, "parallelism");
  auto ac = text_field(t, r, "activation_ckpt"), tech = text_field(t, r, "technique"), seq = text_field(t, r, "seq_len");
  if (auto e = first_error(table, model, par, ac, tech, seq)) return *e;
  std::vector<std::string> ids = {"gpu_unprofiled"};
  // Float8 (tensorwise or rowwise, scaled from each tensor's own amax): Fp8Recipe::tensorwise, priced.
  if (has(*tech, "compile") || has(*par, "compile")) ids.push_back("compile");
  // Per-op checkpointing is priced (Recompute::op) but for Float8's GEMMs (check_recompute_op).
  if (ac->rfind("selective", 0) == 0 && (has(*tech, "Float8") || has(*tech, "fp8"))) ids.push_back("selective_op_fp8");
  if (auto st = model_reasons(*model, degree(*par, "PP"), 1, ids, detail); !st) return st.error();
  if (seq->empty()) ids.push_back("seq_len_unstated");
  if (*table == "asynctp") ids.push_back("metric_unstated");
  return ids;
}

Status check_10(const CsvTable& t, const CsvRow& r, const std::vector<std::string>& figures) {
  if (auto v = count_field(t, r, "gpus", 1); !v) return v.error();
  if (auto v = count_field(t, r, "local_batch", 1); !v) return v.error();
  auto seq = text_field(t, r, "seq_len"), memory = text_field(t, r, "memory_gib");
  if (auto e = first_error(seq, memory)) return *e;
  // "8192?": the header says it is inferred from the train_configs, not stated.
  const std::string seq_text = !seq->empty() && seq->back() == '?' ? seq->substr(0, seq->size() - 1) : *seq;
  if (!seq_text.empty())
    if (auto v = parse_number(seq_text, where(t, r, "seq_len")); !v) return v.error();
  if (!memory->empty())
    if (auto v = number_field(t, r, "memory_gib"); !v) return v.error();
  for (const auto& f : figures)
    if (auto v = parse_number(f, where(t, r, "tokens_per_sec_per_gpu")); !v) return v.error();
  return ok_status();
}

Status table_10(const CsvTable& t, TableResult& out) {
  out.title = "torchtitan Llama 3.1 benchmarks on H100 (Dec 2024; async TP June 2025)";
  out.metric = "tokens/s per GPU and peak memory GiB";
  out.rules = {
      "seq_len \"8192?\" is taken as 8192 (torchtitan's train_configs at 9dec370, as the table's header says: "
      "inferred, not stated); an empty seq_len is unstated",
      "a cell \"x / y\" holds the vanilla-TP figure and the async-TP figure (the technique's \"vanilla / async\")",
      "every row ran on H100 96 GB HBM2e (2.4 TB/s) at a 500 W limit (the table's header), not the 80 GB HBM3 700 W "
      "H100 of dgx-h100",
  };
  for (const CsvRow& r : t.rows) {
    auto tps = text_field(t, r, "tokens_per_sec_per_gpu"), table = text_field(t, r, "table");
    auto model = text_field(t, r, "model"), par = text_field(t, r, "parallelism"), tech = text_field(t, r, "technique");
    if (auto e = first_error(tps, table, model, par, tech)) return *e;
    const std::vector<std::string> figures = split(*tps, " / ");
    if (auto st = check_10(t, r, figures); !st) return st.error();
    for (size_t k = 0; k < figures.size(); ++k) {
      std::string detail;
      auto ids = reasons_10(t, r, detail);
      if (!ids) return ids.error();
      std::string label = *table + " " + *model + " " + *par + " " + *tech;
      if (figures.size() == 2) label += k == 0 ? " [vanilla]" : " [async]";
      out.unexpressed.push_back(unexpressed(label, r.line, *ids, detail));
    }
  }
  return ok_status();
}

}  // namespace

// ---- 11: llm.c step times -------------------------------------------------------------------

namespace {

struct Row11 {
  std::string script, model, hardware;
  int64_t micro_batch = 0, seq = 0, tokens = 0, recompute = 0, zero = 0;
  PublishedNumber step_s;
};

Expected<Row11> parse_11(const CsvTable& t, const CsvRow& r) {
  auto script = text_field(t, r, "script"), model = text_field(t, r, "model"), hw = text_field(t, r, "hardware");
  if (auto e = first_error(script, model, hw)) return *e;
  Row11 x;
  x.script = *script, x.model = *model, x.hardware = *hw;
  int64_t* dst[] = {&x.micro_batch, &x.seq, &x.tokens, &x.recompute, &x.zero};
  const char* cols[] = {"micro_batch(-b)", "seq_len(-t)", "tokens_per_step(-d)", "recompute(-r)", "zero_stage(-z)"};
  for (int i = 0; i < 5; ++i) {
    auto v = count_field(t, r, cols[i], i < 3 ? 1 : 0);
    if (!v) return v.error();
    *dst[i] = *v;
  }
  auto step = number_field(t, r, "step_time_s");
  if (!step) return step.error();
  x.step_s = *step;
  if (x.tokens % x.seq != 0)
    return make_error(where(t, r, "tokens_per_step(-d)"), "must be a multiple of seq_len(-t) (got " + itos(x.tokens) + ")");
  return x;
}

// "8x A100 80GB SXM" -> (dgx-a100, 8); an unknown GPU -> empty name.
Expected<std::pair<std::string, int64_t>> node_11(const CsvTable& t, const CsvRow& r, const std::string& hw) {
  const size_t x = hw.find("x ");
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(hw.data(), hw.data() + (x == std::string::npos ? 0 : x), n);
  if (x == std::string::npos || ec != std::errc() || end != hw.data() + x || n < 1 || n > 8)
    return make_error(where(t, r, "hardware"), "must read \"<1-8>x <GPU>\" (got \"" + hw + "\")");
  const std::string gpu = hw.substr(x + 2);
  const std::string name = gpu == "A100 80GB SXM" ? "dgx-a100" : gpu == "H100 80GB SXM" ? "dgx-h100" : "";
  return std::pair{name, n};
}

// The model llm.c builds from the descriptor in parentheses: "dN" are the GPT-2 sizes of
// gpt2_set_hyperparameters (the zoo's); "gpt3:c768" is gpt3_set_hyperparameters' 12 layers,
// 768 channels, head size 64, context 2048 (karpathy/llm.c train_gpt2.cu at f1e2ace). llm.c
// has no dropout and pads the vocabulary 50257 to 50304 for its kernels (same file), so the
// logits GEMM runs over 50304 rows.
Expected<std::optional<ModelSpec>> model_11(const std::string& model) {
  const size_t open = model.find('('), close = model.find(')');
  const std::string d = open == std::string::npos || close < open ? "" : model.substr(open + 1, close - open - 1);
  const std::map<std::string, std::string> zoo = {
      {"d12", "gpt2-124m"}, {"d24", "gpt2-350m"}, {"d36", "gpt2-774m"}, {"d48", "gpt2-1.5b"}};
  ModelSpec m;
  if (auto it = zoo.find(d); it != zoo.end()) {
    auto z = zoo_model(it->second);
    if (!z) return z.error();
    m = *z;
  } else if (d == "gpt3:c768") {
    m.name = "gpt3-125m (llm.c gpt3:c768)";
    m.family = Family::gpt;
    m.layers = 12, m.hidden = 768, m.heads = 12, m.kv_heads = 12, m.ffn_hidden = 4 * 768;
    m.vocab = 50257, m.seq_len = 2048, m.tied_embeddings = true;
    m.source = "karpathy/llm.c train_gpt2.cu gpt3_set_hyperparameters (f1e2ace)";
  } else {
    return std::optional<ModelSpec>{};
  }
  m.vocab = 50304;
  m.dropout = false;
  return std::optional<ModelSpec>{m};
}

Expected<std::optional<PublishedPoint>> point_11(const CsvTable& t, const CsvRow& r, const Row11& x, TableResult& out) {
  auto node = node_11(t, r, x.hardware);
  if (!node) return node.error();
  auto m = model_11(x.model);
  if (!m) return m.error();
  std::vector<std::string> ids;
  if (node->first.empty()) ids.push_back("gpu_unprofiled");
  if (!*m) ids.push_back("model_unknown");
  if (x.recompute != 0) ids.push_back("llmc_recompute");
  if (x.zero > 3) ids.push_back("config_rejected");
  if (!ids.empty()) {
    out.unexpressed.push_back(unexpressed(x.script, r.line, ids, x.model + " on " + x.hardware));
    return std::optional<PublishedPoint>{};
  }
  auto c = sized_cluster(node->first, node->second);
  if (!c) return c.error();
  ParallelConfig p;
  p.dp = node->second;
  p.zero = static_cast<int>(x.zero);
  p.micro_batch = x.micro_batch;
  // cuDNN flash attention (the scripts build with USE_CUDNN=1) and llm.c's fused classifier.
  const TrainSpec tr = train_of(x.tokens / x.seq, x.seq, Attention::fused, CrossEntropy::fused);
  auto e = predict(**m, *c, tr, p);
  if (!e) {
    out.unexpressed.push_back(unexpressed(x.script, r.line, {"config_rejected"}, e.error().message));
    return std::optional<PublishedPoint>{};
  }
  // A physical bound, not a fit: the FLOPs the step's matrix kernels must do at least, over the
  // GPUs' peak. run_gpt3_125M.sh's "8X A100 80GB SXM ... ~150ms/iter" needs 373 TFLOP/s per
  // GPU of an A100's 312 (model FLOPs 4.48e14 per step; llm.c's own count, gpt2_estimate_mfu's
  // 6 N + 6 L C T per token, gives 378). Such a row stays priced and counted (a bad point is
  // never dropped); its note says that the stated hardware cannot have run it.
  std::string note = fit_note(*e);
  const double implied = static_cast<double>(e->flops_model) / (static_cast<double>(p.dp) * x.step_s.value);
  if (implied > c->gpu.peak_flops_bf16) {
    std::ostringstream why;
    why.precision(0);
    why << std::fixed << "the published time implies " << implied / 1e12 << " TFLOP/s per GPU > the " << c->gpu.name
        << " peak " << c->gpu.peak_flops_bf16 / 1e12;
    note = note.empty() ? why.str() : note + "; " + why.str();
  }
  PublishedPoint out_p{x.script, r.line, "step s", x.step_s.value, e->step_time_s, x.step_s.approximate, describe(p), note};
  out_p.sim_vs_analytical_pct = sim_vs_analytical_pct(**m, *c, tr, *e);
  return std::optional<PublishedPoint>{out_p};
}

Status table_11(const CsvTable& t, TableResult& out) {
  out.title = "llm.c training scripts' step times, GPT-2 124M-1.5B on one 8-GPU A100 or H100 node";
  out.metric = "step time s";
  out.rules = {
      "one dgx-a100 or dgx-h100 node of the row's GPUs; dp = GPUs, ZeRO stage -z, micro-batch -b, seq -t, global "
      "batch -d / -t sequences",
      "as llm.c runs them: no dropout, vocabulary padded to 50304, cuDNN fused attention (USE_CUDNN=1), fused "
      "classifier, bf16 gradients; gpt3:c768 is llm.c's 12 layers, 768 channels, head size 64, seq 2048",
      "\"~\" figures are the scripts' rounded step times, compared as written",
      "each row as its script runs it (karpathy/llm.c f1e2ace scripts/*.sh, train_gpt2.cu): 8 ranks, gradient "
      "accumulation -d / (-b x -t x 8) micro-steps (1, 1, 2, 8, 1), -r 0, -z 1 (per-layer gradient reduce-scatters on "
      "a second stream, then AdamW on the shard and an all-gather of the weights), on the GPU its header names",
      "compute priced by the cluster's documented efficiency defaults (dgx-a100 has no measured profile; dgx-h100 "
      "does not use the single-GPU h100-sxm profile, whose attention is loom's own kernel, not llm.c's cuDNN one)",
      "a row whose published time needs more model FLOP/s than the GPU's peak is priced and counted like the "
      "others; its note says so",
  };
  for (const CsvRow& r : t.rows) {
    auto x = parse_11(t, r);
    if (!x) return x.error();
    auto p = point_11(t, r, *x, out);
    if (!p) return p.error();
    if (*p) out.points.push_back(**p);
  }
  return ok_status();
}

}  // namespace

// ---- tables, summary, JSON ----------------------------------------------------------------

const std::vector<std::string>& published_table_ids() {
  static const std::vector<std::string> ids = {"02", "06", "09", "10", "11"};
  return ids;
}

Expected<TableResult> validate_published_table(const CsvTable& t, const std::string& id) {
  TableResult out;
  out.id = id;
  out.path = t.path;
  Status st = id == "02"   ? table_02(t, out)
              : id == "06" ? table_06(t, out)
              : id == "09" ? table_09(t, out)
              : id == "10" ? table_10(t, out)
              : id == "11" ? table_11(t, out)
                           : Status(make_error(t.path, "is not a table loom validates against (02, 06, 09, 10, 11)"));
  if (!st) return st.error();
  std::vector<double> errors;
  for (size_t i = 0; i < out.points.size(); ++i) {
    errors.push_back(out.points[i].error_pct());
    if (std::abs(errors[i]) > std::abs(errors[out.worst])) out.worst = i;
  }
  out.mape_pct = mape_pct(errors);
  return out;
}

Expected<std::vector<TableResult>> validate_published(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return make_error(dir, "is not a folder");
  std::map<std::string, std::string> files;  // id -> path, sorted by id
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    for (const std::string& id : published_table_ids())
      if (name.rfind(id + "_", 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".csv") {
        if (files.count(id)) return make_error(dir, "holds two files for table " + id);
        files[id] = it->path().string();
      }
  }
  if (ec) return make_error(dir, "cannot be listed (" + ec.message() + ")");
  if (files.empty()) return make_error(dir, "holds no published table (02_*.csv, 06_*.csv, 09_*.csv, 10_*.csv, 11_*.csv)");
  std::vector<TableResult> out;
  for (const auto& [id, path] : files) {
    auto t = read_published_csv(path);
    if (!t) return t.error();
    auto r = validate_published_table(*t, id);
    if (!r) return r.error();
    out.push_back(std::move(*r));
  }
  return out;
}

namespace {

nlohmann::json point_json(const PublishedPoint& p) {
  nlohmann::json j = {{"row", p.label},           {"line", p.line},       {"metric", p.metric},
                      {"published", p.published}, {"predicted", p.predicted}, {"error_pct", p.error_pct()},
                      {"approximate", p.approximate}, {"config", p.config},   {"note", p.note}};
  j["simulated_vs_analytical_pct"] = p.sim_vs_analytical_pct ? nlohmann::json(*p.sim_vs_analytical_pct) : nullptr;
  return j;
}

}  // namespace

nlohmann::json published_json(const std::vector<TableResult>& tables) {
  nlohmann::json j = {{"schema_version", kJsonSchemaVersion},
                      {"error_convention", "error_pct = (predicted - published) / published x 100"}};
  j["tables"] = nlohmann::json::array();
  for (const TableResult& t : tables) {
    nlohmann::json tj = {{"table", t.id}, {"file", t.path}, {"title", t.title}, {"metric", t.metric},
                         {"rules", t.rules}, {"compared", t.points.size()}};
    tj["mape_pct"] = t.points.empty() ? nlohmann::json(nullptr) : nlohmann::json(t.mape_pct);
    tj["rows"] = nlohmann::json::array();
    for (const auto& p : t.points) tj["rows"].push_back(point_json(p));
    tj["worst"] = t.points.empty() ? nlohmann::json(nullptr) : point_json(t.points[t.worst]);
    tj["unexpressible"] = nlohmann::json::array();
    for (const auto& u : t.unexpressed)
      tj["unexpressible"].push_back({{"row", u.label}, {"line", u.line}, {"reasons", u.reasons}, {"detail", u.detail}});
    j["tables"].push_back(tj);
  }
  j["reasons"] = nlohmann::json::object();
  for (const Reason& r : unexpressible_reasons()) j["reasons"][r.id] = r.sentence;
  return j;
}

}  // namespace loom
