// Shared by every CUDA op of executor/cuda: the bf16 type, and errors as values (a Status, as
// sim/expected.hpp: no op exits or throws; only main turns an error into an exit code) that
// name the op and its shapes. Host-only declarations: this header compiles with the host
// C++ compiler too, so tests and the CLI include the ops' .cuh files without nvcc.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "sim/expected.hpp"

namespace loom::cuda {

using bf16 = __nv_bfloat16;
using Dims = std::initializer_list<std::pair<const char*, int64_t>>;

// "op (N=32768, C=768)"
inline std::string describe(const char* op, Dims dims) {
  std::string s = op;
  s += " (";
  bool first = true;
  for (const auto& [name, value] : dims) {
    if (!first) s += ", ";
    s += name;
    s += "=";
    s += std::to_string(value);
    first = false;
  }
  return s + ")";
}

// A shape a kernel does not handle: one line naming the op, its shapes and the rule.
inline Error shape_error(const char* op, Dims dims, const std::string& rule) {
  return Error{describe(op, dims) + ": " + rule};
}

inline Status cuda_status(cudaError_t e, const char* op, Dims dims) {
  if (e == cudaSuccess) return ok_status();
  return Error{describe(op, dims) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e)};
}

// After a launch: a bad launch configuration (or a sticky earlier fault) comes back with the op
// and its shapes. Asynchronous faults surface at the next synchronizing call.
inline Status check_launch(const char* op, Dims dims) {
  return cuda_status(cudaGetLastError(), op, dims);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace loom::cuda

// Returns the error of a Status-returning expression to the caller.
#define LOOM_TRY(expr)                \
  do {                                \
    ::loom::Status loom_s_ = (expr);  \
    if (!loom_s_) return loom_s_.error(); \
  } while (0)
