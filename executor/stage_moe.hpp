// The MoE block of a layer on one rank of a plan (executor/cpu/moe.hpp's math): the rank routes
// the token rows it holds (the sequence-parallel shard with tp > 1, else all N), the rows travel
// by Comm::all_to_all over ep and the etp collectives (sim/rank_grid.hpp's
// ExpertGrid), and the result is added to the residual stream. The router is replicated over tp
// and sees only this rank's rows, so its gradient is summed over tp with the other replicated
// ones (trainer_optimizer.cpp's sp_sync); the experts' over the expert-data-parallel group
// (dp_sync). Shared experts run as the dense MLP does (Megatron's shared expert): SP all-gather,
// column- and row-parallel over tp, reduce-scatter.
#pragma once
#include <cstdint>
#include <utility>

#include "executor/cpu/moe.hpp"
#include "executor/ledger.hpp"

namespace loom::exec {

// What a MoE layer keeps for backward, booked under activations at its real size (the routing
// decides it) from the forward until the stash is released.
struct MoeStash {
  cpu::MoeState<float> s;
  MoeStash() = default;
  MoeStash(const MoeStash&) = delete;
  MoeStash& operator=(const MoeStash&) = delete;
  MoeStash(MoeStash&& o) noexcept { *this = std::move(o); }
  MoeStash& operator=(MoeStash&& o) noexcept {
    if (this != &o) {
      release();
      s = std::move(o.s);
      ledger_ = std::exchange(o.ledger_, nullptr);
      booked_ = std::exchange(o.booked_, 0);
    }
    return *this;
  }
  ~MoeStash() { release(); }
  void book(Ledger& l) {
    release();
    ledger_ = &l;
    booked_ = s.bytes();
    l.add(Mem::activations, booked_);
  }
  void release() {
    if (ledger_) ledger_->sub(Mem::activations, booked_);
    ledger_ = nullptr;
    booked_ = 0;
  }

 private:
  Ledger* ledger_ = nullptr;
  int64_t booked_ = 0;
};

}  // namespace loom::exec
