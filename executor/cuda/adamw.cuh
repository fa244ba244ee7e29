// AdamW on fp32 master weights, moments and gradients, writing the bf16 working copy the
// forward reads (the 16-bytes-per-parameter layout the cost model assumes, with fp32 gradients).
// One launch covers every tensor: a chunk table says which range each thread block updates and
// whether it decays (llm.c launches per tensor; 600 launches per step for GPT-2 1.5B).
#pragma once
#include <cstdint>
#include <vector>

#include "executor/cuda/common.cuh"

namespace loom::cuda {

struct AdamWChunk {  // one thread block's range of the flat buffers
  int64_t offset = 0;
  int64_t count = 0;
  float weight_decay = 0;
};

struct AdamWHyper {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f;
};

// Splits tensors (offset, numel, decays) into chunks of at most `chunk` elements.
struct TensorRange {
  int64_t offset = 0, numel = 0;
  bool decay = false;
};
std::vector<AdamWChunk> adamw_chunks(const std::vector<TensorRange>& tensors, float weight_decay,
                                     int64_t chunk = 1 << 16);

// For every chunk: g = grads * (*grad_scale); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// master -= lr (m / (1-b1^step) / (sqrt(v / (1-b2^step)) + eps) + wd master) (torch.optim.AdamW,
// executor/cpu/adamw.hpp); params = bf16(master); grads = 0, ready for the next accumulation.
// grad_scale: one device float (the clip coefficient) or nullptr for 1.
Status adamw_update(bf16* params, float* master, float* grads, float* m, float* v,
                    const AdamWChunk* chunks_device, int64_t num_chunks, const float* grad_scale,
                    const AdamWHyper& hyper, int64_t step, cudaStream_t stream);

// params (n) = bf16(master (n)).
Status copy_to_bf16(bf16* params, const float* master, int64_t n, cudaStream_t stream);

}  // namespace loom::cuda
