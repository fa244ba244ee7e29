#include "executor/cuda/cuda_executor.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "executor/cpu/synthetic_data.hpp"
#include "executor/cuda/gpt.cuh"
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

Status check_plan(const Plan& plan) {
  const ParallelConfig& p = plan.parallel;
  if (p.dp != 1 || p.tp != 1 || p.pp != 1) {
    return make_error("parallel", "the CUDA backend runs dp = tp = pp = 1 plans for now (got dp=" +
                                      std::to_string(p.dp) + " tp=" + std::to_string(p.tp) +
                                      " pp=" + std::to_string(p.pp) + ")");
  }
  if (plan.train.dtype != Dtype::bf16) return make_error("train.dtype", "the CUDA backend trains in bf16");
  if (p.micro_batch < 1 || plan.train.global_batch % p.micro_batch != 0) {
    return make_error("train.global_batch", "must be a multiple of parallel.micro_batch");
  }
  return ok_status();
}

// Host token buffers for one step (pinned, so the copies are asynchronous), double-buffered:
// the next step's batch is drawn while the GPU runs this one.
struct HostBatch {
  int32_t* data = nullptr;  // (micro_batches, 2, B, T): inputs then targets
  ~HostBatch() {
    if (data) cudaFreeHost(data);
  }
};

}  // namespace

Expected<MeasuredReport> run_cuda(const Plan& plan, const CudaOptions& opt) {
  LOOM_TRY(check_plan(plan));
  const ModelSpec& spec = plan.model;
  const int64_t B = plan.parallel.micro_batch, T = plan.train.seq;
  const int64_t micro_batches = plan.train.global_batch / B;
  LOOM_TRY(validate_for_cuda_model(spec, B, T));

  MeasuredReport report;
  {
    CostModel cost(plan.model, plan.cluster, plan.train);
    report.predicted = cost.evaluate(plan.parallel);
  }
  LOOM_TRY(cuda_status(cudaSetDevice(opt.device), "cudaSetDevice", {{"device", opt.device}}));
  LOOM_TRY(cuda_status(cudaFree(nullptr), "CUDA context", {{"device", opt.device}}));
  cudaDeviceProp prop{};
  LOOM_TRY(cuda_status(cudaGetDeviceProperties(&prop, opt.device), "device properties", {}));
  report.device_name = prop.name;
  size_t free_bytes = 0, total_bytes = 0;
  LOOM_TRY(cuda_status(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo", {}));
  report.free_before_bytes = static_cast<int64_t>(free_bytes);

  // Refuse before allocating anything: the model's own buffer list against what is free.
  // recompute: full keeps each layer's input only (cuda::Gpt); selective runs as none, since the
  // fused attention stores no T x T tensor to drop.
  const Recompute recompute = plan.parallel.recompute;
  auto need = Gpt::memory_needed(spec, B, T, recompute);
  if (!need) return need.error();
  const int64_t tokens_bytes = 2 * 2 * micro_batches * B * T * static_cast<int64_t>(sizeof(int32_t));
  const int64_t predicted = need->peak() + tokens_bytes;
  const int64_t available = static_cast<int64_t>(free_bytes) - opt.reserve_bytes;
  if (predicted > available) {
    return make_error("execute", "the plan needs " + gib(predicted) + " on the GPU (weights " +
                                     gib(need->weights) + ", grads " + gib(need->grads) +
                                     ", optimizer " + gib(need->optimizer) + ", activations " +
                                     gib(need->activations) + ", logits " + gib(need->logits) +
                                     ", workspace " + gib(need->workspace) + ") but " +
                                     gib(available) + " are available (" + gib(static_cast<int64_t>(free_bytes)) +
                                     " free less " + gib(opt.reserve_bytes) + " kept for cuBLAS); the cost model predicted " +
                                     gib(report.predicted.memory.peak()));
  }

  cudaStream_t stream = nullptr;
  LOOM_TRY(cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream", {}));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } stream_guard{stream};

  auto model_or = Gpt::create(spec, B, T, opt.seed, stream, recompute);
  if (!model_or) return model_or.error();
  std::unique_ptr<Gpt> model = std::move(model_or.value());

  const int64_t batch_elems = 2 * micro_batches * B * T;  // one step: inputs and targets
  int32_t* d_tokens = nullptr;
  LOOM_TRY(cuda_status(cudaMalloc(&d_tokens, 2 * batch_elems * sizeof(int32_t)), "token buffers", {{"elements", batch_elems}}));
  struct DevGuard {
    void* p;
    ~DevGuard() { cudaFree(p); }
  } tokens_guard{d_tokens};
  HostBatch host;
  LOOM_TRY(cuda_status(cudaMallocHost(&host.data, 2 * batch_elems * sizeof(int32_t)), "pinned token buffers", {}));
  report.allocated_bytes = predicted;

  const cpu::SyntheticStream data{spec.vocab, opt.data_seed, opt.data_period < 0 ? T / 2 : opt.data_period};
  auto draw = [&](int64_t step, int32_t* dst) {  // step from 0; micro-batch i: inputs, targets
    for (int64_t i = 0; i < micro_batches; i++) {
      int32_t* in = dst + 2 * i * B * T;
      cpu::synthetic_batch(in, in + B * T, data, (step * micro_batches + i) * B, B, T);
    }
  };

  AdamWHyper hyper;
  hyper.lr = static_cast<float>(opt.lr);
  hyper.beta1 = static_cast<float>(opt.beta1);
  hyper.beta2 = static_cast<float>(opt.beta2);
  hyper.eps = static_cast<float>(opt.eps);
  hyper.weight_decay = static_cast<float>(opt.weight_decay);
  cudaEvent_t start, stop;
  LOOM_TRY(cuda_status(cudaEventCreate(&start), "event", {}));
  LOOM_TRY(cuda_status(cudaEventCreate(&stop), "event", {}));
  struct EventGuard {
    cudaEvent_t a, b;
    ~EventGuard() {
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
  } event_guard{start, stop};

  draw(0, host.data);
  const float loss_scale = 1.0f / static_cast<float>(micro_batches);
  // The timed steps, then (opt.profile_step) one more with a mark before every kernel.
  StepMarks marks;
  const int64_t total_steps = opt.steps + (opt.profile_step ? 1 : 0);
  for (int64_t step = 0; step < total_steps; step++) {
    const bool profiled = step == opt.steps;
    int32_t* h = host.data + (step % 2) * batch_elems;
    int32_t* d = d_tokens + (step % 2) * batch_elems;
    if (profiled) {
      marks.clear();
      model->set_marks(&marks);
    }
    LOOM_TRY(cuda_status(cudaEventRecord(start, stream), "event", {}));
    LOOM_TRY(cuda_status(cudaMemcpyAsync(d, h, batch_elems * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
                         "token copy", {{"elements", batch_elems}}));
    for (int64_t i = 0; i < micro_batches; i++) {
      const int32_t* in = d + 2 * i * B * T;
      marks.set_micro_batch(i);
      LOOM_TRY(model->forward_backward(in, in + B * T, loss_scale));
    }
    LOOM_TRY(model->update(hyper, static_cast<float>(opt.max_grad_norm), step + 1));
    if (profiled) {
      LOOM_TRY(marks.phase("end", stream));
      model->set_marks(nullptr);
    }
    LOOM_TRY(cuda_status(cudaEventRecord(stop, stream), "event", {}));
    if (step + 1 < total_steps) draw(step + 1, host.data + ((step + 1) % 2) * batch_elems);
    auto loss_norm = model->take_loss_and_norm();  // synchronizes
    if (!loss_norm) return loss_norm.error();
    if (profiled) {
      auto spans = marks.spans();
      if (!spans) return spans.error();
      report.profile = std::move(*spans);
      float ms = 0;
      LOOM_TRY(cuda_status(cudaEventElapsedTime(&ms, start, stop), "event time", {}));
      report.profiled_step_s = ms / 1e3;
      continue;
    }
    float ms = 0;
    LOOM_TRY(cuda_status(cudaEventElapsedTime(&ms, start, stop), "event time", {}));
    report.step_times_s.push_back(ms / 1e3);
    report.losses.push_back(loss_norm->first);
    report.grad_norms.push_back(loss_norm->second);
    if (step == 0) {
      size_t f = 0, t = 0;
      LOOM_TRY(cuda_status(cudaMemGetInfo(&f, &t), "cudaMemGetInfo", {}));
      report.device_used_bytes = static_cast<int64_t>(t - f);
    }
    if (opt.progress) {
      std::fprintf(stderr, "step %4lld/%lld  loss %.4f  grad norm %.3f  %.1f ms  %.0f tokens/s\n",
                   static_cast<long long>(step + 1), static_cast<long long>(opt.steps), loss_norm->first,
                   loss_norm->second, ms, static_cast<double>(micro_batches * B * T) / (ms / 1e3));
    }
  }

  // Median over the steps after warm-up (all steps when there are too few).
  const int64_t skip = opt.steps > opt.warmup_steps ? opt.warmup_steps : 0;
  std::vector<double> timed(report.step_times_s.begin() + skip, report.step_times_s.end());
  std::sort(timed.begin(), timed.end());
  const double step_s = timed.empty() ? 0.0
                        : timed.size() % 2 ? timed[timed.size() / 2]
                                           : 0.5 * (timed[timed.size() / 2 - 1] + timed[timed.size() / 2]);

  Estimate& m = report.measured;
  m.model = spec.name;
  m.cluster = plan.cluster.name;
  m.params = model->num_params();
  m.gpus = 1;
  m.parallel = plan.parallel;
  m.train = plan.train;
  m.micro_batches = micro_batches;
  m.step_time_s = step_s;
  m.tokens_per_s = step_s > 0 ? static_cast<double>(plan.train.global_batch * T) / step_s : 0;
  m.flops_model = model_flops(spec, plan.train.global_batch, T, AttentionFlops::causal);
  m.flops_model_paper = model_flops(spec, plan.train.global_batch, T, AttentionFlops::full);
  // full recompute runs every layer's forward twice (the logits once): hardware_flops' full term
  m.flops_hardware = hardware_flops(spec, plan.train.global_batch, T,
                                    recompute == Recompute::full ? Recompute::full : Recompute::none,
                                    AttentionFlops::causal);
  set_flop_rates(m, plan.cluster.gpu.peak_flops_bf16);
  m.memory = *need;
  // runtime: what the device uses beyond our allocations (CUDA context, cuBLAS, allocator)
  m.memory.runtime = std::max<int64_t>(0, report.device_used_bytes - report.allocated_bytes);
  m.capacity_bytes = static_cast<int64_t>(total_bytes);
  m.usable_bytes = available;
  m.fits = true;
  m.source = StepSource::measured;
  m.measurement.device = report.device_name;

  // The profiled step by phase (the prediction's time categories; one GPU: no communication)
  // and per micro-batch, as StageEstimate.
  StageEstimate stage;
  stage.index = 0;
  stage.layers = spec.layers;
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
  if (!report.profile.empty()) {
    m.time.compute_s = stage.forward_s + stage.backward_s + stage.recompute_s;
    m.time.optimizer_s = stage.optimizer_s;
    const double mb = static_cast<double>(micro_batches);
    stage.forward_s /= mb;
    stage.backward_s /= mb;
    stage.recompute_s /= mb;
    m.stages.push_back(stage);
  }
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
