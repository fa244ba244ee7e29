// The fp32 CPU reference behind the Compute interface: buffers are host arrays, the units' math
// is stage.cpp's, the optimizer cpu::adamw_step.
#include <algorithm>
#include <new>
#include <string>

#include "executor/compute.hpp"
#include "executor/stage.hpp"

namespace loom::exec {

Buffer::Buffer(Ledger& ledger, Mem cat, float* data, int64_t n, Free free)
    : ledger_(&ledger), cat_(cat), data_(data), n_(n), free_(free) {
  ledger_->add(cat_, bytes());
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    ledger_ = std::exchange(o.ledger_, nullptr);
    cat_ = o.cat_;
    data_ = std::exchange(o.data_, nullptr);
    n_ = std::exchange(o.n_, 0);
    free_ = std::exchange(o.free_, nullptr);
  }
  return *this;
}

void Buffer::release() {
  if (ledger_) ledger_->sub(cat_, bytes());
  if (free_ && data_) free_(data_);
  ledger_ = nullptr;
  data_ = nullptr;
  n_ = 0;
}

namespace {

struct CpuLayerState final : LayerState {
  LayerStash s;
};
struct CpuHeadState final : HeadState {
  HeadStash s;
};
LayerStash& stash(LayerState& st) { return static_cast<CpuLayerState&>(st).s; }
HeadStash& stash(HeadState& st) { return static_cast<CpuHeadState&>(st).s; }

void free_host(float* p) { delete[] p; }

class CpuCompute final : public Compute {
 public:
  explicit CpuCompute(const ComputeSetup& s)
      : comm_(s.comm), tp_(s.tp), d_(s.d), ledger_(s.ledger), flops_(s.flops),
        scratch_(make_scratch(s.ledger, s.d, s.last_stage)), ep_(s.ep), etp_(s.etp), cp_(s.cp) {}

  const char* device() const override { return "cpu"; }
  bool host_memory() const override { return true; }

  Expected<Buffer> alloc(Mem cat, int64_t n) override {
    if (n < 0) return make_error("alloc", "negative size (got " + std::to_string(n) + ")");
    float* p = n > 0 ? new (std::nothrow) float[static_cast<size_t>(n)]() : nullptr;
    if (n > 0 && p == nullptr)
      return make_error(mem_name(cat), "cannot allocate " + std::to_string(n * 4) + " bytes of host memory");
    return Buffer(ledger_, cat, p, n, free_host);
  }
  Status copy(float* dst, const float* src, int64_t n) override {
    std::copy(src, src + n, dst);
    return ok_status();
  }
  Status add(float* dst, const float* src, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
    return ok_status();
  }
  Status fill_zero(float* dst, int64_t n) override {
    std::fill(dst, dst + n, 0.0f);
    return ok_status();
  }
  Status upload(float* dst, const float* host, int64_t n) override { return copy(dst, host, n); }
  Status download(float* host, const float* src, int64_t n) override { return copy(host, src, n); }

  Expected<std::unique_ptr<LayerState>> layer_state(StashKind kind) override {
    auto st = std::make_unique<CpuLayerState>();
    st->s = make_layer_stash(ledger_, d_, kind);
    return std::unique_ptr<LayerState>(std::move(st));
  }
  Expected<std::unique_ptr<HeadState>> head_state() override {
    auto st = std::make_unique<CpuHeadState>();
    st->s = make_head_stash(ledger_, d_);
    return std::unique_ptr<HeadState>(std::move(st));
  }
  float* head_input(HeadState& st) override { return stash(st).lnf_in.data(); }

  Status embed_forward(const float* P, const UnitOffsets& o, const int32_t* tokens, float* x) override {
    StageCtx c = ctx();
    return exec::embed_forward(c, P, o, tokens, x);
  }
  Status embed_backward(float* G, const UnitOffsets& o, const int32_t* tokens, const float* dx) override {
    StageCtx c = ctx();
    return exec::embed_backward(c, G, o, tokens, dx);
  }
  Status layer_forward(const float* P, const UnitOffsets& o, const float* x, LayerState& st, float* out) override {
    StageCtx c = ctx();
    return exec::layer_forward(c, P, o, x, stash(st), out);
  }
  Status layer_backward(const float* P, float* G, const UnitOffsets& o, const float* x, LayerState& st, float* d,
                        bool recompute_core) override {
    StageCtx c = ctx();
    return exec::layer_backward(c, P, G, o, x, stash(st), d, recompute_core);
  }
  Status layer_backward_input(const float* P, float* G, const UnitOffsets& o, float* x, LayerState& st, float* d,
                              bool recompute_core) override {
    StageCtx c = ctx();
    return exec::layer_backward_input(c, P, G, o, x, stash(st), d, recompute_core);
  }
  Status layer_backward_weight(float* G, const UnitOffsets& o, const float* x, LayerState& st) override {
    StageCtx c = ctx();
    return exec::layer_backward_weight(c, G, o, x, stash(st));
  }
  Expected<double> head_forward(const float* P, const UnitOffsets& o, const float* head_P, const float* x,
                                const int32_t* targets, HeadState& st) override {
    StageCtx c = ctx();
    return exec::head_forward(c, P, o, head_P, x, targets, stash(st));
  }
  Status head_backward(const float* P, float* G, const UnitOffsets& o, const float* head_P, float* head_G,
                       const int32_t* targets, HeadState& st, double scale, float* d) override {
    StageCtx c = ctx();
    return exec::head_backward(c, P, G, o, head_P, head_G, targets, stash(st), scale, d);
  }

  Status add_sum_squares(const float* g, int64_t n, double& sum) override {
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(g[i]) * g[i];
    return ok_status();
  }
  Status scale(float* g, int64_t n, double s) override {
    for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(g[i] * s);
    return ok_status();
  }
  Status adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step,
               const cpu::AdamWConfig& config) override {
    cpu::adamw_step(p, g, m, v, n, step, config);
    return ok_status();
  }

 private:
  StageCtx ctx() { return {comm_, tp_, d_, scratch_, ledger_, flops_, ep_, etp_, cp_}; }
  Comm& comm_;
  const Group& tp_;
  Dims d_;
  Ledger& ledger_;
  cpu::FlopCounter& flops_;
  Scratch scratch_;
  const Group* ep_ = nullptr;
  const Group* etp_ = nullptr;
  const Group* cp_ = nullptr;
};

}  // namespace

Expected<std::unique_ptr<Compute>> make_cpu_compute(const ComputeSetup& setup) {
  return std::unique_ptr<Compute>(std::make_unique<CpuCompute>(setup));
}

}  // namespace loom::exec
