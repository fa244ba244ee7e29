// Tensor-parallel communication overlapped with the GEMMs (--tp-comm-overlap; sim/tp_overlap.hpp):
// the stage description, the hidden-time formula against a hand computation, the analytical
// model against the event simulator, validation, JSON, the search and the command line.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/op_timer.hpp"
#include "sim/simulator.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_work.hpp"
#include "sim/tp_overlap.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

struct Job {
  ModelSpec m;
  ClusterSpec c;
  TrainSpec t;
};

Job job(const char* model, const char* cluster, int64_t gpus, int64_t batch, int64_t seq) {
  Job j{*load_model(model, "test", nullptr), *load_cluster(cluster, "test"), {}};
  REQUIRE(size_cluster(j.c, gpus, "test"));
  j.t.global_batch = batch;
  j.t.seq = seq;
  j.t.dp_bucket_bytes = 80'000'000;  // Megatron-core's 40e6 elements of bf16
  return j;
}

ParallelConfig config(int64_t dp, int64_t tp, int64_t pp, bool overlap) {
  ParallelConfig p;
  p.dp = dp, p.tp = tp, p.pp = pp, p.sp = true, p.tp_comm_overlap = overlap;
  return p;
}

const Op& op_named(const StageWork& w, const char* name, Pass pass) {
  for (const Op& o : w.ops)
    if (o.pass == pass && std::strcmp(o.name, name) == 0) return o;
  FAIL("no op " << name);
  return w.ops.front();
}

std::string field_namer(const std::string& f) { return f; }

}  // namespace

TEST_CASE("tp comm overlap: the layers' halves overlap, the GEMMs run in tp chunks, bytes and FLOPs unchanged",
          "[tp_overlap]") {
  // Llama 3 70B, 80 layers over pp 4: 20 a stage; tp 8 with SP.
  const Job j = job("llama3-70b", "dgx-h100", 64, 64, 8192);
  const ParallelConfig off = config(2, 8, 4, false), on = config(2, 8, 4, true);
  REQUIRE(validate_config(j.m, j.c, j.t, on, field_namer));
  for (int64_t stage : {0, 1}) {
    const StageWork a = build_stage_work(j.m, j.c, j.t, off, stage), b = build_stage_work(j.m, j.c, j.t, on, stage);
    INFO("stage " << stage);
    CHECK(b.flops_per_micro_batch() == a.flops_per_micro_batch());
    CHECK(b.memory().peak() == a.memory().peak());
    int64_t halves_a = 0, halves_b = 0, overlapped_fwd = 0, overlapped_bwd = 0;
    for (const Message& msg : a.messages)
      if (msg.group == Group::tp && msg.cadence == Cadence::micro_batch) halves_a += msg.count * msg.bytes;
    for (const Message& msg : b.messages) {
      if (msg.group == Group::tp && msg.cadence == Cadence::micro_batch) halves_b += msg.count * msg.bytes;
      if (std::strcmp(msg.name, kTpOverlappedMessage) != 0) continue;
      (msg.pass == Pass::forward ? overlapped_fwd : overlapped_bwd) = msg.count;
    }
    CHECK(halves_b == halves_a);               // the same bytes, now partly overlapped
    CHECK(overlapped_fwd == 4 * 20);           // AG + RS around attention and around the MLP
    CHECK(overlapped_bwd == 6 * 20);           // and SP's two re-gathers for the weight gradients
    // The ends keep theirs in-line: the embedding's reduce-scatter (forward) and all-gather
    // (backward) on the first stage; nothing in-line on an interior one.
    const Message* inline_fwd = b.find(Group::tp, "tp activations");
    if (stage == 0) REQUIRE((inline_fwd != nullptr && inline_fwd->count == 1));
    else CHECK(inline_fwd == nullptr);
    const Op &qkv_a = op_named(a, "qkv", Pass::forward), &qkv_b = op_named(b, "qkv", Pass::forward);
    CHECK(qkv_b.m == qkv_a.m / 8);
    CHECK(qkv_b.count == qkv_a.count * 8);
    CHECK(qkv_b.scale == 1);  // ring-exchange all-gather: copy engines, no SMs taken
    // Reduce-scatter after the projection (pipeline method): 16 of H100's 132 SMs.
    CHECK(op_named(b, "attention projection", Pass::forward).scale == 132.0 / 116.0);
    CHECK(op_named(b, "qkv", Pass::backward).scale == 132.0 / 116.0);  // bulk AG + RS
    CHECK(op_named(b, "attention projection", Pass::backward).scale == 1);
  }
}

namespace {

// Overlapped halves beside a layer GEMM of each slot, per layer (Transformer Engine's pairing,
// sim/tp_overlap.cpp): forward one each; backward two beside QKV and fc1 (the input gathered
// again for the weight gradient, the data gradient reduce-scattered), one beside the others.
int64_t halves_beside(const Op& o) {
  if (o.kind != OpKind::gemm && o.kind != OpKind::gemm_bwd) return 0;
  const bool wide = o.tp_slot == TpOverlapSlot::qkv || o.tp_slot == TpOverlapSlot::fc1;
  return o.tp_slot == TpOverlapSlot::none ? 0 : o.pass == Pass::backward && wide ? 2 : 1;
}

}  // namespace

TEST_CASE("tp comm overlap pairs GEMMs by slot: every overlapped half has one GEMM beside it, MLA's and the "
          "shared experts' too", "[tp_overlap]") {
  struct Case {
    const char* model;
    int64_t gpus, tp, seq;
    Recompute r;
  };
  // GPT (fc1), Llama (gate|up), and DeepSeek-V2-Lite: latent attention without q-LoRA (its
  // all-gather beside "mla q"), one dense layer and 26 MoE layers with two shared experts (the
  // MLP's halves beside "shared expert gate|up" and "shared expert down").
  // GPT-3 at its learned position table's 2048 tokens.
  for (const Case& k : {Case{"gpt3-175b", 8, 8, 2048, Recompute::full}, Case{"llama3-8b", 8, 4, 4096, Recompute::none},
                        Case{"deepseek-v2-lite", 8, 2, 4096, Recompute::full}}) {
    INFO(k.model);
    const Job j = job(k.model, "dgx-h100", k.gpus, 16, k.seq);
    ParallelConfig p = config(k.gpus / k.tp, k.tp, 1, true);
    p.recompute = k.r;
    REQUIRE(validate_config(j.m, j.c, j.t, p, field_namer));
    const StageWork w = build_stage_work(j.m, j.c, j.t, p, 0);
    int64_t beside[3] = {0, 0, 0}, overlapped[3] = {0, 0, 0};  // by pass: forward, backward, recompute
    for (const Op& o : w.ops)
      if (o.pass != Pass::step)  // forward GEMMs in tp chunks, backward ones whole
        beside[static_cast<int>(o.pass)] += halves_beside(o) * o.count / (o.pass == Pass::backward ? 1 : k.tp);
    for (const Message& msg : w.messages)
      if (std::strcmp(msg.name, kTpOverlappedMessage) == 0) overlapped[static_cast<int>(msg.pass)] = msg.count;
    for (int pass = 0; pass < 3; ++pass) {
      INFO("pass " << pass);
      CHECK(beside[pass] == overlapped[pass]);
    }
    CHECK(overlapped[1] == 6 * j.m.layers);
  }
}

TEST_CASE("tp comm overlap on DeepSeek-V2-Lite: the all-gather beside MLA's q projection is hidden", "[tp_overlap]") {
  const Job j = job("deepseek-v2-lite", "dgx-h100", 8, 16, 4096);
  const ParallelConfig off = config(4, 2, 1, false), on = config(4, 2, 1, true);
  REQUIRE(validate_config(j.m, j.c, j.t, on, field_namer));
  const StageWork a = build_stage_work(j.m, j.c, j.t, off, 0), b = build_stage_work(j.m, j.c, j.t, on, 0);
  for (const char* name : {"mla q", "shared expert gate|up", "shared expert down"}) {
    INFO(name);
    const Op &x = op_named(a, name, Pass::forward), &y = op_named(b, name, Pass::forward);
    CHECK(y.m == x.m / 2);  // tp chunks of T / tp rows
    CHECK(y.count == x.count * 2);
  }
  CHECK(op_named(b, "mla kv down", Pass::forward).count == op_named(a, "mla kv down", Pass::forward).count);
  // What the q projection's chunks alone hide, over NVLink inside the node: more than nothing
  // in either pass.
  StageWork q_only = b;
  q_only.ops.clear();
  for (const Op& o : b.ops)
    if (o.tp_slot == TpOverlapSlot::qkv) q_only.ops.push_back(o);
  REQUIRE(q_only.ops.size() == 2);  // forward and backward
  const GroupLinks tp{2, j.c.intra_node.busbw_bytes_per_s, j.c.intra_node.latency_s, 1};
  const TpHiddenTime hidden = tp_overlap_hidden_s(q_only, tp, OpTimer::of(j.c, j.t));
  CHECK(hidden.forward_s > 0);
  CHECK(hidden.backward_s > 0);
  // The step: less exposed tp time with the overlap, and the event simulator within 3% of it.
  const CostModel cm(j.m, j.c, j.t);
  const Estimate e_off = cm.evaluate(off), e_on = cm.evaluate(on);
  CHECK(e_on.time.tp_comm_s < e_off.time.tp_comm_s);
  auto sim = simulate(cm, on, SimOptions{});
  REQUIRE(sim);
  CHECK(std::fabs(sim->step_time_s - e_on.step_time_s) <= 0.03 * e_on.step_time_s);
}

TEST_CASE("tp comm overlap hides (1 - 1/tp) min(comm, gemm) per GEMM: a hand computation", "[tp_overlap]") {
  // One layer's QKV on tp 4, chunked: 4 calls of (1024, 1024, 1024), 2^31 FLOPs each at
  // 1e12 FLOP/s, no launch cost: g = 4 x 2.147483648e-3 s. One overlapped half beside it.
  OpTimer op;
  op.peak_flops = 1e12, op.gemm_eff = 1, op.gemm_half = 0, op.hbm = 1e18, op.mem_eff = 1, op.launch_s = 0;
  StageWork w;
  w.ops.push_back(beside_tp_collective(gemm("qkv", Pass::forward, 1024, 1024, 1024, 4), TpOverlapSlot::qkv));
  const double g = 4 * 2.147483648e-3;
  // Ring reduce-scatter over 4 ranks at 1e11 B/s, no latency: 3/4 x bytes / 1e11 seconds.
  const GroupLinks tp{4, 1e11, 0, 1};
  for (const double bytes : {4e8, 4e9}) {  // comm 3 ms < g, then 30 ms > g
    w.messages = {message(kTpOverlappedMessage, Group::tp, MessageKind::reduce_scatter, Pass::forward,
                          Cadence::micro_batch, static_cast<int64_t>(bytes), 1)};
    const double comm = 0.75 * bytes / 1e11;
    const TpHiddenTime h = tp_overlap_hidden_s(w, tp, op);
    CHECK(h.forward_s == Approx(0.75 * std::min(comm, g)).epsilon(1e-12));
    CHECK(h.backward_s == 0);
  }
}

TEST_CASE("tp comm overlap: the analytical step and the event simulator agree within 3%", "[tp_overlap]") {
  struct Case {
    const char* model;
    const char* cluster;
    int64_t gpus, batch, seq, dp, tp, pp;
    Recompute r;
    int zero;
  };
  // GPT-3 175B as Narayanan et al. ran it (tp 8, pp 8; 1536 sequences) and Llama 3 70B on H100s
  // with full recompute and the distributed optimizer.
  for (const Case& k : {Case{"gpt3-175b", "dgx-a100", 1024, 1536, 2048, 16, 8, 8, Recompute::selective, 1},
                        Case{"llama3-70b", "dgx-h100", 64, 64, 8192, 2, 8, 4, Recompute::full, 1},
                        Case{"llama3-8b", "dgx-h100", 16, 32, 4096, 4, 4, 1, Recompute::none, 0}}) {
    const Job j = job(k.model, k.cluster, k.gpus, k.batch, k.seq);
    const CostModel cm(j.m, j.c, j.t);
    double step[2] = {0, 0};
    for (const bool overlap : {false, true}) {
      ParallelConfig p = config(k.dp, k.tp, k.pp, overlap);
      p.recompute = k.r, p.zero = k.zero;
      REQUIRE(validate_config(j.m, j.c, j.t, p, field_namer));
      const Estimate e = cm.evaluate(p);
      auto sim = simulate(cm, p, SimOptions{});
      REQUIRE(sim);
      INFO(k.model << " overlap " << overlap << ": analytical " << e.step_time_s << " s, simulated "
                   << sim->step_time_s << " s");
      // 3%: issue 14's bar for the two models on every plan.
      CHECK(std::fabs(sim->step_time_s - e.step_time_s) <= 0.03 * e.step_time_s);
      step[overlap] = e.step_time_s;
      if (overlap) CHECK(e.time.tp_comm_s < cm.evaluate(config(k.dp, k.tp, k.pp, false)).time.tp_comm_s);
    }
    CHECK(step[1] != step[0]);
  }
}

TEST_CASE("tp comm overlap: validation, JSON and the command line", "[tp_overlap]") {
  const Job j = job("llama3-8b", "dgx-h100", 8, 16, 4096);
  ParallelConfig p = config(1, 8, 1, true);
  p.sp = false;
  auto st = validate_config(j.m, j.c, j.t, p, field_namer);
  REQUIRE(!st);
  CHECK(st.error().message ==
        "tp_comm_overlap: tensor-parallel communication overlap needs sequence parallelism and tp > 1 (got sp off, tp 8)");
  Job cpu = job("gpt2-124m", "cpu-mpi", 2, 4, 64);
  ParallelConfig q = config(1, 2, 1, true);
  auto st2 = validate_config(cpu.m, cpu.c, cpu.t, q, field_namer);
  REQUIRE(!st2);
  CHECK(st2.error().message.rfind("tp_comm_overlap: needs the GPU's SM count", 0) == 0);

  p.sp = true;
  const nlohmann::json js = to_json(p);
  CHECK(js.at("tp_comm_overlap") == true);
  CHECK(parallel_from_json(js, "plan.json", "/parallel")->tp_comm_overlap);
  nlohmann::json without = js;
  without.erase("tp_comm_overlap");
  CHECK(!parallel_from_json(without, "plan.json", "/parallel")->tp_comm_overlap);
  CHECK(!to_json(config(1, 8, 1, false)).contains("tp_comm_overlap"));  // other plans stay as they were

  const std::string args = "predict --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 16 --seq 4096 --tp 8 --pp 1 ";
  LoomRun ok = run_loom(args + "--sp --tp-comm-overlap on --json");
  REQUIRE(ok.code == 0);
  CHECK(nlohmann::json::parse(ok.out).at("tp_comm_overlap") == true);
  LoomRun bad = run_loom(args + "--tp-comm-overlap");
  CHECK(bad.code == 2);
  CHECK(bad.err ==
        "loom: --tp-comm-overlap: tensor-parallel communication overlap needs sequence parallelism and tp > 1 (got sp "
        "off, tp 8)\n");
  LoomRun plan = run_loom("plan --model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 16 --seq 4096 --tp 8 "
                          "--tp-comm-overlap on --top 2");
  REQUIRE(plan.code == 0);
  CHECK(plan.out.find("  tpo\n") != std::string::npos);
}

TEST_CASE("tp comm overlap in the search: tried where sp and tp > 1, pinned either way", "[tp_overlap]") {
  const Job j = job("llama3-8b", "dgx-h100", 16, 64, 4096);
  SearchOptions o;
  o.top_k = 5;
  auto run = [&](std::optional<bool> pin) {
    SearchPins pins;
    pins.tp_comm_overlap = pin;
    auto space = make_search_space(j.m, j.c, j.t, pins);
    REQUIRE(space);
    return search(j.m, j.c, *space, o);
  };
  const SearchResult both = run(std::nullopt), off = run(false), on = run(true);
  CHECK(both.considered > off.considered);
  CHECK(both.top.front().step_time_s <= off.top.front().step_time_s);
  CHECK(both.top.front().step_time_s <= on.top.front().step_time_s);
  REQUIRE(!on.top.empty());
  for (const Estimate& e : on.top) CHECK((e.parallel.tp_comm_overlap && e.parallel.sp && e.parallel.tp > 1));
  for (const Estimate& e : off.top) CHECK(!e.parallel.tp_comm_overlap);
  // The pruned search's best is the exhaustive one's (the on/off variants share one memory bound).
  o.prune = false;
  auto space = make_search_space(j.m, j.c, j.t, {});
  const SearchResult all = search(j.m, j.c, *space, o);
  CHECK(all.top.front().step_time_s == both.top.front().step_time_s);
  CHECK(all.top.front().parallel.tp_comm_overlap == both.top.front().parallel.tp_comm_overlap);
  SearchPins bad;
  bad.tp_comm_overlap = true;
  bad.sp = false;
  auto refused = make_search_space(j.m, j.c, j.t, bad);
  REQUIRE(!refused);
  CHECK(refused.error().message == "--tp-comm-overlap: tensor-parallel communication overlap needs --sp on and tp > 1");
}
