#include "executor/cuda/cuda_execute.hpp"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "executor/cuda/compute_cuda.hpp"
#include "executor/cuda/emulated_device_comm.hpp"
#include "executor/cuda/plan_limits.hpp"
#include "executor/cuda/staged_comm.hpp"
#include "executor/units.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/rank_grid.hpp"
#ifdef LOOM_WITH_NCCL
#include "executor/cuda/nccl_comm.hpp"
#endif

namespace loom::cuda {

namespace {

int refuse_line(const std::string& message, bool print) {
  if (print) std::fprintf(stderr, "loom: %s\n", message.c_str());
  return 2;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

Expected<Plan> read_plan(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(path, "cannot open");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return make_error(path, "not valid JSON");
  auto plan = plan_from_json(j, path);
  if (!plan) return plan.error();
  plan->prediction = CostModel(plan->model, plan->cluster, plan->train).evaluate(plan->parallel);
  return plan;
}

// The per-rank shapes the kernels see (trainer.cpp's setup_dims, the fields check_cuda_dims reads).
exec::Dims kernel_dims(const Plan& plan) {
  const auto& p = plan.parallel;
  const auto& m = plan.model;
  exec::Dims d;
  d.T = plan.train.seq;
  d.C = m.hidden;
  d.hd = m.head_dim();
  d.Fl = m.ffn_hidden / p.tp;
  return d;
}

// Where this rank runs: its GPU (ranks of a node spread round-robin over its GPUs) and how many
// ranks of the node share that GPU.
struct Placement {
  int device = 0, devices = 0, ranks_per_device = 1;
};
Expected<Placement> place(int world_rank, int world) {
  Placement pl;
  if (cudaGetDeviceCount(&pl.devices) != cudaSuccess || pl.devices < 1)
    return make_error("--device", "cuda: no CUDA device is visible to this process");
  const int local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", world_rank);
  const int local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", world);
  pl.device = local_rank % pl.devices;
  pl.ranks_per_device = (local_size + pl.devices - 1) / pl.devices;
  return pl;
}

// The same refusals on every rank (same plan, same machine): rank 0 prints the line.
Status check_machine(const Plan& plan, const Placement& pl) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, pl.device) != cudaSuccess)
    return make_error("--device", "cuda: cannot read the properties of GPU " + std::to_string(pl.device));
  if (prop.major < 8)
    return make_error("--device", std::string("cuda: the kernels need sm_80 or newer (GPU ") + prop.name + " is sm_" +
                                      std::to_string(prop.major * 10 + prop.minor) + ")");
  return check_ranks_fit(pl.ranks_per_device, plan.prediction.memory.peak(), static_cast<int64_t>(prop.totalGlobalMem),
                         pl.device);
}

std::vector<exec::Group> rank_groups(const Plan& plan, int rank, int world) {
  const auto& p = plan.parallel;
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  std::vector<exec::Group> groups;
  if (!grid) return groups;
  for (Dim d : {Dim::tp, Dim::dp, Dim::pp}) groups.push_back(exec::make_group(*grid, d, rank));
  exec::Group w;
  for (int r = 0; r < world; ++r) w.ranks.push_back(r);
  w.index = rank;
  groups.push_back(w);
  return groups;
}

// The device comm: NCCL when each rank has its own GPU (and NCCL was built), else staged.
Expected<std::unique_ptr<exec::Comm>> device_comm(exec::Comm& host, const Plan& plan, const Placement& pl,
                                                  double timeout_s, cudaStream_t stream) {
#ifdef LOOM_WITH_NCCL
  if (pl.ranks_per_device == 1 && host.world() > 1) {
    exec::NcclOptions no;
    no.timeout_s = timeout_s;
    no.device = pl.device;
    no.compute_stream = stream;
    return exec::make_nccl_comm(host, rank_groups(plan, host.rank(), host.world()), no);
  }
#else
  (void)plan;
  (void)timeout_s;
#endif
  (void)pl;
  return std::unique_ptr<exec::Comm>(std::make_unique<exec::StagedComm>(host, stream));
}

void print_losses(const nlohmann::json& report, int64_t steps, int world) {
  const auto& losses = report["losses"];
  for (size_t i = 0; i < losses.size(); ++i)
    std::printf("step %4lld  loss %.6f\n",
                static_cast<long long>(steps - static_cast<int64_t>(losses.size()) + static_cast<int64_t>(i) + 1),
                losses[i].get<double>());
  std::printf("%d ranks on %s, %.3f s per step\n", world, report.value("device", std::string("cuda")).c_str(),
              report["step_time_s"].get<double>());
}

int write_report(const std::string& path, const nlohmann::json& report) {
  if (path.empty()) return 0;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << report.dump(2) << "\n";
    if (!out) return refuse_line(path + ": cannot write the report", true);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return refuse_line(path + ": cannot write the report", true);
  return 0;
}

exec::ComputeFactory cuda_factory(cudaStream_t stream) {
  return [stream](const exec::ComputeSetup& s) { return exec::make_cuda_compute(s, {stream}); };
}

// --emulate-rank: one process, no MPI, every transfer a device copy.
int run_emulated(const ParallelRunArgs& a, const Plan& plan) {
  const int world = static_cast<int>(plan.parallel.gpus()), rank = static_cast<int>(a.emulate_rank);
  auto pl = place(0, 1);
  if (!pl) return refuse_line(pl.error().message, true);
  if (auto st = check_machine(plan, *pl); !st) return refuse_line(st.error().message, true);
  if (cudaSetDevice(pl->device) != cudaSuccess) return refuse_line("--device: cuda: cannot select the GPU", true);
  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) return refuse_line("--device: cuda: cannot create a stream", true);
  auto comm = exec::make_emulated_device_comm(rank, world, stream);
  auto host = exec::make_emulated_comm(rank, world);
  exec::ExecOptions eo = a.exec;
  eo.emulated = true;
  auto report = exec::execute_plan(plan, *comm, eo, cuda_factory(stream), nullptr, host.get());
  if (!report) {
    std::fprintf(stderr, "loom: %s\n", report.error().message.c_str());
    return 3;
  }
  (*report)["emulated_copy_s"] = comm->copy_s();  // the stand-in transfers of the last step
  if (a.progress)
    std::printf("rank %d of %d (emulated, cuda): %.3f s per step, peak %lld bytes, copies %.3f s\n", rank, world,
                (*report)["step_time_s"].get<double>(),
                static_cast<long long>((*report)["memory_bytes"]["peak"].get<int64_t>()), comm->copy_s());
  return write_report(a.report_path, *report);
}

// How a failed run ends the job (cmd_execute.cpp's CPU path, the same rules).
int end_failed(const Error& e, exec::Ending ending, int rank) {
  if (ending != exec::Ending::refused || rank == 0) std::fprintf(stderr, "loom: %s\n", e.message.c_str());
  if (ending == exec::Ending::abort) exec::mpi_abort(3);
  exec::mpi_finalize();
  return ending == exec::Ending::refused ? 2 : 3;
}

int run_ranks(const ParallelRunArgs& a, const Plan& plan) {
  auto mpi = exec::make_mpi_comm(nullptr, nullptr, {a.timeout_s});
  if (!mpi) return refuse_line(mpi.error().message, true);
  exec::Comm& host = **mpi;
  const int rank = host.rank(), world = host.world();
  const int64_t want = plan.parallel.gpus();
  if (world != want) {
    refuse_line(a.plan_path + ": the plan needs " + std::to_string(want) + " ranks (dp " +
                    std::to_string(plan.parallel.dp) + " x tp " + std::to_string(plan.parallel.tp) + " x pp " +
                    std::to_string(plan.parallel.pp) + "), but " + std::to_string(world) + " were started (mpirun -np " +
                    std::to_string(want) + ")",
                rank == 0);
    exec::mpi_finalize();
    return 2;
  }
  auto pl = place(rank, world);
  Status machine = pl ? check_machine(plan, *pl) : Status(pl.error());
  if (machine && cudaSetDevice(pl->device) != cudaSuccess) machine = make_error("--device", "cuda: cannot select the GPU");
  if (!machine) {
    refuse_line(machine.error().message, rank == 0);
    exec::mpi_finalize();
    return 2;
  }
  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) return end_failed(Error{"cannot create a CUDA stream"}, exec::Ending::abort, rank);
  auto comm = device_comm(host, plan, *pl, a.timeout_s, stream);
  if (!comm) return end_failed(comm.error(), exec::Ending::abort, rank);
  exec::Ending ending = exec::Ending::abort;
  auto report = exec::execute_plan(plan, **comm, a.exec, cuda_factory(stream), &ending, &host);
  if (!report) return end_failed(report.error(), ending, rank);
  int code = 0;
  if (rank == 0) {
    if (auto* staged = dynamic_cast<exec::StagedComm*>(comm->get()))
      (*report)["shared_gpu_staging"] = {{"ranks_per_gpu", pl->ranks_per_device},
                                         {"copy_s", staged->staging().copy_s},
                                         {"copied_bytes", staged->staging().copied_bytes}};
    if (a.progress) print_losses(*report, a.exec.steps, world);
    code = write_report(a.report_path, *report);
    if (code != 0) exec::mpi_abort(code);
  }
  comm->reset();
  exec::mpi_finalize();
  return code;
}

}  // namespace

Status check_ranks_fit(int64_t ranks_per_device, int64_t peak_bytes, int64_t device_bytes, int device) {
  if (ranks_per_device < 1 || peak_bytes <= 0 || ranks_per_device * peak_bytes <= device_bytes) return ok_status();
  return make_error("mpirun -np",
                    std::to_string(ranks_per_device) + " ranks share GPU " + std::to_string(device) +
                        ": ranks per GPU x the plan's predicted peak per rank (" + std::to_string(peak_bytes) +
                        " bytes) must fit its " + std::to_string(device_bytes) + " bytes (got " +
                        std::to_string(ranks_per_device * peak_bytes) + " bytes)");
}

Status check_parallel_plan(const Plan& plan) {
  if (auto st = check_cuda_plan(plan); !st) return st;
  if (auto st = exec::check_cuda_dims(kernel_dims(plan)); !st) return st;
  if (!plan.prediction.fits) return make_error("plan", "does not fit: " + plan.prediction.reason);
  return ok_status();
}

int execute_parallel_command(const ParallelRunArgs& args) {
  auto plan = read_plan(args.plan_path);
  if (!plan) return refuse_line(plan.error().message, env_int("OMPI_COMM_WORLD_RANK", 0) == 0);
  if (auto st = check_parallel_plan(*plan); !st)
    return refuse_line(st.error().message, env_int("OMPI_COMM_WORLD_RANK", 0) == 0);
  if (args.emulate_rank >= 0) return run_emulated(args, *plan);
  return run_ranks(args, *plan);
}

}  // namespace loom::cuda
