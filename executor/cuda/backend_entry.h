/* The CUDA backend as a loadable module (libloom_cuda.so): the C-linkage entry table that
   `loom` looks up with dlsym when `execute --device cuda` or `calibrate` runs, so a loom process
   that never touches a GPU never maps the CUDA runtime or cuBLASLt (planner/cli/cuda_backend.cpp
   loads it). Plain C types only: the module and the binary may be built by different compilers.
   Each entry returns the exit code: 0 done, 2 bad input, 3 a CUDA failure (one line on stderr). */
#ifndef LOOM_EXECUTOR_CUDA_BACKEND_ENTRY_H
#define LOOM_EXECUTOR_CUDA_BACKEND_ENTRY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct below changes; the loader refuses a module of another version. */
#define LOOM_CUDA_BACKEND_ABI 3

/* `loom execute --device cuda`: every flag of the CPU path, for the one trainer (execute_plan)
   on the CUDA compute backend. Strings are never NULL ("" = not given); integers -1 = not given. */
struct LoomCudaExecuteArgs {
  const char* plan_path;   /* a plan.json that `loom` has already read and checked */
  const char* report_path; /* "" = no report */
  const char* trace_path;  /* "" = no trace */
  const char* save_dir;
  const char* resume_dir;
  const char* weights_out;
  int64_t steps;
  uint64_t seed;
  int progress;            /* per-step loss lines on stdout (rank 0) */
  double lr;               /* AdamW learning rate; 0 = the CUDA default (3e-4) */
  double timeout_s;        /* longest wait on a peer (MPI, NCCL) */
  int64_t emulate_rank;    /* -1: a real run under mpirun */
  /* fault injection (the reliability tests) */
  int64_t die_at_step, die_rank, nan_at_step;
  int stall;
  int64_t save_fault_rank, save_fault_bytes;
  const char* save_fault_point;
};

struct LoomCudaCalibrateArgs {
  const char* out;         /* profile path, "" = print only */
  const char* name;
  int quick;
  int progress;
};

struct LoomCudaBackend {
  uint32_t abi_version;    /* LOOM_CUDA_BACKEND_ABI */
  int (*execute)(const struct LoomCudaExecuteArgs* args);
  int (*calibrate)(const struct LoomCudaCalibrateArgs* args);
};

/* The one exported symbol of libloom_cuda.so. */
#define LOOM_CUDA_BACKEND_SYMBOL "loom_cuda_backend"
const struct LoomCudaBackend* loom_cuda_backend(void);

#ifdef __cplusplus
}
#endif

#endif
