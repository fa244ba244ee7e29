// loom_cuda_train: the CUDA backend alone, without the rest of the CLI (the same code as
// `loom execute plan.json --device cuda`; executor/cuda/gpu_test.sh uses it).
//   loom_cuda_train plan.json [--steps K] [--warmup W] [--report measured.json] [--trace step.json] [--quiet]
// Exit codes: 0 done; 2 bad input, a plan this backend does not run, or one that does not fit.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "executor/cuda/cuda_executor.hpp"

int main(int argc, char** argv) {
  CLI::App app{"loom_cuda_train: train a loom plan on one GPU and measure it"};
  std::string plan_path, report_path, trace_path;
  loom::cuda::CudaOptions opt;
  bool quiet = false;
  app.add_option("plan", plan_path, "plan.json (loom plan -o / loom predict -o)")->required();
  app.add_option("--steps", opt.steps, "optimizer steps (default 20)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", opt.warmup_steps, "steps left out of the timing (default 3)")->check(CLI::NonNegativeNumber);
  app.add_option("--report", report_path, "write the measured Estimate (loom predict --json field names)");
  app.add_option("--trace", trace_path, "write the profiled step as a Chrome trace (loom simulate's names)");
  app.add_option("--device-id", opt.device, "CUDA device ordinal (default 0)");
  app.add_option("--lr", opt.lr, "AdamW learning rate (default 3e-4)");
  app.add_option("--seed", opt.seed, "weights seed, as the CPU reference model (default 1337)");
  app.add_flag("--quiet", quiet, "no per-step lines");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "loom_cuda_train: %s\n", e.what());
    return 2;
  }
  opt.progress = !quiet;
  return loom::cuda::execute_cuda_command(plan_path, opt, report_path, trace_path);
}
