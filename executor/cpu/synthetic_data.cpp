#include "executor/cpu/synthetic_data.hpp"

#include "executor/cpu/rng.hpp"

namespace loom::cpu {

int32_t synthetic_token(const SyntheticStream& stream, int64_t p) {
  const int64_t q = stream.period > 0 ? p % stream.period : p;
  const uint64_t h = mix(stream.seed, static_cast<uint64_t>(q));
  return static_cast<int32_t>(h % static_cast<uint64_t>(stream.vocab));
}

void synthetic_batch(int32_t* inputs, int32_t* targets, const SyntheticStream& stream,
                     int64_t first_sequence, int64_t count, int64_t T) {
  for (int64_t s = 0; s < count; s++) {
    const int64_t start = (first_sequence + s) * T;
    for (int64_t t = 0; t < T; t++) {
      inputs[s * T + t] = synthetic_token(stream, start + t);
      targets[s * T + t] = synthetic_token(stream, start + t + 1);
    }
  }
}

}  // namespace loom::cpu
