#include "planner/cli/report.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "planner/cli/offload_cli.hpp"
#include "sim/context_parallel.hpp"
#include "sim/fp8.hpp"
#include "sim/offload.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"

namespace loom::cli {

namespace {
double gib(int64_t b) { return static_cast<double>(b) / 1073741824.0; }
}  // namespace

std::string describe_config(const Estimate& e) {
  const auto& p = e.parallel;
  std::string s = fmt::format("dp {}  tp {}  pp {}  zero {}  micro-batch {} ({} per replica)  {}", p.dp, p.tp,
                              p.pp, p.zero, p.micro_batch, e.micro_batches, to_string(p.schedule));
  if (p.vpp > 1) s += fmt::format(" vpp {}", p.vpp);
  if (!p.stage_layers.empty()) s += "  stage layers " + stage_layers_text(p.stage_layers);
  s += fmt::format("  recompute {}", to_string(p.recompute));
  if (p.recompute_layers > 0) s += fmt::format(" (first {} layers of each chunk)", p.recompute_layers);
  if (p.recompute_every > 0)
    s += fmt::format(" (layers {}, {}, ... of each chunk)", p.recompute_every, 2 * p.recompute_every);
  if (p.recompute == Recompute::op) s += " (torchtitan's per-op checkpointing)";
  s += fmt::format("  sp {}", p.sp ? "on" : "off");
  if (p.tp_comm_overlap) s += "  tp-comm-overlap on";
  if (p.overlap_param_gather) s += "  overlap-param-gather on";
  if (!p.overlap_grad_reduce && dp_cp(p) > 1) s += "  overlap-grad-reduce off";  // the reduction after the backward
  if (p.pp > 1 && !p.pp_overlapped()) s += "  pp-comm-overlap off";  // each pipeline send blocks its sender
  if (p.order != "tp-dp-pp") s += "  order " + p.order;
  if (p.offload != Offload::none) s += "  offload " + to_string(p.offload);
  if (p.ep > 1 || p.etp > 1) s += fmt::format("  ep {}  etp {}", p.ep, p.etp);  // MoE
  if (p.cp > 1) s += fmt::format("  cp {}", p.cp);  // context parallelism
  if (p.cp > 1 && p.cp_comm == CpComm::all_gather) s += " (all-gather)";  // K and V gathered whole
  return s;
}

std::string memory_table(const Estimate& e) {
  const auto& m = e.memory;
  const auto& st = e.stages[e.peak_stage];
  std::string s = fmt::format("memory per GPU (stage {} of {}, the largest)      GiB\n", e.peak_stage, e.stages.size());
  auto row = [&](const char* name, int64_t b, const std::string& note = "") {
    s += fmt::format("  {:<38}{:>9.2f}{}\n", name, gib(b), note.empty() ? "" : "  " + note);
  };
  row("weights", m.weights, fmt::format("{} params on this GPU", st.params));
  row("gradients", m.grads, to_string(e.train.grad_dtype));
  row("optimizer state", m.optimizer, e.parallel.zero >= 1 ? fmt::format("sharded over dp {}", e.parallel.dp * e.parallel.cp) : "");
  row("activations", m.activations, fmt::format("{} chunk(s) of {} layers in flight", st.in_flight,
                                                st.layers / std::max<int64_t>(1, e.parallel.vpp)));
  row("logits and loss", m.logits);
  row("communication buffers", m.comm_buffers);
  row("workspace (cuBLAS, backward scratch)", m.workspace);
  row("runtime (CUDA context, NCCL, allocator)", m.runtime);
  s += fmt::format("  {:<38}{:>9.2f}  of {:.2f} ({:.2f} usable): {}\n", "peak", gib(m.peak()), gib(e.capacity_bytes),
                   gib(e.usable_bytes), e.fits ? "fits" : "DOES NOT FIT");
  return s;
}

std::string time_table(const Estimate& e) {
  const auto& t = e.time;
  std::string s = "time per step                                   seconds      %\n";
  auto row = [&](const char* name, double v) {
    s += fmt::format("  {:<38}{:>11.4f}{:>7.1f}\n", name, v, e.step_time_s > 0 ? 100 * v / e.step_time_s : 0);
  };
  row("compute", t.compute_s);
  double contention_s = 0;  // the most any stage's compute grew by (the step's stage, mostly)
  for (const StageEstimate& st : e.stages) contention_s = std::max(contention_s, st.sm_contention_s);
  if (contention_s > 0) row("  of which NCCL kernels' SMs", contention_s);
  row("tensor-parallel comm (exposed)", t.tp_comm_s);
  row("data-parallel comm (exposed)", t.dp_comm_s);
  row("pipeline p2p (exposed)", t.pp_comm_s);
  row("pipeline bubble", t.bubble_s);
  row("optimizer step", t.optimizer_s);
  if (t.host_comm_s > 0) row("host-link copies (exposed, offload)", t.host_comm_s);
  if (t.ep_comm_s > 0) row("expert all-to-all and expert tp (MoE)", t.ep_comm_s);
  if (t.cp_comm_s > 0)
    row(e.parallel.cp_comm == CpComm::all_gather ? "context-parallel K/V all-gather" : "context-parallel KV ring (exposed)",
        t.cp_comm_s);
  row("step", e.step_time_s);
  return s;
}

// Two FLOP conventions (sim/model_math.hpp): causal attention, what the kernels do, and
// Narayanan et al.'s full-attention count that papers' TFLOP/s figures use. MFU is against the
// bf16 peak in an FP8 plan too (as torchtitan's and Megatron-Bridge's reports count it), so
// the line says so: its FP8 GEMMs run at up to twice that peak.
std::string throughput_line(const Estimate& e) {
  return fmt::format(
      "throughput  {:.0f} tokens/s  {:.1f} TFLOP/s per GPU  MFU {:.1f}% (causal attention FLOPs; {:.1f} TFLOP/s, "
      "MFU {:.1f}% as Narayanan et al. count them){}\n",
      e.tokens_per_s, e.tflops_per_gpu, 100 * e.mfu, e.tflops_per_gpu_paper, 100 * e.mfu_paper,
      e.train.fp8 ? "; MFU of the bf16 peak, which the FP8 GEMMs run at up to twice" : "");
}

std::string full_report(const Estimate& e, const ClusterSpec& c) {
  std::string s = fmt::format("{} ({} params) on {} x {} ({}), global batch {} x {} tokens, {}\n", e.model,
                              e.params, e.gpus, c.name, c.gpu.name, e.train.global_batch, e.train.seq,
                              train_dtype_name(e.train));
  s += "config  " + describe_config(e) + "\n";
  if (!e.priced_by.empty()) s += "compute priced by " + e.priced_by + "\n";
  s += "\n" + memory_table(e) + "\n" + time_table(e) + "\n" + throughput_line(e);
  s += fmt::format("flops per step: model {:.4g} (causal attention; {:.4g} with full attention), hardware {:.4g} "
                   "(full attention, recompute included)\n",
                   static_cast<double>(e.flops_model), static_cast<double>(e.flops_model_paper),
                   static_cast<double>(e.flops_hardware));
  s += fmt::format("bytes sent per GPU per step: tp {:.3g}  dp {:.3g}  pp {:.3g}\n", static_cast<double>(e.comm.tp),
                   static_cast<double>(e.comm.dp), static_cast<double>(e.comm.pp));
  if (e.comm.ep > 0) s += fmt::format("bytes sent per GPU per step over the expert-parallel group: {:.3g}\n",
                                     static_cast<double>(e.comm.ep));
  if (e.comm.cp > 0) s += fmt::format("bytes sent per GPU per step over the context-parallel group: {:.3g}\n",
                                     static_cast<double>(e.comm.cp));
  s += offload_report(e);
  if (e.parallel.dp > 1) {
    s += fmt::format("dp gradient sync alternatives: ring all-reduce {:.4f} s", e.dp_alternatives.ring_all_reduce_s);
    if (e.parallel.grad_compression > 1)
      s += fmt::format(", compressed {}x {:.4f} s", e.parallel.grad_compression, e.dp_alternatives.compressed_ring_s);
    if (e.parallel.ps_servers > 0)
      s += fmt::format(", parameter server ({} servers) {:.4f} s", e.parallel.ps_servers,
                       e.dp_alternatives.parameter_server_s);
    s += "\n";
  }
  if (!e.fits) s += "does not fit: " + e.reason + "\n";
  return s;
}

}  // namespace loom::cli
