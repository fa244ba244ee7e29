// loom calibrate: GPU microbenchmarks into a hardware profile (sim/profile.hpp) that a cluster
// file names ("profile"). The work is the CUDA backend's (executor/cuda/calibrate.cpp); a build
// without CUDA says so and exits 2.
#include <fmt/core.h>

#include <memory>

#ifdef LOOM_CUDA
#include "executor/cuda/calibrate.cuh"
#endif
#include "planner/cli/command.hpp"

namespace loom::cli {

namespace {
struct CalibrateCliOptions {
  std::string out, name = "h100-sxm";
  bool quick = false, quiet = false;
};
}  // namespace

void add_calibrate(CLI::App& app, Run& run) {
  auto o = std::make_shared<CalibrateCliOptions>();
  auto* cmd = app.add_subcommand("calibrate", "GPU microbenchmarks (GEMM shapes, attention, bandwidth, launch, optimizer, memory) into a profile");
  cmd->add_option("--out", o->out, "profile to write, e.g. traces/profiles/h100-sxm.json (default: print)");
  cmd->add_option("--name", o->name, "profile name");
  cmd->add_flag("--quick", o->quick, "a small grid (tests)");
  cmd->add_flag("--quiet", o->quiet, "no progress lines");
  cmd->callback([o, &run] {
    run = [o] {
#ifdef LOOM_CUDA
      cuda::CalibrateOptions c;
      c.out = o->out;
      c.name = o->name;
      c.quick = o->quick;
      c.progress = !o->quiet;
      return cuda::calibrate_command(c);
#else
      fmt::print(stderr, "loom: calibrate: this build has no CUDA backend (configure with nvcc)\n");
      return 2;
#endif
    };
  });
}

}  // namespace loom::cli
