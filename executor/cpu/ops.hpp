// Every op of the CPU reference, for callers that want them all. Conventions shared by all ops:
// plain row-major arrays with explicit shapes (so parallel code can call them on shards), forward
// overwrites its outputs, backward adds (+=) into its gradient outputs, no allocation visible to
// the caller and no global state. Each op is instantiated for float (the model) and double (the
// finite-difference tests).
#pragma once
#include "executor/cpu/adamw.hpp"
#include "executor/cpu/attention.hpp"
#include "executor/cpu/crossentropy.hpp"
#include "executor/cpu/encoder.hpp"
#include "executor/cpu/flop_counter.hpp"
#include "executor/cpu/gelu.hpp"
#include "executor/cpu/grad_norm.hpp"
#include "executor/cpu/layernorm.hpp"
#include "executor/cpu/matmul.hpp"
#include "executor/cpu/residual.hpp"
#include "executor/cpu/rmsnorm.hpp"
#include "executor/cpu/rope.hpp"
#include "executor/cpu/swiglu.hpp"
