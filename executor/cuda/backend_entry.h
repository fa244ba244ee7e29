/* The CUDA backend as a loadable module (libloom_cuda.so): the C-linkage entry table that
   `loom` looks up with dlsym when `execute --device cuda` or `calibrate` runs, so a loom process
   that never touches a GPU never maps the CUDA runtime or cuBLASLt (planner/cli/backend_module.cpp
   loads it). Plain C types only: the module and the binary may be built by different compilers.
   Each entry returns the exit code: 0 done, 2 bad input, 3 a CUDA failure (one line on stderr).
   `execute` takes the arguments the CPU module takes (executor/backend_entry.h). */
#ifndef LOOM_EXECUTOR_CUDA_BACKEND_ENTRY_H
#define LOOM_EXECUTOR_CUDA_BACKEND_ENTRY_H

#include <stdint.h>

#include "executor/backend_entry.h" /* LoomExecuteArgs, LOOM_BACKEND_ABI */

#ifdef __cplusplus
extern "C" {
#endif

struct LoomCudaCalibrateArgs {
  const char* out;         /* profile path, "" = print only */
  const char* name;
  int quick;
  int progress;
};

struct LoomCudaBackend {
  uint32_t abi_version;    /* LOOM_BACKEND_ABI */
  int (*execute)(const struct LoomExecuteArgs* args);
  int (*calibrate)(const struct LoomCudaCalibrateArgs* args);
};

/* The one exported symbol of libloom_cuda.so. */
#define LOOM_CUDA_BACKEND_SYMBOL "loom_cuda_backend"
const struct LoomCudaBackend* loom_cuda_backend(void);

#ifdef __cplusplus
}
#endif

#endif
