// The executor's allocator: every buffer that lives longer than one op is a Tracked<T>, which
// books its bytes in a category of the cost model's MemoryBytes (sim/estimate.hpp) while it
// lives, so the run can report current and peak bytes per category and compare them to the
// prediction to the byte: the CPU executor's bytes by category must equal the cost model's
// exactly for every plan of the test matrix (tests/executor/test_parallel.cpp, [equivalence]).
#pragma once
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace loom::exec {

enum class Mem : int {
  weights = 0,   // parameters this rank stores (its ZeRO-3 shard, else its tp/pp slice)
  grads,         // gradient accumulators (ZeRO-2/3: the shard)
  optimizer,     // AdamW m and v (ZeRO >= 1: the shard)
  activations,   // tensors stashed for backward, and a recompute's rebuilt layer
  logits,        // logits buffer and the cross-entropy probabilities held for backward
  comm_buffers,  // SP gather, PP send/recv, ZeRO-3 gathered layers, ZeRO-2/3 layer gradients
  workspace,     // op scratch: activation gradients and forward temporaries (not stashed)
  count
};
inline const char* mem_name(Mem m) {
  static const char* names[] = {"weights", "grads", "optimizer", "activations", "logits", "comm_buffers",
                                "workspace"};
  return names[static_cast<int>(m)];
}

class Ledger {
 public:
  void add(Mem m, int64_t bytes) {
    auto& c = current_[static_cast<int>(m)];
    c += bytes;
    auto& p = peak_[static_cast<int>(m)];
    if (c > p) p = c;
  }
  void sub(Mem m, int64_t bytes) { current_[static_cast<int>(m)] -= bytes; }
  int64_t current(Mem m) const { return current_[static_cast<int>(m)]; }
  int64_t peak(Mem m) const { return peak_[static_cast<int>(m)]; }

 private:
  std::array<int64_t, static_cast<int>(Mem::count)> current_{}, peak_{};
};

// A zero-initialised array whose bytes are booked in `ledger` under `cat` while it lives.
template <class T>
class Tracked {
 public:
  Tracked() = default;
  Tracked(Ledger& ledger, Mem cat, int64_t n) : ledger_(&ledger), cat_(cat), v_(static_cast<size_t>(n), T{}) {
    ledger_->add(cat_, bytes());
  }
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;
  Tracked(Tracked&& o) noexcept { *this = std::move(o); }
  Tracked& operator=(Tracked&& o) noexcept {
    if (this != &o) {
      release();
      ledger_ = std::exchange(o.ledger_, nullptr);
      cat_ = o.cat_;
      v_ = std::move(o.v_);
      o.v_.clear();
    }
    return *this;
  }
  ~Tracked() { release(); }
  T* data() { return v_.data(); }
  const T* data() const { return v_.data(); }
  int64_t size() const { return static_cast<int64_t>(v_.size()); }
  int64_t bytes() const { return static_cast<int64_t>(v_.size() * sizeof(T)); }
  bool empty() const { return v_.empty(); }
  T& operator[](int64_t i) { return v_[static_cast<size_t>(i)]; }
  const T& operator[](int64_t i) const { return v_[static_cast<size_t>(i)]; }
  std::vector<T>& vec() { return v_; }
  const std::vector<T>& vec() const { return v_; }

 private:
  void release() {
    if (ledger_) ledger_->sub(cat_, bytes());
    ledger_ = nullptr;
    v_.clear();
  }
  Ledger* ledger_ = nullptr;
  Mem cat_ = Mem::workspace;
  std::vector<T> v_;
};

using Buf = Tracked<float>;

}  // namespace loom::exec
