// loom_calibrate: `loom calibrate` without the rest of the CLI (no MPI needed), for machines
// where only the CUDA backend builds (executor/cuda/calibrate_run.sh uses it).
//   loom_calibrate [--out traces/profiles/NAME.json] [--name NAME] [--quick]
#include <CLI/CLI.hpp>

#include <cstdio>

#include "executor/cuda/calibrate.cuh"

int main(int argc, char** argv) {
  CLI::App app{"loom_calibrate: GPU microbenchmarks into a hardware profile"};
  loom::cuda::CalibrateOptions o;
  bool quiet = false;
  app.add_option("--out", o.out, "profile to write (default: print it)");
  app.add_option("--name", o.name, "profile name (default h100-sxm)");
  app.add_option("--device-id", o.device, "CUDA device ordinal");
  app.add_flag("--quick", o.quick, "a small grid");
  app.add_flag("--quiet", quiet, "no progress lines");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "loom_calibrate: %s\n", e.what());
    return 2;
  }
  o.progress = !quiet;
  return loom::cuda::calibrate_command(o);
}
