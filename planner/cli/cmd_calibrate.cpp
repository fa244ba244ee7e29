// loom calibrate: GPU microbenchmarks into a hardware profile (sim/profile.hpp) that a cluster
// file names ("profile"). The work is the CUDA backend's (executor/cuda/calibrate.cpp), loaded
// only when this command runs; where it is not available (a build without nvcc, no driver) one
// line says so and loom exits 2.
#include <memory>

#include "planner/cli/command.hpp"
#include "planner/cli/backend_module.hpp"
#include "planner/cli/inputs.hpp"

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
      auto backend = load_cuda_backend("calibrate");
      if (!backend) return fail(backend.error());
      const LoomCudaCalibrateArgs args{o->out.c_str(), o->name.c_str(), o->quick ? 1 : 0, o->quiet ? 0 : 1};
      return (*backend)->calibrate(&args);
    };
  });
}

}  // namespace loom::cli
