#include "executor/cuda/cuda_executor.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "executor/cpu/synthetic_data.hpp"
#include "executor/cuda/gpt.cuh"
#include "executor/cuda/plan_limits.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/trace.hpp"

namespace loom::cuda {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / kGiB);
  return buf;
}

// Host token buffers for one step (pinned, so the copies are asynchronous), double-buffered:
// the next step's batch is drawn while the GPU runs this one.
struct HostBatch {
  int32_t* data = nullptr;  // (micro_batches, 2, B, T): inputs then targets
  ~HostBatch() {
    if (data) cudaFreeHost(data);
  }
};

struct StreamGuard {
  cudaStream_t s = nullptr;
  ~StreamGuard() {
    if (s) cudaStreamDestroy(s);
  }
};
struct DevGuard {
  void* p = nullptr;
  ~DevGuard() { cudaFree(p); }
};
struct EventGuard {
  cudaEvent_t a = nullptr, b = nullptr;
  ~EventGuard() {
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
  }
};

// The device, its name and free memory, recorded in the report.
Status open_device(const CudaOptions& opt, MeasuredReport& report, size_t& free_bytes, size_t& total_bytes) {
  LOOM_TRY(cuda_status(cudaSetDevice(opt.device), "cudaSetDevice", {{"device", opt.device}}));
  LOOM_TRY(cuda_status(cudaFree(nullptr), "CUDA context", {{"device", opt.device}}));
  cudaDeviceProp prop{};
  LOOM_TRY(cuda_status(cudaGetDeviceProperties(&prop, opt.device), "device properties", {}));
  report.device_name = prop.name;
  LOOM_TRY(cuda_status(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo", {}));
  report.free_before_bytes = static_cast<int64_t>(free_bytes);
  return ok_status();
}

// Refuse before allocating anything: the model's own buffer list against what is free.
Status check_fits(const MemoryBytes& need, int64_t predicted, int64_t available, size_t free_bytes,
                  const CudaOptions& opt, const MeasuredReport& report) {
  if (predicted <= available) return ok_status();
  return make_error("execute", "the plan needs " + gib(predicted) + " on the GPU (weights " + gib(need.weights) +
                                   ", grads " + gib(need.grads) + ", optimizer " + gib(need.optimizer) +
                                   ", activations " + gib(need.activations) + ", logits " + gib(need.logits) +
                                   ", workspace " + gib(need.workspace) + ") but " + gib(available) +
                                   " are available (" + gib(static_cast<int64_t>(free_bytes)) + " free less " +
                                   gib(opt.reserve_bytes) + " kept for cuBLAS); the cost model predicted " +
                                   gib(report.predicted.memory.peak()));
}

AdamWHyper adamw_hyper(const CudaOptions& opt) {
  AdamWHyper hyper;
  hyper.lr = static_cast<float>(opt.lr);
  hyper.beta1 = static_cast<float>(opt.beta1);
  hyper.beta2 = static_cast<float>(opt.beta2);
  hyper.eps = static_cast<float>(opt.eps);
  hyper.weight_decay = static_cast<float>(opt.weight_decay);
  return hyper;
}

// Everything one run holds on the device, and the shapes of a step.
struct Run {
  Run(const Plan& p, const CudaOptions& o, MeasuredReport& r) : plan(p), opt(o), report(r) {}
  const Plan& plan;
  const CudaOptions& opt;
  MeasuredReport& report;
  int64_t B = 0, T = 0, micro_batches = 0, batch_elems = 0;
  StreamGuard stream;
  std::unique_ptr<Gpt> model;
  DevGuard tokens;  // two steps of batch_elems tokens
  HostBatch host;
  EventGuard events;
  cpu::SyntheticStream data{};

  void draw(int64_t step, int32_t* dst) const {  // step from 0; micro-batch i: inputs, targets
    for (int64_t i = 0; i < micro_batches; i++) {
      int32_t* in = dst + 2 * i * B * T;
      cpu::synthetic_batch(in, in + B * T, data, (step * micro_batches + i) * B, B, T);
    }
  }
};

Status allocate_run(Run& r) {
  LOOM_TRY(cuda_status(cudaStreamCreateWithFlags(&r.stream.s, cudaStreamNonBlocking), "stream", {}));
  auto model_or = Gpt::create(r.plan.model, r.B, r.T, r.opt.seed, r.stream.s, r.plan.parallel.recompute);
  if (!model_or) return model_or.error();
  r.model = std::move(model_or.value());
  r.batch_elems = 2 * r.micro_batches * r.B * r.T;  // one step: inputs and targets
  LOOM_TRY(cuda_status(cudaMalloc(&r.tokens.p, 2 * r.batch_elems * sizeof(int32_t)), "token buffers",
                       {{"elements", r.batch_elems}}));
  LOOM_TRY(cuda_status(cudaMallocHost(&r.host.data, 2 * r.batch_elems * sizeof(int32_t)), "pinned token buffers", {}));
  LOOM_TRY(cuda_status(cudaEventCreate(&r.events.a), "event", {}));
  LOOM_TRY(cuda_status(cudaEventCreate(&r.events.b), "event", {}));
  r.data = cpu::SyntheticStream{r.plan.model.vocab, r.opt.data_seed, r.opt.data_period < 0 ? r.T / 2 : r.opt.data_period};
  return ok_status();
}

// One step: its tokens copied in, every micro-batch's forward and backward, the update, timed
// between two events; the next step's batch drawn meanwhile. Returns (loss, grad norm).
Expected<std::pair<float, float>> run_step(Run& r, int64_t step, int64_t total_steps, StepMarks& marks, bool profiled) {
  cudaStream_t stream = r.stream.s;
  int32_t* h = r.host.data + (step % 2) * r.batch_elems;
  int32_t* d = static_cast<int32_t*>(r.tokens.p) + (step % 2) * r.batch_elems;
  if (profiled) {
    marks.clear();
    r.model->set_marks(&marks);
  }
  LOOM_TRY(cuda_status(cudaEventRecord(r.events.a, stream), "event", {}));
  LOOM_TRY(cuda_status(cudaMemcpyAsync(d, h, r.batch_elems * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
                       "token copy", {{"elements", r.batch_elems}}));
  const float loss_scale = 1.0f / static_cast<float>(r.micro_batches);
  for (int64_t i = 0; i < r.micro_batches; i++) {
    const int32_t* in = d + 2 * i * r.B * r.T;
    marks.set_micro_batch(i);
    LOOM_TRY(r.model->forward_backward(in, in + r.B * r.T, loss_scale));
  }
  LOOM_TRY(r.model->update(adamw_hyper(r.opt), static_cast<float>(r.opt.max_grad_norm), step + 1));
  if (profiled) {
    LOOM_TRY(marks.phase("end", stream));
    r.model->set_marks(nullptr);
  }
  LOOM_TRY(cuda_status(cudaEventRecord(r.events.b, stream), "event", {}));
  if (step + 1 < total_steps) r.draw(step + 1, r.host.data + ((step + 1) % 2) * r.batch_elems);
  return r.model->take_loss_and_norm();  // synchronizes
}

// The timed steps, then (opt.profile_step) one more with a mark before every kernel.
Status run_steps(Run& r) {
  MeasuredReport& report = r.report;
  StepMarks marks;
  const int64_t total_steps = r.opt.steps + (r.opt.profile_step ? 1 : 0);
  r.draw(0, r.host.data);
  for (int64_t step = 0; step < total_steps; step++) {
    const bool profiled = step == r.opt.steps;
    auto loss_norm = run_step(r, step, total_steps, marks, profiled);
    if (!loss_norm) return loss_norm.error();
    float ms = 0;
    LOOM_TRY(cuda_status(cudaEventElapsedTime(&ms, r.events.a, r.events.b), "event time", {}));
    if (profiled) {
      auto spans = marks.spans();
      if (!spans) return spans.error();
      report.profile = std::move(*spans);
      report.profiled_step_s = ms / 1e3;
      continue;
    }
    report.step_times_s.push_back(ms / 1e3);
    report.losses.push_back(loss_norm->first);
    report.grad_norms.push_back(loss_norm->second);
    if (step == 0) {
      size_t f = 0, t = 0;
      LOOM_TRY(cuda_status(cudaMemGetInfo(&f, &t), "cudaMemGetInfo", {}));
      report.device_used_bytes = static_cast<int64_t>(t - f);
    }
    if (r.opt.progress)
      std::fprintf(stderr, "step %4lld/%lld  loss %.4f  grad norm %.3f  %.1f ms  %.0f tokens/s\n",
                   static_cast<long long>(step + 1), static_cast<long long>(r.opt.steps), loss_norm->first,
                   loss_norm->second, ms, static_cast<double>(r.micro_batches * r.B * r.T) / (ms / 1e3));
  }
  return ok_status();
}

// Median over the steps after warm-up (all steps when there are too few).
double median_step_s(const MeasuredReport& report, const CudaOptions& opt) {
  const int64_t skip = opt.steps > opt.warmup_steps ? opt.warmup_steps : 0;
  std::vector<double> timed(report.step_times_s.begin() + skip, report.step_times_s.end());
  std::sort(timed.begin(), timed.end());
  if (timed.empty()) return 0.0;
  return timed.size() % 2 ? timed[timed.size() / 2] : 0.5 * (timed[timed.size() / 2 - 1] + timed[timed.size() / 2]);
}

void fill_measured(Run& r, const MemoryBytes& need, int64_t total_bytes, int64_t available) {
  const Plan& plan = r.plan;
  const double step_s = median_step_s(r.report, r.opt);
  const Recompute recompute = plan.parallel.recompute;
  Estimate& m = r.report.measured;
  m.model = plan.model.name;
  m.cluster = plan.cluster.name;
  m.params = r.model->num_params();
  m.gpus = 1;
  m.parallel = plan.parallel;
  m.train = plan.train;
  m.micro_batches = r.micro_batches;
  m.step_time_s = step_s;
  m.tokens_per_s = step_s > 0 ? static_cast<double>(plan.train.global_batch * r.T) / step_s : 0;
  m.flops_model = model_flops(plan.model, plan.train.global_batch, r.T, AttentionFlops::causal);
  m.flops_model_paper = model_flops(plan.model, plan.train.global_batch, r.T, AttentionFlops::full);
  // full recompute runs every layer's forward twice (the logits once): hardware_flops' full term
  m.flops_hardware = hardware_flops(plan.model, plan.train.global_batch, r.T,
                                    recompute == Recompute::full ? Recompute::full : Recompute::none,
                                    AttentionFlops::full);
  set_flop_rates(m, plan.cluster.gpu.peak_flops_bf16);
  m.memory = need;
  // runtime: what the device uses beyond our allocations (CUDA context, cuBLAS, allocator)
  m.memory.runtime = std::max<int64_t>(0, r.report.device_used_bytes - r.report.allocated_bytes);
  m.capacity_bytes = total_bytes;
  m.usable_bytes = available;
  m.fits = true;
  m.source = StepSource::measured;
  m.measurement.device = r.report.device_name;
}

// The profiled step by phase (the prediction's time categories; one GPU: no communication)
// and per micro-batch, as StageEstimate.
void fill_stage(MeasuredReport& report, const Plan& plan, int64_t micro_batches) {
  Estimate& m = report.measured;
  StageEstimate stage;
  stage.index = 0;
  stage.layers = plan.model.layers;
  stage.params = m.params;
  stage.memory = m.memory;
  stage.flops = m.flops_hardware;
  for (const MarkSpan& s : report.profile) {
    if (!s.phase) {
      report.op_time_s[s.name] += s.dur_s;
      continue;
    }
    const char k = s.name.empty() ? '?' : s.name[0];
    if (s.name == "optimizer") stage.optimizer_s += s.dur_s;
    else if (k == 'F') stage.forward_s += s.dur_s;
    else if (k == 'B') stage.backward_s += s.dur_s;
    else if (k == 'R') stage.recompute_s += s.dur_s;
  }
  if (report.profile.empty()) return;
  m.time.compute_s = stage.forward_s + stage.backward_s + stage.recompute_s;
  m.time.optimizer_s = stage.optimizer_s;
  const double mb = static_cast<double>(micro_batches);
  stage.forward_s /= mb;
  stage.backward_s /= mb;
  stage.recompute_s /= mb;
  m.stages.push_back(stage);
}

}  // namespace

Expected<MeasuredReport> run_cuda(const Plan& plan, const CudaOptions& opt) {
  LOOM_TRY(check_cuda_plan(plan));
  // cuda::Gpt trains the whole model on one GPU; `loom execute --device cuda` runs every grid
  // through the parallel trainer (cuda_execute.hpp).
  for (const auto& [field, n] : {std::pair{"parallel.dp", plan.parallel.dp}, std::pair{"parallel.tp", plan.parallel.tp},
                                 std::pair{"parallel.pp", plan.parallel.pp}})
    if (n != 1)
      return make_error(field, "loom_cuda_train runs one GPU (dp = tp = pp = 1); use loom execute --device cuda (got " +
                                   std::to_string(n) + ")");
  if (plan.parallel.recompute_layers > 0)  // cuda::Gpt recomputes every layer or none
    return make_error("parallel.recompute_layers", "loom_cuda_train recomputes every layer or none: must be 0; use loom "
                                                   "execute --device cuda (got " +
                                                       std::to_string(plan.parallel.recompute_layers) + ")");
  if (plan.parallel.recompute_every > 0)
    return make_error("parallel.recompute_every", "loom_cuda_train recomputes every layer or none: must be 0; use loom "
                                                  "execute --device cuda (got " +
                                                      std::to_string(plan.parallel.recompute_every) + ")");
  MeasuredReport report;
  Run r(plan, opt, report);
  r.B = plan.parallel.micro_batch;
  r.T = plan.train.seq;
  r.micro_batches = plan.train.global_batch / r.B;
  LOOM_TRY(validate_for_cuda_model(plan.model, r.B, r.T));
  report.predicted = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  size_t free_bytes = 0, total_bytes = 0;
  LOOM_TRY(open_device(opt, report, free_bytes, total_bytes));
  // recompute: full keeps each layer's input only (cuda::Gpt); selective runs as none, since the
  // fused attention stores no T x T tensor to drop.
  auto need = Gpt::memory_needed(plan.model, r.B, r.T, plan.parallel.recompute);
  if (!need) return need.error();
  const int64_t tokens_bytes = 2 * 2 * r.micro_batches * r.B * r.T * static_cast<int64_t>(sizeof(int32_t));
  const int64_t predicted = need->peak() + tokens_bytes;
  const int64_t available = static_cast<int64_t>(free_bytes) - opt.reserve_bytes;
  LOOM_TRY(check_fits(*need, predicted, available, free_bytes, opt, report));
  LOOM_TRY(allocate_run(r));
  report.allocated_bytes = predicted;
  LOOM_TRY(run_steps(r));
  fill_measured(r, *need, static_cast<int64_t>(total_bytes), available);
  fill_stage(report, plan, r.micro_batches);
  return report;
}

nlohmann::json measured_trace_json(const MeasuredReport& r) {
  const Coords zero{0, 0, 0};
  nlohmann::json events = trace_rank_metadata(0, zero);
  // Kernels on their own thread below the streams the simulator draws (tid 5).
  constexpr int kKernelTid = trace_names::kStreams;
  events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 0}, {"tid", kKernelTid}, {"args", {{"name", "kernels"}}}});
  events.push_back({{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", 0}, {"tid", kKernelTid},
                    {"args", {{"sort_index", kKernelTid}}}});
  for (const MarkSpan& s : r.profile) {
    nlohmann::json args = nlohmann::json::object();
    if (s.micro_batch >= 0) args["micro_batch"] = s.micro_batch;
    if (s.phase) {
      if (s.name != "optimizer") args["chunk"] = 0;
      events.push_back(trace_complete_event(s.name, trace_names::Stream::compute, s.start_s, s.dur_s, 0, args));
    } else {
      nlohmann::json e = trace_complete_event(s.name, trace_names::Stream::compute, s.start_s, s.dur_s, 0, args);
      e["tid"] = kKernelTid;
      e["cat"] = "kernels";
      events.push_back(std::move(e));
    }
  }
  const auto& p = r.measured.parallel;
  return {{"traceEvents", std::move(events)},
          {"displayTimeUnit", "ms"},
          {"otherData",
           {{"generator", "loom execute"}, {"device", r.device_name}, {"step_time_s", r.profiled_step_s},
            {"dp", p.dp}, {"tp", p.tp}, {"pp", p.pp}, {"vpp", p.vpp},
            {"note", "one step after the timed ones, with a CUDA event before every kernel"}}}};
}

// The one step-result writer (sim/step_result.hpp) over the measurement and what only this
// backend records: the profiled step's kernel categories, device memory and the prediction
// checked against it.
nlohmann::json measured_report_to_json(const MeasuredReport& r) {
  Estimate e = r.measured;
  e.source = StepSource::measured;
  Measurement& m = e.measurement;
  m.device = r.device_name;
  m.steps = static_cast<int64_t>(r.step_times_s.size());
  m.step_times_s = r.step_times_s;
  m.losses = r.losses;
  m.grad_norms = r.grad_norms;
  if (!r.profile.empty()) {
    m.op_time_s.assign(r.op_time_s.begin(), r.op_time_s.end());  // per step, by kernel category
    m.profiled_step_s = r.profiled_step_s;
  }
  m.allocated_bytes = r.allocated_bytes;
  m.device_used_bytes = r.device_used_bytes;
  m.free_before_bytes = r.free_before_bytes;
  m.predicted_step_time_s = r.predicted.step_time_s;
  m.predicted_tokens_per_s = r.predicted.tokens_per_s;
  m.predicted_mfu = r.predicted.mfu;
  m.predicted_peak_bytes = r.predicted.memory.peak();
  return estimate_to_json(e);
}

}  // namespace loom::cuda
