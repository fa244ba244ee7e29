#include <cstdio>
#include <fstream>

#include "executor/cuda/cuda_executor.hpp"
#include "sim/plan.hpp"

namespace loom::cuda {

int execute_cuda_command(const std::string& plan_path, const CudaOptions& opt,
                         const std::string& report_path, const std::string& trace_path) {
  const auto fail = [](const std::string& message) {
    std::fprintf(stderr, "loom: %s\n", message.c_str());
    return 2;
  };
  std::ifstream in(plan_path);
  if (!in) return fail(plan_path + ": cannot open");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return fail(plan_path + ": not valid JSON");
  auto plan = plan_from_json(j, plan_path);
  if (!plan) return fail(plan.error().message);
  CudaOptions o = opt;
  if (!trace_path.empty()) o.profile_step = true;
  auto report = run_cuda(*plan, o);
  if (!report) return fail(report.error().message);
  const Estimate& m = report->measured;
  std::printf("%s on %s: B=%lld T=%lld step %.4f s, %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%% (causal attention FLOPs), "
              "loss %.4f -> %.4f, allocated %.2f GiB (predicted: step %.4f s, %.2f GiB)\n",
              m.model.c_str(), report->device_name.c_str(),
              static_cast<long long>(m.parallel.micro_batch), static_cast<long long>(m.train.seq),
              m.step_time_s, m.tokens_per_s, m.tflops_per_gpu, 100 * m.mfu, report->losses.front(),
              report->losses.back(), static_cast<double>(report->allocated_bytes) / (1 << 30),
              report->predicted.step_time_s,
              static_cast<double>(report->predicted.memory.peak()) / (1 << 30));
  if (!report_path.empty()) {
    std::ofstream out(report_path);
    out << measured_report_to_json(*report).dump(2) << "\n";
    if (!out) return fail(report_path + ": cannot write");
  }
  if (!trace_path.empty()) {
    std::ofstream out(trace_path);
    out << measured_trace_json(*report).dump() << "\n";
    if (!out) return fail(trace_path + ": cannot write");
  }
  return 0;
}

}  // namespace loom::cuda
