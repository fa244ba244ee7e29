// What `loom execute` checks before any work starts, on either device: its flags, its outputs and
// the fault points of the reliability tests. Pure checks over the plan and the file system, in a
// library without MPI (loom_executor_checks): the `loom` binary, which links neither Open MPI nor
// the trainer (they are loaded as a module, executor/backend_entry.h), runs them before loading
// one, and the modules run them again for callers that reach them directly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::exec {

// A named point in a save at which a test makes one rank kill itself (SIGKILL), to check that
// the last published checkpoint survives: after `bytes` bytes of its rank file, or at `point`.
struct SaveFault {
  int64_t rank = -1;
  int64_t bytes = -1;
  std::string point;
};
// The named points, in the order a save passes them (every rank reaches the first, rank 0 alone
// the others).
const std::vector<std::string>& save_fault_points();

// Whether `path` can be written as a file (`flag` names it in the error): its folder exists and
// is writable, and the path is not a folder or a non-writable file. Creates nothing.
Status check_output_file(const std::string& path, const std::string& flag);
// Whether `path` can be written as a checkpoint folder: it is a writable folder, or does not
// exist and its nearest existing ancestor is a writable folder. Creates nothing.
Status check_output_folder(const std::string& path, const std::string& flag);

// --steps against the plan: token positions (step x global batch + sequence) x (seq + 1) are
// int64 (cpu/synthetic_data), so steps x global_batch x (seq + 1) must not overflow.
Status check_step_count(int64_t steps, const Plan& plan);

// What the plan cannot run on the CPU executor (fp32, unfused attention but for cp's ring, the
// model features and parallel layouts its trainer implements), as one line naming the field:
// checked by `loom execute` before it loads the module, and by the trainer before any allocation.
Status check_cpu_plan(const Plan& plan);

// --emulate-rank's rules, the same on both devices: a rank of the plan, one process (not under
// mpirun with more than one), and no real model to save, resume or write (`writes_model`).
Status check_emulation(int64_t emulate_rank, const Plan& plan, bool writes_model);

}  // namespace loom::exec
