// Context parallelism (sim/context_parallel.hpp): the rules, what one rank of a cp group holds
// and runs (seq / cp tokens, 1/cp of the sequence's causal attention, the KV ring), its links,
// the exposed part of the ring, the simulator's agreement and the planner's cp choices.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

#include <cmath>
#include <set>
#include <string>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim/context_parallel.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/step_result.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

struct Job {
  ModelSpec model;
  ClusterSpec cluster;
  TrainSpec train;
};

Job llama8b(int64_t gpus, int64_t batch, int64_t seq) {
  auto m = load_model("llama3-8b", "test", nullptr);
  auto c = load_cluster("dgx-h100", "test");
  REQUIRE(m.ok());
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  TrainSpec t;
  t.global_batch = batch;
  t.seq = seq;
  t.dp_bucket_bytes = 40'000'000 * 2;
  return {*m, *c, t};
}

// tp 2 (sp on), cp 2, dp 4 on two DGX H100 nodes: 8192-token sequences, 4096 per rank.
ParallelConfig tp2_cp2(int64_t dp = 4) {
  ParallelConfig p;
  p.tp = 2, p.cp = 2, p.dp = dp, p.pp = 1, p.sp = true;
  return p;
}

std::string check(const Job& j, const ParallelConfig& p) {
  auto st = validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; });
  return st ? "" : st.error().message;
}

const Buffer* buffer(const StageWork& w, const std::string& name) {
  for (const Buffer& b : w.buffers)
    if (name == b.name) return &b;
  return nullptr;
}

const Op* op(const StageWork& w, const std::string& name, Pass pass) {
  for (const Op& o : w.ops)
    if (name == o.name && o.pass == pass) return &o;
  return nullptr;
}

const Message* message_of(const StageWork& w, Group g, Pass pass) {
  for (const Message& m : w.messages)
    if (m.group == g && m.pass == pass) return &m;
  return nullptr;
}

}  // namespace

TEST_CASE("context parallelism: the rules, one line each", "[cp]") {
  Job j = llama8b(16, 8, 8192);
  CHECK(check(j, tp2_cp2()).empty());
  ParallelConfig p = tp2_cp2(8);
  CHECK(check(j, p) == "dp: dp x tp x pp x cp must equal the GPUs in use (8 x 2 x 1 x 2 = 32, gpus = 16)");
  p = tp2_cp2();
  p.cp = 0;
  CHECK(check(j, p) == "cp: must be >= 1 (got 0)");
  j.train.seq = 8190;  // 8190 = 2 x 4095: tp divides it, 2 cp = 4 does not
  CHECK(check(j, tp2_cp2()) ==
        "cp: must split seq into 2 x cp equal chunks, the load-balanced causal split (8190 % 4 != 0)");
  j.train.seq = 8192;
  j.train.attention = Attention::unfused;
  CHECK(check(j, tp2_cp2()) == "cp: context parallelism needs fused attention (the ring runs FlashAttention blocks)");
  j.train.attention = Attention::fused;
  p = tp2_cp2();
  p.order = "tp-pp-dp";  // cp right after tp: tp-cp-pp-dp, and pp between cp and dp
  CHECK(check(j, p) == "order: with cp > 1, cp must sit next to dp, so the dp-cp group the gradients are reduced "
                       "over is one block of ranks (got \"tp-cp-pp-dp\")");
  p.order = "tp-dp-cp-pp";
  CHECK(check(j, p).empty());
}

TEST_CASE("context parallelism: a rank holds seq / cp tokens and 1/cp of the causal attention", "[cp]") {
  const Job j = llama8b(16, 8, 8192);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, tp2_cp2(), 0);
  ParallelConfig no_cp = tp2_cp2(8);
  no_cp.cp = 1;
  const StageWork full = build_stage_work(j.model, j.cluster, j.train, no_cp, 0);
  // GEMMs over 4096 tokens per micro-batch.
  REQUIRE(op(w, "qkv", Pass::forward));
  CHECK(op(w, "qkv", Pass::forward)->m == 4096);
  CHECK(op(full, "qkv", Pass::forward)->m == 8192);
  // Attention: 2 ring steps per layer, each a causal block of 4096 tokens, 16 heads per tp rank;
  // 4 b s^2 q / t = 4 x 4096^2 x 4096 / 2 FLOPs per call: half the whole sequence's.
  const Op* a = op(w, "attention", Pass::forward);
  REQUIRE(a);
  CHECK(a->count == 64);
  CHECK(a->n == 4096);
  CHECK(a->m == 16);
  CHECK(a->flops == FlopCount{137'438'953'472});
  const Op* af = op(full, "attention", Pass::forward);
  CHECK(2 * a->flops * a->count == af->flops * af->count);
  // The KV ring: K and V blocks of 1 x 4096 tokens x 1024 / 2 channels x 2 bytes = 4 MiB each.
  CHECK(cp_kv_block_bytes(j.model, j.train, tp2_cp2()) == 4'194'304);
  const Message* fwd = message_of(w, Group::cp, Pass::forward);
  const Message* bwd = message_of(w, Group::cp, Pass::backward);
  REQUIRE(fwd);
  REQUIRE(bwd);
  CHECK(fwd->kind == MessageKind::send);
  CHECK(fwd->bytes == 8'388'608);   // K and V
  CHECK(bwd->bytes == 16'777'216);  // K, V, dK and dV
  CHECK(fwd->count == 32);          // cp - 1 sends per layer
  // dK and dV take one more hop after the last block, back to the rank owning K and V.
  const auto ret = std::find_if(w.messages.begin(), w.messages.end(),
                                [](const Message& m) { return std::string(m.name) == "cp dkv return"; });
  REQUIRE(ret != w.messages.end());
  CHECK(ret->bytes == 8'388'608);
  CHECK(ret->count == 32);
  CHECK(message_of(w, Group::cp, Pass::recompute) == nullptr);
  CHECK(message_of(full, Group::cp, Pass::forward) == nullptr);
  REQUIRE(buffer(w, "cp kv ring"));
  CHECK(buffer(w, "cp kv ring")->bytes == 33'554'432);  // two of K, V, dK and dV in flight
  CHECK(buffer(w, "cp kv ring")->category == MemCategory::comm_buffers);
  // Activations of 4096 tokens per layer (Korthikanti et al.'s terms at s / cp).
  const int64_t layer = layer_activation_bytes(j.model, 1, 4096, 2, true, Recompute::none, Attention::fused,
                                               Dtype::bf16).total();
  CHECK(buffer(w, "layer activations")->bytes == w.in_flight * 32 * layer);
}

TEST_CASE("context parallelism: TransformerEngine's copies beside the attention, the slowest rank's bytes", "[cp]") {
  // Per rank of cp 2 (Q, KV, L: the query block, K and V, the fp32 statistics):
  // rank 0 forward 2 KV + 3.5 Q + 6.5 L, backward 6.5 KV + 3.5 Q + L; rank 1 forward
  // 2 KV + 5 Q + 9 L, backward 6 KV + 5 Q. With Q = 10, KV = 4, L = 1 rank 1 moves the most.
  const CpRingBytes two = cp_ring_bytes(2, 10, 4, 1);
  CHECK(two.forward == 2 * 4 + 5 * 10 + 9 * 1);
  CHECK(two.backward == 6 * 4 + 5 * 10);
  // With a large KV (Q = 1, KV = 10, L = 0) rank 0's backward (6.5 KV + 3.5 Q) is the slowest
  // backward while rank 1's forward (2 KV + 5 Q) is still the slowest forward: each pass its own.
  const CpRingBytes kv_heavy = cp_ring_bytes(2, 1, 10, 0);
  CHECK(kv_heavy.forward == 2 * 10 + 5 * 1);
  CHECK(kv_heavy.backward == 6.5 * 10 + 3.5 * 1);
  // cp 4, the last rank (every later step attends half of KV): forward 2 KV + 2 Q + 4 L +
  // 3 (3 Q + 5 L); backward 2 KV + 3 (Q + KV) + (2 Q + KV) + 2 (3 Q + 1.5 KV) = 9 KV + 11 Q.
  const CpRingBytes four = cp_ring_bytes(4, 10, 4, 1);
  CHECK(four.forward == 2 * 4 + 11 * 10 + 19 * 1);
  CHECK(four.backward == 9 * 4 + 11 * 10);
  // Llama 3 8B, tp 2, cp 2, 4096 tokens per rank: Q = 4096 x 2048 x 2 bytes, KV = 2 x 4 MiB,
  // L = 4 x 16 heads x 4096; 5 kernels per layer and pass, none without cp.
  const Job j = llama8b(16, 8, 8192);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, tp2_cp2(), 0);
  const double q = 4096.0 * 2048 * 2, kv = 2 * 4'194'304.0, lse = 4.0 * 16 * 4096;
  const CpRingBytes b = cp_ring_bytes(2, q, kv, lse);
  for (auto [pass, bytes] : {std::pair{Pass::forward, b.forward}, {Pass::backward, b.backward}}) {
    const Op* o = op(w, "cp ring corrections", pass);
    REQUIRE(o);
    CHECK(o->count == 32 * 5);
    CHECK(o->bytes * 5 == Approx(bytes).epsilon(1e-15));
    CHECK(o->mem == MemKind::elementwise);
  }
  CHECK(op(w, "cp ring corrections", Pass::recompute) == nullptr);
  ParallelConfig rc = tp2_cp2();
  rc.recompute = Recompute::selective;  // the attention, and so the ring's forward, again
  const Op* again = op(build_stage_work(j.model, j.cluster, j.train, rc, 0), "cp ring corrections", Pass::recompute);
  REQUIRE(again);
  CHECK(again->count == 32 * 5);
  ParallelConfig no_cp = tp2_cp2(8);
  no_cp.cp = 1;
  CHECK(op(build_stage_work(j.model, j.cluster, j.train, no_cp, 0), "cp ring corrections", Pass::forward) == nullptr);
  // The all-gather variant, the same on every rank: 2 C KV + 2 Q forward in 4 kernels and
  // (8 C + 1.5) KV + 2 Q backward in 12.
  const CpRingBytes g = cp_all_gather_bytes(4, 10, 4);
  CHECK(g.forward == 8 * 4 + 2 * 10);
  CHECK(g.backward == 33.5 * 4 + 2 * 10);
  ParallelConfig gathered = tp2_cp2();
  gathered.cp_comm = CpComm::all_gather;
  const StageWork wg = build_stage_work(j.model, j.cluster, j.train, gathered, 0);
  CHECK(op(wg, "cp ring corrections", Pass::forward) == nullptr);
  const CpRingBytes gb = cp_all_gather_bytes(2, q, kv);
  REQUIRE(op(wg, "cp gather reorders", Pass::forward));
  CHECK(op(wg, "cp gather reorders", Pass::forward)->count == 32 * 4);
  CHECK(op(wg, "cp gather reorders", Pass::forward)->bytes * 4 == Approx(gb.forward).epsilon(1e-15));
  CHECK(op(wg, "cp gather reorders", Pass::backward)->count == 32 * 12);
  CHECK(op(wg, "cp gather reorders", Pass::backward)->bytes * 12 == Approx(gb.backward).epsilon(1e-15));
}

TEST_CASE("context parallelism: gradients and ZeRO shards span dp x cp; the links", "[cp]") {
  const Job j = llama8b(16, 8, 8192);
  ParallelConfig p = tp2_cp2();
  p.zero = 1;
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  CHECK(w.optimizer_params == (w.params + 7) / 8);
  // tp 8 x cp 2: no dp, yet the gradients are reduced over the two cp ranks.
  ParallelConfig q;
  q.tp = 8, q.cp = 2, q.dp = 1, q.sp = true;
  REQUIRE(check(j, q).empty());
  const StageWork v = build_stage_work(j.model, j.cluster, j.train, q, 0);
  CHECK(v.find(Group::dp, "dp gradients") != nullptr);
  const CostModel cm(j.model, j.cluster, j.train);
  auto grid = RankGrid::make(q.tp, q.dp, q.pp, q.order, q.cp);
  REQUIRE(grid.ok());
  const GroupLinksSet lq = group_links(cm.topology(), *grid);
  CHECK(lq.dp.size == 2);
  CHECK(lq.cp.size == 2);
  CHECK(lq.cp.nodes_spanned == 2);  // ranks 0 and 8: one on each node
  CHECK(lq.cp.busbw_bytes_per_s < j.cluster.intra_node.busbw_bytes_per_s);
  auto g = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  REQUIRE(g.ok());
  const GroupLinksSet lp = group_links(cm.topology(), *g);
  CHECK(lp.dp.size == 8);   // the dp-cp group: ranks 0, 2, ..., 14
  CHECK(lp.dp.nodes_spanned == 2);
  CHECK(lp.cp.size == 2);   // ranks 0 and 2, on one node's NVLink
  CHECK(lp.cp.nodes_spanned == 1);
  CHECK(lp.cp.busbw_bytes_per_s == j.cluster.intra_node.busbw_bytes_per_s);
}

TEST_CASE("context parallelism: each ring step shows what its send exceeds its attention block", "[cp]") {
  const Job j = llama8b(16, 8, 8192);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, tp2_cp2(), 0);
  const OpTimer timer = OpTimer::of(j.cluster, j.train);
  const double block_fwd = timer.op(*op(w, "attention", Pass::forward));
  const double block_bwd = timer.op(*op(w, "attention", Pass::backward));
  // The ring's hops run beside the attention op of their pass; the last dK/dV hop beside none.
  for (const Message& msg : w.messages) {
    if (msg.group != Group::cp) continue;
    const Op* block = cp_block_of(w, msg);
    if (std::string(msg.name) == kCpReturnMessage) {
      CHECK(block == nullptr);
    } else {
      REQUIRE(block != nullptr);
      CHECK(block->pass == msg.pass);
    }
  }
  StageEstimate hidden;
  price_cp_ring(w, GroupLinks{2, 1e15, 0, 1}, timer, true, 4, hidden);  // sends far shorter than a block
  CHECK(hidden.cp_forward_s == 0);
  // dK and dV's last hop back to their owner has no block beside it: always exposed.
  CHECK(hidden.cp_comm_s == Approx(32 * 8388608 / 1e15).epsilon(1e-12));
  CHECK(hidden.forward_s == 0);  // the ring's waits are its own, not the passes' compute
  CHECK(hidden.backward_s == 0);
  // Bytes per step: 4 micro-batches x 32 layers x (K, V forward; K, V, dK, dV backward; the
  // dK, dV return) = 4 x 32 x 4 MiB x (2 + 4 + 2) = 4 GiB.
  CHECK(hidden.comm.cp == 4'294'967'296);
  StageEstimate slow;
  price_cp_ring(w, GroupLinks{2, 1e9, 0, 1}, timer, true, 4, slow);  // 1 GB/s: 8.4 ms per forward send
  REQUIRE(block_fwd < 0.008388608);
  CHECK(slow.cp_forward_s == Approx(32 * (0.008388608 - block_fwd)).epsilon(1e-12));
  CHECK(slow.cp_comm_s == Approx(slow.cp_forward_s + 32 * std::max(0.0, 0.016777216 - block_bwd) +
                                 32 * 0.008388608).epsilon(1e-12));
  CHECK(slow.recompute_s == 0);
  StageEstimate serial;  // without overlap every hop shows
  price_cp_ring(w, GroupLinks{2, 1e9, 0, 1}, timer, false, 4, serial);
  CHECK(serial.cp_comm_s == Approx(32 * (0.008388608 + 0.016777216 + 0.008388608)).epsilon(1e-12));
}

TEST_CASE("context parallelism: the ring's bytes and exposed time are the estimate's cp fields", "[cp]") {
  const Job j = llama8b(16, 16, 8192);
  const CostModel cm(j.model, j.cluster, j.train);
  ParallelConfig p = tp2_cp2();
  p.recompute = Recompute::full;  // the recomputed forward runs the ring again: 2 more blocks per hop
  const Estimate e = cm.evaluate(p);
  // 4 micro-batches x 32 layers x 4 MiB x (2 forward + 4 backward + 2 return + 2 recompute).
  CHECK(e.comm.cp == 5'368'709'120);
  CHECK(e.stages[0].comm.cp == e.comm.cp);
  CHECK(e.time.cp_comm_s > 0);
  CHECK(e.time.cp_comm_s == Approx(4 * e.stages[0].cp_comm_s).epsilon(1e-12));
  CHECK(e.step_time_s == Approx(e.time.total_s()).epsilon(1e-12));
  // In the step result, and back.
  const nlohmann::json js = estimate_to_json(e);
  CHECK(js["comm_bytes"]["cp"] == e.comm.cp);
  CHECK(js["time_s"]["cp_comm"] == e.time.cp_comm_s);
  auto back = estimate_from_json(js, "test");
  REQUIRE(back.ok());
  CHECK(back->comm.cp == e.comm.cp);
  CHECK(back->time.cp_comm_s == e.time.cp_comm_s);
  CHECK(back->stages[0].cp_comm_s == e.stages[0].cp_comm_s);
  CHECK(back->stages[0].cp_forward_s == e.stages[0].cp_forward_s);
  // A file written before the cp fields existed still reads.
  ParallelConfig no_cp = tp2_cp2(8);
  no_cp.cp = 1;
  const nlohmann::json old = estimate_to_json(cm.evaluate(no_cp));
  CHECK_FALSE(old["comm_bytes"].contains("cp"));
  CHECK_FALSE(old["time_s"].contains("cp_comm"));
  CHECK(estimate_from_json(old, "test").ok());
}

TEST_CASE("context parallelism: the simulator and the analytical step agree", "[cp]") {
  const Job j = llama8b(16, 16, 8192);
  const CostModel cm(j.model, j.cluster, j.train);
  for (int zero : {0, 1, 3})
    for (Recompute r : {Recompute::none, Recompute::full}) {
      ParallelConfig p = tp2_cp2();
      p.zero = zero, p.recompute = r;
      REQUIRE(check(j, p).empty());
      const Estimate est = cm.evaluate(p);
      auto sim = simulate(cm, p, SimOptions{});
      REQUIRE(sim.ok());
      INFO("zero " << zero << " recompute " << static_cast<int>(r) << ": simulated " << sim->step_time_s
                   << " s, analytical " << est.step_time_s << " s");
      CHECK(std::fabs(sim->step_time_s - est.step_time_s) <= 0.03 * est.step_time_s);
      SimOptions exact;
      exact.overlap = false;
      exact.contention = false;
      auto plain = simulate(cm, p, exact);
      REQUIRE(plain.ok());
      CHECK(plain->time.compute_s == Approx(cm.evaluate(p, false).time.compute_s).epsilon(1e-9));
    }
}

// The ring as the simulator plays it: per slot the attention blocks with their hops beside them
// on the cp links, then backward's last hop. Llama 3 8B at 32k tokens over cp 4 on one node
// (the ring on NVLink), and 70B with tp 8, cp 4 (the ring between nodes, on their NICs) and pp 2.
TEST_CASE("context parallelism: the simulator plays the ring as tasks and agrees with the analytical step",
          "[cp][simulator]") {
  struct Case {
    const char* model;
    int64_t gpus, batch, tp, cp, pp;
    Recompute recompute;
  };
  for (const Case& c : {Case{"llama3-8b", 8, 8, 1, 4, 1, Recompute::none},
                        Case{"llama3-8b", 8, 8, 1, 4, 1, Recompute::full},
                        Case{"llama3-70b", 64, 16, 8, 4, 2, Recompute::full}}) {
    auto m = load_model(c.model, "test", nullptr);
    auto cl = load_cluster("dgx-h100", "test");
    REQUIRE(m.ok());
    REQUIRE(cl.ok());
    REQUIRE(size_cluster(*cl, c.gpus, "test").ok());
    TrainSpec t;
    t.global_batch = c.batch;
    t.seq = 32768;
    t.dp_bucket_bytes = 40'000'000 * 2;  // Megatron-core's 40e6 elements of bf16
    ParallelConfig p;
    p.tp = c.tp, p.cp = c.cp, p.pp = c.pp, p.dp = c.gpus / (c.tp * c.cp * c.pp), p.sp = c.tp > 1;
    p.zero = 1, p.recompute = c.recompute;
    const Job j{*m, *cl, t};
    REQUIRE(check(j, p) == "");
    const CostModel cm(j.model, j.cluster, j.train);
    const Estimate est = cm.evaluate(p);
    auto sim = simulate(cm, p, SimOptions{});
    REQUIRE(sim.ok());
    INFO(c.model << " cp " << c.cp << " tp " << c.tp << ": simulated " << sim->step_time_s << " s, analytical "
                 << est.step_time_s << " s; cp_comm " << sim->time.cp_comm_s << " against " << est.time.cp_comm_s);
    CHECK(std::fabs(sim->step_time_s - est.step_time_s) <= 0.03 * est.step_time_s);
    // The breakdown's cp_comm is the compute stream's wait for the hops: each stage's equal ring
    // steps summed, the same sums as the cost model's (floating-point order only).
    CHECK(est.time.cp_comm_s > 0);
    CHECK(sim->time.cp_comm_s == Approx(est.time.cp_comm_s).epsilon(1e-9));
    // Its hop tasks carry the bytes the estimate counts (pp 1, no ZeRO-3: one ring per slot).
    if (c.pp == 1) {
      int64_t bytes = 0, hops = 0;
      for (const SimTask& task : sim->tasks)
        if (task.kind == TaskKind::cp) bytes += task.bytes, hops += task.dur_s > 0;
      CHECK(bytes == est.comm.cp);
      CHECK(hops > 0);
    }
  }
}

TEST_CASE("context parallelism: the planner tries cp for long sequences only, or as pinned", "[cp]") {
  auto cps = [](const Job& j, const SearchPins& pins) {
    auto space = make_search_space(j.model, j.cluster, j.train, pins);
    REQUIRE(space.ok());
    std::set<int64_t> out;
    for (const SplitSpace& s : space->splits) {
      out.insert(s.cp);
      CHECK(s.dp * s.tp * s.pp * s.cp == j.cluster.gpus);
    }
    return out;
  };
  CHECK(cps(llama8b(16, 16, 8192), {}) == std::set<int64_t>{1, 2, 4});  // 8192 / 4 = 2048 tokens per rank
  CHECK(cps(llama8b(16, 16, 4096), {}) == std::set<int64_t>{1});
  SearchPins pin;
  pin.cp = 2;
  CHECK(cps(llama8b(16, 16, 4096), pin) == std::set<int64_t>{2});
  pin.cp = 3;
  auto bad = make_search_space(llama8b(16, 16, 8192).model, llama8b(16, 16, 8192).cluster,
                               llama8b(16, 16, 8192).train, pin);
  REQUIRE(!bad.ok());
  CHECK(bad.error().message == "--cp: must divide --gpus (16 % 3 != 0)");
}

TEST_CASE("loom predict --cp: the configuration line and a refused cp", "[cp][cli]") {
  const std::string job = "predict --model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 8 --tp 2 --pp 1 --sp on ";
  LoomRun ok = run_loom(job + "--seq 8192 --cp 2");
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  CHECK(ok.out.find("dp 4  tp 2  pp 1") != std::string::npos);
  CHECK(ok.out.find("  cp 2") != std::string::npos);
  CHECK(ok.out.find("context-parallel KV ring (exposed)") != std::string::npos);
  CHECK(ok.out.find("bytes sent per GPU per step over the context-parallel group: ") != std::string::npos);
  LoomRun odd = run_loom(job + "--seq 8190 --cp 2");
  CHECK(odd.code == 2);
  CHECK(odd.err == "loom: --cp: must split seq into 2 x cp equal chunks, the load-balanced causal split (8190 % 4 != 0)\n");
  LoomRun split = run_loom(job + "--seq 8192 --cp 3");
  CHECK(split.code == 2);
  CHECK(split.err == "loom: --cp: tp x pp x cp must divide --gpus (16 GPUs, tp x pp 2, cp 3)\n");
}

// CpComm::all_gather (TransformerEngine's AttnFuncWithCPAndKVAllGather): per layer K and V
// all-gathered in forward, again in backward with dK and dV reduce-scattered, again in a
// recompute; nothing beside the attention, so all of it shows.
TEST_CASE("context parallelism all-gathered: messages, exposure, memory, simulator", "[cp]") {
  const Job j = llama8b(16, 16, 8192);
  const CostModel cm(j.model, j.cluster, j.train);
  ParallelConfig p = tp2_cp2();
  p.recompute = Recompute::full;
  p.cp_comm = CpComm::all_gather;
  REQUIRE(check(j, p).empty());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  // A block: 1 sequence x 4096 tokens x 1024 kv channels / tp 2 x 2 bytes = 4 MiB; K and V of
  // the cp 2 ranks gathered: 16 MiB per layer and pass.
  const int64_t block = 4 * 1024 * 1024;
  int64_t gathers = 0, scatters = 0;
  for (const Message& m : w.messages) {
    if (m.group != Group::cp) continue;
    CHECK(m.bytes == 2 * 2 * block);
    CHECK(m.count == 32);
    (m.kind == MessageKind::all_gather ? gathers : scatters) += 1;
    CHECK((m.kind == MessageKind::all_gather || (m.kind == MessageKind::reduce_scatter && m.pass == Pass::backward)));
  }
  CHECK(gathers == 3);  // forward, backward, recompute
  CHECK(scatters == 1);
  REQUIRE(buffer(w, "cp kv all-gather") != nullptr);
  CHECK(buffer(w, "cp kv all-gather")->bytes == 4 * 2 * block);  // gathered K, V and full dK, dV
  CHECK(buffer(w, "cp kv ring") == nullptr);
  // Bytes sent: each collective sends (cp - 1) / cp of what it gathers or scatters.
  const Estimate e = cm.evaluate(p);
  CHECK(e.comm.cp == int64_t{4} * 32 * 4 * (2 * block));  // 4 micro-batches x 32 layers x 4 collectives x half of 16 MiB
  // Nothing overlaps: the exposed time is every collective's whole time.
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  REQUIRE(grid.ok());
  const GroupLinksSet links = group_links(cm.topology(), *grid);
  double all_s = 0, forward_s = 0;
  for (const Message& m : w.messages)
    if (m.group == Group::cp) {
      const double t = static_cast<double>(m.count) * message_time_s(m, links.cp);
      all_s += t;
      if (m.pass == Pass::forward) forward_s += t;
    }
  CHECK(e.stages[0].cp_comm_s == Approx(all_s).epsilon(1e-12));
  CHECK(e.stages[0].cp_forward_s == Approx(forward_s).epsilon(1e-12));
  // The ring hides most of its hops beside the attention: for Llama 3 8B's 8 kv heads the
  // gathered bytes are small, yet they all show.
  ParallelConfig ring = p;
  ring.cp_comm = CpComm::p2p;
  CHECK(cm.evaluate(ring).time.cp_comm_s < e.time.cp_comm_s);
  // The simulator plays the same exposed time.
  auto sim = simulate(cm, p, SimOptions{});
  REQUIRE(sim.ok());
  CHECK(std::fabs(sim->step_time_s - e.step_time_s) <= 0.03 * e.step_time_s);
  CHECK(sim->time.cp_comm_s == Approx(e.time.cp_comm_s).epsilon(1e-9));
  // The rule, the plan file.
  ParallelConfig lone = tp2_cp2(8);
  lone.cp = 1, lone.cp_comm = CpComm::all_gather;
  CHECK(check(j, lone) == "cp_comm: all_gather needs cp > 1 (got cp 1)");
  CHECK(to_json(p)["cp_comm"] == "all_gather");
  CHECK_FALSE(to_json(ring).contains("cp_comm"));
  auto back = parallel_from_json(to_json(p), "test");
  REQUIRE(back.ok());
  CHECK(back->cp_comm == CpComm::all_gather);
}

TEST_CASE("loom plan and predict --cp-comm-type: pinned, searched, refused without cp", "[cp][cli]") {
  const std::string job = "--model llama3-8b --cluster dgx-h100 --gpus 16 --global-batch 16 --seq 8192 ";
  const LoomRun lone = run_loom("predict " + job + "--tp 2 --sp --pp 1 --cp-comm-type all_gather");
  CHECK(lone.code == 2);
  CHECK(lone.err == "loom: --cp-comm-type: all_gather needs cp > 1 (got cp 1)\n");
  const LoomRun pinned_one = run_loom("plan " + job + "--cp 1 --cp-comm-type all_gather");
  CHECK(pinned_one.code == 2);
  CHECK(pinned_one.err == "loom: --cp-comm-type: all_gather needs cp > 1 (got --cp 1)\n");
  // Pinned: every row all-gathers (cp 1 is not tried); unpinned, the ring and the all-gather
  // are both tried where cp > 1.
  const LoomRun ag = run_loom("plan " + job + "--top 5 --cp-comm-type all_gather");
  REQUIRE(ag.code == 0);
  const std::string table = ag.out.substr(0, ag.out.find("best plan"));
  size_t rows = 0, gathered = 0;
  for (size_t at = table.find("\n  "); at != std::string::npos; at = table.find("\n  ", at + 1)) {
    const std::string line = table.substr(at + 1, table.find('\n', at + 1) - at - 1);
    if (line.find("tp-") == std::string::npos) continue;
    ++rows;
    gathered += line.find(" ag") != std::string::npos;
  }
  CHECK(rows == 5);
  CHECK(gathered == rows);
  CHECK(ag.out.find("(cp N ag: context parallelism with K and V all-gathered") != std::string::npos);
  ModelSpec m = *load_model("llama3-8b", "test", nullptr);
  ClusterSpec c = *load_cluster("dgx-h100", "test");
  REQUIRE(size_cluster(c, 16, "test").ok());
  TrainSpec t;
  t.global_batch = 16, t.seq = 8192;
  SearchPins pins;
  pins.cp = 2;
  auto space = make_search_space(m, c, t, pins);
  REQUIRE(space.ok());
  for (const SplitSpace& sp : space->splits)
    CHECK(sp.cp_comms == std::vector<CpComm>{CpComm::p2p, CpComm::all_gather});
}
