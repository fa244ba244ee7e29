#include "sim/simulated_estimate.hpp"

namespace loom {

Estimate simulated_estimate(const Estimate& analytical, const SimResult& sim) {
  Estimate e = analytical;
  e.source = StepSource::simulated;
  e.step_time_s = sim.step_time_s;
  e.simulated_step_time_s = sim.step_time_s;
  e.time = sim.time;
  // Tokens per second, achieved TFLOP/s and MFU (model FLOPs per second over peak, Chowdhery
  // et al. 2022, "PaLM", appendix B) all divide a fixed amount of work by the step time, so
  // they scale by analytical step / simulated step.
  const double scale = sim.step_time_s > 0 ? analytical.step_time_s / sim.step_time_s : 0.0;
  e.tokens_per_s = analytical.tokens_per_s * scale;
  e.tflops_per_gpu = analytical.tflops_per_gpu * scale;
  e.mfu = analytical.mfu * scale;
  e.tflops_per_gpu_paper = analytical.tflops_per_gpu_paper * scale;
  e.mfu_paper = analytical.mfu_paper * scale;
  SimulationDetail& d = e.simulation;
  d.analytical_step_time_s = analytical.step_time_s;
  d.tasks = sim.task_count;
  d.edges = sim.edge_count;
  d.contention_s = sim.contention_s;
  for (const StageSim& s : sim.stages) {
    d.stage_time.push_back(s.time);
    d.stage_end_s.push_back(s.end_s);
    d.stage_peak_in_flight.push_back(s.peak_in_flight);
  }
  return e;
}

}  // namespace loom
