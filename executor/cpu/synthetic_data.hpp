// A seeded synthetic token stream with random access, for tests and benchmarks that need no data
// set. Token p of the stream is a hash of (seed, p mod period) modulo vocab, so any rank can
// produce any slice of any step without coordination (data parallel ranks take disjoint
// sequences of the same global batch).
#pragma once
#include <cstdint>

namespace loom::cpu {

struct SyntheticStream {
  int64_t vocab = 0;
  uint64_t seed = 0;
  int64_t period = 0;  // > 0: the stream repeats every `period` tokens (learnable); 0: never
};

// Token at position p >= 0 of the stream, in [0, vocab).
int32_t synthetic_token(const SyntheticStream& stream, int64_t p);

// Sequences [first_sequence, first_sequence + count) of length T, as llm.c's data loader:
// sequence s covers stream positions [s*T, s*T + T]; inputs are its first T tokens and targets
// the T tokens after each. inputs (count, T), targets (count, T).
void synthetic_batch(int32_t* inputs, int32_t* targets, const SyntheticStream& stream,
                     int64_t first_sequence, int64_t count, int64_t T);

}  // namespace loom::cpu
