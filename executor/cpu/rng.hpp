// Deterministic, portable random numbers for init and synthetic data. The standard library's
// distributions are implementation-defined, so they would give different weights on different
// standard libraries; these are fixed formulas on a splitmix64 stream.
#pragma once
#include <cmath>
#include <cstdint>

namespace loom::cpu {

// splitmix64 (Steele, Lea, Flood 2014): one step of the generator; also a good 64-bit mixer.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A stream of independent numbers; `Rng(mix(seed, k))` gives stream k of seed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return splitmix64(state_ - 0x9e3779b97f4a7c15ULL);
  }
  // uniform in [0, 1) with 53 random bits
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // standard normal by Box-Muller; one normal per two uniforms, no cached state
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t state_;
};

inline uint64_t mix(uint64_t seed, uint64_t stream) {
  return splitmix64(seed ^ splitmix64(stream + 0x632be59bd9b4e019ULL));
}

}  // namespace loom::cpu
