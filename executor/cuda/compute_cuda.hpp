// The CUDA backend behind the Compute interface (executor/compute.hpp): the same units, the same
// Megatron shards and the same collectives as the CPU reference (executor/stage.cpp), in bf16 on
// the tensor cores with fp32 master weights, so the one trainer (execute_plan) runs every plan on
// a GPU with the comm the ranks share (NCCL, the staged comm, or an emulated one).
//
// Precision, and where each copy lives (all device memory):
// - The trainer's buffers stay fp32, as the interface's floats: master weights (and ZeRO-3's
//   gathered units), gradients, AdamW moments, the residual stream between layers (x, out, d)
//   and everything the Comm moves (TP and SP collectives run on fp32 rows, pipeline transfers
//   carry fp32 activations), so checkpoints and cross-backend comparisons read the same numbers.
// - The bf16 working copy of a unit's weights is transient: each layer_*/head_* call casts the
//   unit's fp32 tensors into one bf16 scratch laid out for the fused kernels (q|k|v rows as one
//   (Q + 2 KV, C) projection, gate|up as one (2F, C)); 6 bytes per parameter per call, booked as
//   workspace. No bf16 copy outlives a call, so a ZeRO-3 gather, an optimizer step or a resumed
//   checkpoint never leaves a stale one.
// - Activations inside a layer are bf16 (norm outputs, q/k/v, attention output, MLP); norm
//   statistics, the attention log-sum-exp, logits and probabilities are fp32. GEMMs accumulate in
//   fp32 and add weight gradients into the fp32 gradient buffer directly (grad_dtype fp32).
// - Attention is the fused kernel (attention.cuh): it never stores the T x T probabilities, so
//   both stash kinds keep the same tensors and selective recompute costs nothing extra.
// Every unit call ends with the stream drained, so the trainer's wall-clock phases (forward,
// backward, recompute, optimizer) time the GPU work they launched.
#pragma once
#include <cuda_runtime.h>

#include <memory>

#include "executor/compute.hpp"

namespace loom::exec {

struct CudaComputeOptions {
  cudaStream_t stream = nullptr;  // the stream every kernel of this rank runs on (the comm's too)
};

// What the kernels need of the shapes (head size 64 or 128, T a multiple of 64, 16-byte rows):
// one line naming the dimension and the rule. make_cuda_compute checks it first.
Status check_cuda_dims(const Dims& d);

Expected<std::unique_ptr<Compute>> make_cuda_compute(const ComputeSetup& setup, const CudaComputeOptions& options);

}  // namespace loom::exec
