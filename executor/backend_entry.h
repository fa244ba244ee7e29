/* The executors as loadable modules: `loom` links neither Open MPI nor the CUDA runtime, and
   dlopens the module a command needs when it runs (planner/cli/backend_module.cpp):
     libloom_cpu.so   the CPU reference trainer over MPI (`execute --device cpu`), this header;
     libloom_cuda.so  the CUDA backend (`execute --device cuda`, `calibrate`),
                      executor/cuda/backend_entry.h.
   So `make plan` builds and runs `loom` on a machine without Open MPI or CUDA, and no command
   but `execute` maps them. Each module exports one C function returning its entry table; plain C
   types only, so the module and the binary may be built by different compilers. Each entry
   returns `loom`'s exit code: 0 done, 2 bad input (one line on stderr), 3 a failure during the
   run or an internal error (one line). No C++ exception crosses (executor/backend_guard.hpp). */
#ifndef LOOM_EXECUTOR_BACKEND_ENTRY_H
#define LOOM_EXECUTOR_BACKEND_ENTRY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct here or in executor/cuda/backend_entry.h changes; the loader refuses
   a module of another version. Every entry table starts with it. */
#define LOOM_BACKEND_ABI 4

/* `loom execute`: every flag, for the one trainer (executor/trainer.hpp) on either device.
   `loom` has read the plan and checked the flags and the outputs before it loads a module.
   Strings are never NULL ("" = not given); integers -1 = not given. */
struct LoomExecuteArgs {
  const char* plan_path;   /* the plan file, as named on the command line (messages) */
  const char* plan_json;   /* the plan as loom read it, --stage-layers applied (the CPU module runs
                              this; the CUDA module reads plan_path: it refuses --stage-layers) */
  const char* report_path; /* "" = no report */
  const char* trace_path;  /* "" = no trace */
  const char* save_dir;
  const char* resume_dir;
  const char* weights_out;
  int64_t steps;
  uint64_t seed;
  int progress;            /* per-step loss lines on stdout (rank 0) */
  double lr;               /* AdamW learning rate; 0 = the device's default */
  double timeout_s;        /* longest wait on a peer (MPI, NCCL) */
  int64_t emulate_rank;    /* -1: a real run under mpirun */
  /* fault injection (the reliability tests) */
  int64_t die_at_step, die_rank, nan_at_step;
  int stall;
  int64_t save_fault_rank, save_fault_bytes;
  const char* save_fault_point;
};

/* libloom_cpu.so's entry table. */
struct LoomCpuBackend {
  uint32_t abi_version;    /* LOOM_BACKEND_ABI */
  int (*execute)(const struct LoomExecuteArgs* args);
};

/* The one exported symbol of libloom_cpu.so. */
#define LOOM_CPU_BACKEND_SYMBOL "loom_cpu_backend"
const struct LoomCpuBackend* loom_cpu_backend(void);

#ifdef __cplusplus
}
#endif

#endif
