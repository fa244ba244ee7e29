// loom calibrate: GPU microbenchmarks into a hardware profile (sim/profile.hpp) that a cluster
// file names ("profile"). The work is the CUDA backend's (executor/cuda/calibrate.cpp), loaded
// only when this command runs; where it is not available (a build without nvcc, no driver) one
// line says so and loom exits 2. With --cluster, the GEMM model (sim/gemm_model.hpp) is then
// fitted to the GEMMs measured, against that cluster's GPU figures (and a second one to the FP8
// GEMMs, against its FP8 peak, where the GPU has FP8 tensor cores), and written into the
// profile. `--fit-gemm PROFILE --cluster NAME` does only that, on a profile already measured
// (no GPU needed).
#include <cstdio>
#include <memory>
#include <optional>

#include "planner/cli/backend_module.hpp"
#include "planner/cli/command.hpp"
#include "planner/cli/inputs.hpp"
#include "sim/json_reader.hpp"
#include "sim/profile.hpp"
#include "sim/zoo.hpp"

namespace loom::cli {

namespace {
struct CalibrateCliOptions {
  std::string out, name = "h100-sxm", cluster, fit_gemm;
  bool quick = false, quiet = false;
};

// Fits one GEMM model (the bf16 or the FP8 one) to `samples` against `hw`, saying how well.
Expected<GemmModel> fit_table(const std::vector<GemmSample>& samples, const GemmHardware& hw, const char* what,
                              const std::string& in, const ClusterSpec& c, bool quiet) {
  auto g = fit_gemm_model(samples, hw);
  if (!g) return make_error(in, std::string(what) + ": " + g.error().message);
  g->source = "loom calibrate --fit-gemm: the tile and wave model (sim/gemm_model.hpp) fitted by least squares on "
              "ln(time) to this profile's " + std::to_string(g->samples) + " measured " + what + "s, against " +
              c.name + "'s GPU figures (" + (samples.front().in_bytes == 1 ? "FP8" : "bf16") + " peak, SMs, HBM)";
  if (!quiet)
    std::fprintf(stderr,
                 "%s model: mainloop_efficiency %.4f, tile_overhead %.3g s, "
                 "memory_efficiency %.4f, launch %.3g s; over %lld GEMMs: mean |error| %.1f%%, worst %.1f%%\n",
                 what, g->c.mainloop_efficiency, g->c.tile_overhead_s, g->c.memory_efficiency, g->c.launch_s,
                 static_cast<long long>(g->samples), 100 * g->fit_mape, 100 * g->fit_worst);
  return g;
}

// Fits the GEMM model to the profile at `in` (and the FP8 one to its FP8 GEMMs, where it
// measured some) and writes the profile, the models in it, to `out`.
Status fit_profile_gemm(const std::string& in, const std::string& out, const ClusterSpec& c, bool quiet) {
  auto j = read_json_file(in);
  if (!j) return j.error();
  auto p = profile_from_json(*j, in);
  if (!p) return p.error();
  auto g = fit_table(p->gemm_samples(), {c.gpu.peak_flops_bf16, c.gpu.sm_count, c.gpu.hbm_bytes_per_s}, "gemm", in, c,
                     quiet);
  if (!g) return g.error();
  p->gemm_model = *g;
  if (!p->gemm_fp8.empty()) {
    if (c.gpu.peak_flops_fp8 <= 0)
      return make_error(in, "gemm_fp8: the profile measured FP8 GEMMs but --cluster " + c.name +
                                " has no gpu.peak_flops_fp8 to fit them against");
    auto f = fit_table(p->fp8_gemm_samples(), {c.gpu.peak_flops_fp8, c.gpu.sm_count, c.gpu.hbm_bytes_per_s},
                       "FP8 gemm", in, c, quiet);
    if (!f) return f.error();
    p->gemm_model_fp8 = *f;
  }
  const std::string text = to_json(*p).dump(1) + "\n";
  if (out.empty()) {
    std::fputs(text.c_str(), stdout);
    return ok_status();
  }
  return write_text_file_atomic(out, text);
}
}  // namespace

void add_calibrate(CLI::App& app, Run& run) {
  auto o = std::make_shared<CalibrateCliOptions>();
  auto* cmd = app.add_subcommand("calibrate", "GPU microbenchmarks (GEMM shapes, attention, bandwidth, launch, optimizer, memory) into a profile");
  cmd->add_option("--out", o->out, "profile to write, e.g. traces/profiles/h100-sxm.json (default: print)");
  cmd->add_option("--name", o->name, "profile name");
  cmd->add_option("--cluster", o->cluster,
                  "the measured GPU's cluster (zoo name or file): fit the GEMM model to the measured GEMMs against its "
                  "peak, SMs and HBM, and write it into the profile");
  cmd->add_option("--fit-gemm", o->fit_gemm,
                  "only fit the GEMM model to this profile's measured GEMMs (needs --cluster; no GPU); written to --out "
                  "(default: print)");
  cmd->add_flag("--quick", o->quick, "a small grid (tests)");
  cmd->add_flag("--quiet", o->quiet, "no progress lines");
  cmd->callback([o, &run] {
    run = [o] {
      // The cluster is read before anything is measured, so a bad one wastes no GPU time.
      std::optional<ClusterSpec> cluster;
      if (!o->fit_gemm.empty() || !o->cluster.empty()) {
        if (o->cluster.empty()) return fail(Error{"--fit-gemm: needs --cluster (the GPU the profile was measured on)"});
        if (o->fit_gemm.empty() && o->out.empty())
          return fail(Error{"--cluster: needs --out (the profile to fit the GEMM model in)"});
        auto c = load_cluster(o->cluster, "--cluster");
        if (!c) return fail(c.error());
        cluster = std::move(*c);
      }
      if (!o->fit_gemm.empty()) {
        auto s = fit_profile_gemm(o->fit_gemm, o->out, *cluster, o->quiet);
        return s ? 0 : fail(s.error());
      }
      auto backend = load_cuda_backend("calibrate");
      if (!backend) return fail(backend.error());
      const LoomCudaCalibrateArgs args{o->out.c_str(), o->name.c_str(), o->quick ? 1 : 0, o->quiet ? 0 : 1};
      const int rc = (*backend)->calibrate(&args);
      if (rc != 0 || o->cluster.empty()) return rc;
      auto s = fit_profile_gemm(o->out, o->out, *cluster, o->quiet);
      return s ? 0 : fail(s.error());
    };
  });
}

}  // namespace loom::cli
