// The trainer's seams, in one process without MPI (tag [seams]): the unit layout (units.hpp) as a
// pure function of the model and the plan, and the compute interface (compute.hpp): the trainer
// reaches the math only through it, so a decorator around the CPU backend sees every call and the
// run is the same bits as execute_cpu's.
#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "executor/compute.hpp"
#include "executor/trainer.hpp"
#include "executor/units.hpp"
#include "sim/cost_model.hpp"
#include "sim/plan.hpp"
#include "sim/rank_grid.hpp"
#include "sim/schedule.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
using namespace loom::exec;

namespace {

ModelSpec tiny() {
  auto m = load_model(std::string(LOOM_TEST_DATA) + "/tiny-gpt.json", "--model", nullptr);
  REQUIRE(m.ok());
  return *m;
}

cpu::Gpt reference_model(const ModelSpec& m) {
  auto g = cpu::Gpt::create(m, {});
  REQUIRE(g.ok());
  return std::move(*g);
}

Plan seam_plan(Recompute rc) {
  auto c = load_cluster("cpu-mpi", "--cluster");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, 1, "--gpus").ok());
  Plan plan;
  plan.model = tiny();
  plan.cluster = *c;
  plan.train.global_batch = 4;
  plan.train.seq = 16;
  plan.train.dtype = Dtype::fp32;
  plan.train.grad_dtype = Dtype::fp32;
  plan.train.attention = Attention::unfused;
  plan.train.dp_bucket_bytes = 16384;
  plan.parallel.recompute = rc;
  auto st = validate_config(plan.model, plan.cluster, plan.train, plan.parallel, [](const std::string& f) { return f; });
  INFO((st ? std::string() : st.error().message));
  REQUIRE(st.ok());
  plan.prediction = CostModel(plan.model, plan.cluster, plan.train).evaluate(plan.parallel);
  return plan;
}

// The CPU backend with every call counted by name.
class Counting final : public Compute {
 public:
  Counting(std::unique_ptr<Compute> inner, std::map<std::string, int64_t>& n) : in_(std::move(inner)), n_(n) {}
  const char* device() const override { return in_->device(); }
  bool host_memory() const override { return in_->host_memory(); }
  Expected<exec::Buffer> alloc(Mem cat, int64_t n) override { return ++n_["alloc"], in_->alloc(cat, n); }
  Status copy(float* d, const float* s, int64_t n) override { return ++n_["copy"], in_->copy(d, s, n); }
  Status add(float* d, const float* s, int64_t n) override { return ++n_["add"], in_->add(d, s, n); }
  Status fill_zero(float* d, int64_t n) override { return ++n_["fill_zero"], in_->fill_zero(d, n); }
  Status upload(float* d, const float* h, int64_t n) override { return ++n_["upload"], in_->upload(d, h, n); }
  Status download(float* h, const float* s, int64_t n) override { return ++n_["download"], in_->download(h, s, n); }
  Expected<std::unique_ptr<LayerState>> layer_state(StashKind k) override { return ++n_["layer_state"], in_->layer_state(k); }
  Expected<std::unique_ptr<HeadState>> head_state() override { return ++n_["head_state"], in_->head_state(); }
  float* head_input(HeadState& st) override { return in_->head_input(st); }
  Status embed_forward(const float* P, const UnitOffsets& o, const int32_t* t, float* x) override {
    return ++n_["embed_forward"], in_->embed_forward(P, o, t, x);
  }
  Status embed_backward(float* G, const UnitOffsets& o, const int32_t* t, const float* dx) override {
    return ++n_["embed_backward"], in_->embed_backward(G, o, t, dx);
  }
  Status layer_forward(const float* P, const UnitOffsets& o, const float* x, LayerState& st, float* out) override {
    return ++n_["layer_forward"], in_->layer_forward(P, o, x, st, out);
  }
  Status layer_backward(const float* P, float* G, const UnitOffsets& o, const float* x, LayerState& st, float* d,
                        bool rc) override {
    return ++n_["layer_backward"], in_->layer_backward(P, G, o, x, st, d, rc);
  }
  Expected<double> head_forward(const float* P, const UnitOffsets& o, const float* hp, const float* x,
                                const int32_t* t, HeadState& st) override {
    return ++n_["head_forward"], in_->head_forward(P, o, hp, x, t, st);
  }
  Status head_backward(const float* P, float* G, const UnitOffsets& o, const float* hp, float* hg, const int32_t* t,
                       HeadState& st, double scale, float* d) override {
    return ++n_["head_backward"], in_->head_backward(P, G, o, hp, hg, t, st, scale, d);
  }
  Status add_sum_squares(const float* g, int64_t n, double& sum) override {
    return ++n_["add_sum_squares"], in_->add_sum_squares(g, n, sum);
  }
  Status scale(float* g, int64_t n, double s) override { return ++n_["scale"], in_->scale(g, n, s); }
  Status adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step,
               const cpu::AdamWConfig& c) override {
    return ++n_["adamw"], in_->adamw(p, g, m, v, n, step, c);
  }

 private:
  std::unique_ptr<Compute> in_;
  std::map<std::string, int64_t>& n_;
};

nlohmann::json run_alone(const Plan& plan, const ComputeFactory* compute) {
  auto comm = make_emulated_comm(0, 1);  // one rank: every group has one member, nothing is sent
  ExecOptions o;
  o.steps = 2;
  auto r = compute ? execute_plan(plan, *comm, o, *compute) : execute_cpu(plan, *comm, o);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.ok());
  return *r;
}

}  // namespace

TEST_CASE("units: every element of the model on exactly one tp shard, replicated ones on each", "[seams]") {
  const ModelSpec m = tiny();
  const cpu::Gpt ref = reference_model(m);
  const int64_t full = static_cast<int64_t>(ref.params().size());
  for (int64_t tp : {1, 2, 4}) {
    std::map<int64_t, int> seen;  // full index -> shards holding it
    int64_t replicated = 0;
    for (int64_t stage = 0; stage < 2; ++stage)
      for (int t = 0; t < tp; ++t) {
        const UnitLayout l = build_layout(ref.tensors(), {m.layers, 2, 1, stage, tp, 1, 0});
        for (const Unit& u : l.units)
          for (const TensorSlice& s : u.tensors) {
            if (s.replicated && t == 0) replicated += s.numel;
            for_each_element(s, t, static_cast<int>(tp), [&](int64_t, int64_t fi) { ++seen[fi]; });
          }
      }
    INFO("tp " << tp);
    CHECK(static_cast<int64_t>(seen.size()) == full);
    int64_t total = 0;
    for (const auto& [fi, k] : seen) total += k;
    CHECK(total == full + (tp - 1) * replicated);
  }
}

TEST_CASE("units: the pipeline places embedding, layers and head by stage; ZeRO shards are ceil(size / dp)", "[seams]") {
  const ModelSpec m = tiny();  // 8 layers
  const cpu::Gpt ref = reference_model(m);
  const UnitLayout first = build_layout(ref.tensors(), {m.layers, 2, 1, 0, 1, 3, 1});
  const UnitLayout last = build_layout(ref.tensors(), {m.layers, 2, 1, 1, 1, 3, 1});
  REQUIRE(first.units.size() == 5);  // embedding + layers 0..3
  REQUIRE(last.units.size() == 5);   // layers 4..7 + head
  CHECK(first.units.front().kind == UnitKind::embed);
  CHECK(first.units.back().layer == 3);
  CHECK(last.units.front().layer == 4);
  CHECK(last.units.back().kind == UnitKind::out);
  CHECK(first.total + last.total == static_cast<int64_t>(ref.params().size()));
  int64_t shards = 0;
  for (const Unit& u : first.units) {
    CHECK(u.shard == (u.size + 2) / 3);
    CHECK(u.shard_offset == shards);
    shards += u.shard;
  }
  CHECK(first.total_shard == shards);
  // The embedding: 64 x 32 tokens + 16 x 32 positions; a layer of hidden 32, ffn 128 with biases.
  CHECK(first.units.front().size == 64 * 32 + 16 * 32);
  CHECK(first.units[1].size == 4 * 32 + 4 * (32 * 32 + 32) + 2 * 32 * 128 + 128 + 32);
}

TEST_CASE("the trainer reaches the math only through the compute interface", "[seams]") {
  for (Recompute rc : {Recompute::none, Recompute::full}) {
    const Plan plan = seam_plan(rc);
    std::map<std::string, int64_t> n;
    const ComputeFactory counting = [&n](const ComputeSetup& s) -> Expected<std::unique_ptr<Compute>> {
      auto cpu = make_cpu_compute(s);
      if (!cpu) return cpu.error();
      return std::unique_ptr<Compute>(std::make_unique<Counting>(std::move(*cpu), n));
    };
    const nlohmann::json seen = run_alone(plan, &counting);
    const nlohmann::json direct = run_alone(plan, nullptr);
    INFO("recompute " << (rc == Recompute::full ? "full" : "none"));
    CHECK(seen["losses"] == direct["losses"]);  // the same bits
    CHECK(seen["memory_bytes"] == direct["memory_bytes"]);
    // 2 steps x 4 micro-batches x 8 layers; full recompute runs each layer's forward twice.
    const int64_t mbs = 2 * 4, layers = mbs * 8, forwards = rc == Recompute::full ? 2 * layers : layers;
    CHECK(n["embed_forward"] == mbs);
    CHECK(n["embed_backward"] == mbs);
    CHECK(n["head_forward"] == mbs);
    CHECK(n["head_backward"] == mbs);
    CHECK(n["layer_forward"] == forwards);
    CHECK(n["layer_backward"] == layers);
    CHECK(n["layer_state"] == forwards);  // one stash per layer forward
    CHECK(n["head_state"] == mbs);
    // AdamW and the norm once per tensor per step: 8 layers x 16 + tok, pos, norm_f w, b, head.
    CHECK(n["adamw"] == 2 * (8 * 16 + 5));
    CHECK(n["add_sum_squares"] == 2 * (8 * 16 + 5));
    CHECK(n["fill_zero"] == 2);  // the gradient accumulators at each step's start
  }
}

// The NCCL bootstrap sends each link's id from its first rank to the others: every member must
// build the same link, or a rank waits for an id that never comes. And every pipeline transfer
// the schedules make must have a directed link from its sender to its receiver.
TEST_CASE("device links: the same on every member, and one for every pipeline transfer", "[seams]") {
  struct Shape {
    int64_t tp, dp, pp, vpp;
  };
  for (const Shape s : {Shape{1, 1, 2, 1}, Shape{2, 1, 2, 2}, Shape{1, 2, 4, 1}, Shape{1, 1, 4, 2}, Shape{2, 2, 2, 1},
                        Shape{1, 1, 3, 1}}) {
    auto grid = RankGrid::make(s.tp, s.dp, s.pp, ParallelConfig{}.order);
    REQUIRE(grid.ok());
    const int world = static_cast<int>(s.tp * s.dp * s.pp);
    std::map<std::pair<std::vector<int>, std::string>, std::set<int>> built;  // link -> ranks that built it
    std::set<std::pair<int, int>> p2p;
    for (int r = 0; r < world; ++r) {
      exec::Group w{GroupKind::world, {}, r};
      for (int k = 0; k < world; ++k) w.ranks.push_back(k);
      const std::vector<exec::Group> groups{make_group(*grid, Dim::tp, r), make_group(*grid, Dim::dp, r),
                                      make_group(*grid, Dim::pp, r), w};
      for (const DeviceLink& l : device_links(groups, r)) {
        CHECK(l.ranks[static_cast<size_t>(l.index)] == r);
        built[{l.ranks, l.name}].insert(r);
        if (l.p2p) p2p.insert({l.ranks[0], l.ranks[1]});
      }
    }
    INFO("tp " << s.tp << " dp " << s.dp << " pp " << s.pp << " vpp " << s.vpp);
    for (const auto& [link, members] : built)
      CHECK(members == std::set<int>(link.first.begin(), link.first.end()));
    for (int r = 0; r < world; ++r) {
      const exec::Group pp = make_group(*grid, Dim::pp, r);
      for (int64_t c = 0; c < s.vpp; ++c)
        for (Phase ph : {Phase::forward, Phase::backward}) {
          const StageChunk d = slot_destination(pp.index, c, ph, s.pp, s.vpp);
          if (d.stage < 0) continue;
          CHECK(p2p.count({r, pp.ranks[static_cast<size_t>(d.stage)]}) == 1);
        }
    }
  }
}
