// The planner (issue 4): its winner is the true best of a brute-force evaluation, pruning
// changes nothing, every rejection reason is counted, pins hold, and the answer does not
// depend on threads. The `loom plan` command's output and errors.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <map>
#include <set>

#include "planner/search.hpp"
#include "run_loom.hpp"
#include "sim/cost_model.hpp"
#include "sim/rank_grid.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

struct Job {
  ModelSpec model;
  ClusterSpec cluster;
  TrainSpec train;
};

Job job(const std::string& model, const std::string& cluster, int64_t gpus, int64_t batch, int64_t seq = 0,
        double headroom = -1) {
  Job j;
  auto m = load_model(model, "test", nullptr);
  REQUIRE(m.ok());
  j.model = *m;
  auto c = load_cluster(cluster, "test");
  REQUIRE(c.ok());
  j.cluster = *c;
  REQUIRE(size_cluster(j.cluster, gpus, "test").ok());
  if (headroom >= 0) j.cluster.runtime_memory.memory_headroom = headroom;
  j.train.global_batch = batch;
  j.train.seq = seq > 0 ? seq : j.model.seq_len;
  j.train.dp_bucket_bytes = 40'000'000 * 2;
  return j;
}

SearchResult run(const Job& j, const SearchPins& pins = {}, bool prune = true, int threads = 2, size_t k = 10) {
  auto space = make_search_space(j.model, j.cluster, j.train, pins);
  REQUIRE(space.ok());
  SearchOptions o;
  o.prune = prune;
  o.threads = threads;
  o.top_k = k;
  return search(j.model, j.cluster, *space, o);
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

// The brute force, written independently of search.cpp: every knob over a superset of its
// values, every grid priced afresh, validate_config deciding what is valid. Returns the best
// step time of a fitting configuration (infinity when none fits).
double brute_force_best(const Job& j) {
  double best = std::numeric_limits<double>::infinity();
  const int64_t n = j.cluster.gpus;
  for (Dtype g : {Dtype::bf16, Dtype::fp32}) {
    TrainSpec t = j.train;
    t.grad_dtype = g;
    t.dp_bucket_bytes = 40'000'000 * dtype_bytes(g);
    CostModel cm(j.model, j.cluster, t);
    for (int64_t tp : divisors(n))
      for (int64_t pp : divisors(n / tp))
        for (const auto& order : all_orders()) {
          ParallelConfig p;
          p.tp = tp;
          p.pp = pp;
          p.dp = n / (tp * pp);
          p.order = order;
          auto grid = RankGrid::make(p.tp, p.dp, p.pp, order);
          const GroupLinksSet links = group_links(cm.topology(), *grid);
          for (int z = 0; z <= 3; ++z)
            for (int64_t mb : divisors(t.global_batch))
              for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full})
                for (bool sp : {false, true})
                  for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::interleaved})
                    for (int64_t v : divisors(j.model.layers)) {
                      p.zero = z;
                      // ZeRO 1/2's weight gather under the next forward where it applies: it
                      // only ever hides time, so the best has it on (the search's rule).
                      p.overlap_param_gather = (z == 1 || z == 2) && p.dp > 1;
                      p.micro_batch = mb;
                      p.recompute = r;
                      p.sp = sp;
                      p.schedule = s;
                      p.vpp = v;
                      if (!validate_config(j.model, j.cluster, t, p, [](const std::string& f) { return f; })) continue;
                      const Estimate e = cm.evaluate(p, links);
                      if (e.fits) best = std::min(best, e.step_time_s);
                    }
        }
  }
  return best;
}

std::string key(const Estimate& e) {
  const auto& p = e.parallel;
  return std::to_string(p.dp) + "/" + std::to_string(p.tp) + "/" + std::to_string(p.pp) + "/z" +
         std::to_string(p.zero) + "/mb" + std::to_string(p.micro_batch) + "/r" +
         std::to_string(static_cast<int>(p.recompute)) + "/sp" + std::to_string(p.sp) + "/s" +
         std::to_string(static_cast<int>(p.schedule)) + "/v" + std::to_string(p.vpp) + "/" + p.order + "/g" +
         std::to_string(static_cast<int>(e.train.grad_dtype));
}

std::vector<std::string> keys(const SearchResult& r) {
  std::vector<std::string> out;
  for (const auto& e : r.top) out.push_back(key(e));
  return out;
}

void same_result(const SearchResult& a, const SearchResult& b) {
  CHECK(a.considered == b.considered);
  CHECK(a.rejected == b.rejected);
  CHECK(a.feasible == b.feasible);
  REQUIRE(a.top.size() == b.top.size());
  CHECK(keys(a) == keys(b));
  for (size_t i = 0; i < a.top.size(); ++i) CHECK(a.top[i].step_time_s == b.top[i].step_time_s);
}

}  // namespace

TEST_CASE("the winner is the true best of a brute-force evaluation") {
  const std::vector<Job> cases{
      job("gpt2-124m", "dgx-a100", 8, 32),
      job("gpt2-124m", "dgx-a100", 16, 64),          // two nodes: rank order matters
      job("gpt2-350m", "dgx-a100", 8, 16, 1024, 0.9),  // 8 GiB usable: memory decides
      job("llama3-8b", "dgx-h100", 16, 16, 2048),      // GQA: tp must divide kv heads
  };
  for (const auto& j : cases) {
    INFO(j.model.name << " on " << j.cluster.gpus << " GPUs, batch " << j.train.global_batch);
    const SearchResult r = run(j);
    REQUIRE(!r.top.empty());
    // Exact: both sides run the same arithmetic on the same configuration and links.
    CHECK(r.top.front().step_time_s == brute_force_best(j));
    CHECK(r.top.front().fits);
    for (size_t i = 1; i < r.top.size(); ++i) CHECK(r.top[i - 1].step_time_s <= r.top[i].step_time_s);
  }
}

TEST_CASE("pruning changes nothing: pruned and exhaustive searches agree on many small cases") {
  std::vector<Job> cases;
  for (const char* m : {"gpt2-124m", "gpt2-350m", "gpt2-774m"})
    for (int64_t gpus : {1, 2, 4, 8, 16})
      for (double headroom : {0.05, 0.8, 0.95}) cases.push_back(job(m, "dgx-a100", gpus, 32, 1024, headroom));
  cases.push_back(job("llama3-8b", "dgx-h100", 16, 16, 2048, 0.05));
  cases.push_back(job("llama3-8b", "dgx-h100", 8, 24, 4096, 0.5));
  cases.push_back(job("gpt2-124m", "h100-sxm", 1, 12, 512, 0.05));
  for (const auto& j : cases) {
    INFO(j.model.name << " on " << j.cluster.gpus << " x " << j.cluster.name << ", headroom "
                      << j.cluster.runtime_memory.memory_headroom);
    same_result(run(j, {}, true, 2, 20), run(j, {}, false, 2, 20));
  }
}

TEST_CASE("the memory lower bound never exceeds the predicted peak") {
  const Job j = job("gpt2-350m", "dgx-a100", 16, 32);
  auto space = make_search_space(j.model, j.cluster, j.train, {});
  REQUIRE(space.ok());
  int64_t checked = 0;
  for (const auto& t : space->trains) {
    CostModel cm(j.model, j.cluster, t);
    for (const auto& sp : space->splits)
      for (int z : space->zero)
        for (int64_t mb : sp.micro_batches)
          for (Recompute r : space->recompute)
            for (bool on : sp.sp)
              for (auto [s, v] : sp.schedules) {
                ParallelConfig p;
                p.dp = sp.dp, p.tp = sp.tp, p.pp = sp.pp, p.zero = z, p.micro_batch = mb, p.recompute = r;
                p.sp = on, p.schedule = s, p.vpp = v;
                if (!validate_config(j.model, j.cluster, t, p, [](const std::string& f) { return f; })) continue;
                ++checked;
                const int64_t lb = memory_lower_bound(j.model, j.cluster, t, p);
                const int64_t peak = cm.evaluate(p).memory.peak();
                if (lb > peak) FAIL("bound " << lb << " > peak " << peak << " for dp " << p.dp << " tp " << p.tp);
              }
  }
  CHECK(checked > 1000);
}

TEST_CASE("every rejection reason is counted") {
  auto rejected = [](const Job& j, const std::string& reason) {
    const SearchResult r = run(j);
    INFO(reason);
    REQUIRE(r.rejected.count(reason) == 1);
    CHECK(r.rejected.at(reason) > 0);
    int64_t sum = r.feasible;
    for (const auto& [k, v] : r.rejected) sum += v;
    CHECK(sum == r.considered);  // every candidate is either feasible or counted once
  };
  rejected(job("gpt2-124m", "dgx-a100", 8, 32), "tp does not divide heads");        // 12 heads, tp 8
  rejected(job("llama3-8b", "dgx-h100", 16, 16, 2048), "tp does not divide kv_heads");  // 8 kv heads, tp 16
  Job ffn = job("gpt2-124m", "dgx-a100", 8, 32);
  ffn.model.ffn_hidden = 3076;  // 4 divides it, 8 does not; heads made 24 so tp 8 passes them
  ffn.model.heads = ffn.model.kv_heads = 24;
  ffn.model.hidden = 24 * 32;
  rejected(ffn, "tp does not divide ffn_hidden");
  rejected(job("gpt2-124m", "dgx-a100", 8, 32), "pp x vpp does not divide layers");  // 12 layers, pp 8
  rejected(job("gpt2-124m", "dgx-a100", 8, 12), "dp x micro-batch does not divide global batch");  // dp 8
  rejected(job("gpt2-124m", "dgx-a100", 8, 32), "interleaved: micro-batches not a multiple of pp");
  rejected(job("gpt2-124m", "dgx-a100", 4, 32, 1022), "sp: tp does not divide seq");  // 1022 % 4
  rejected(job("gpt2-124m", "dgx-a100", 8, 32, 2048), "seq exceeds the position table");
  rejected(job("gpt2-350m", "dgx-a100", 8, 32, 1024, 0.9), kDoesNotFitMemory);
}

TEST_CASE("reason keys map validate_config's rules; unknown rules keep their text") {
  CHECK(reason_key("tp: must divide heads (12 % 8 != 0)") == "tp does not divide heads");
  CHECK(reason_key("vpp: pp x vpp must divide layers (12 % 8 != 0)") == "pp x vpp does not divide layers");
  CHECK(reason_key("zero: some new rule (x)") == "zero: some new rule");
}

TEST_CASE("pins and bounds are respected") {
  const Job j = job("gpt2-124m", "dgx-a100", 16, 64);
  auto all = [&](const SearchPins& pins, auto pred) {
    const SearchResult r = run(j, pins, true, 2, 200);
    REQUIRE(!r.top.empty());
    for (const auto& e : r.top) CHECK(pred(e));
  };
  SearchPins p;
  p.tp = 2;
  all(p, [](const Estimate& e) { return e.parallel.tp == 2; });
  p = {};
  p.pp = 4;
  all(p, [](const Estimate& e) { return e.parallel.pp == 4; });
  p = {};
  p.dp = 4;
  all(p, [](const Estimate& e) { return e.parallel.dp == 4; });
  p = {};
  p.max_tp = 2;
  all(p, [](const Estimate& e) { return e.parallel.tp <= 2; });
  p = {};
  p.zero = 2;
  all(p, [](const Estimate& e) { return e.parallel.zero == 2; });
  p = {};
  p.micro_batch = 2;
  all(p, [](const Estimate& e) { return e.parallel.micro_batch == 2; });
  p = {};
  p.recompute = Recompute::full;
  all(p, [](const Estimate& e) { return e.parallel.recompute == Recompute::full; });
  p = {};
  p.sp = true;
  all(p, [](const Estimate& e) { return e.parallel.sp && e.parallel.tp > 1; });
  p = {};
  p.sp = false;
  all(p, [](const Estimate& e) { return !e.parallel.sp; });
  p = {};
  p.schedule = Schedule::gpipe;
  all(p, [](const Estimate& e) { return e.parallel.schedule == Schedule::gpipe; });
  p = {};
  p.vpp = 3;
  all(p, [](const Estimate& e) { return e.parallel.schedule == Schedule::interleaved && e.parallel.vpp == 3; });
  p = {};
  p.grad_dtype = Dtype::fp32;
  all(p, [](const Estimate& e) { return e.train.grad_dtype == Dtype::fp32; });
  p = {};
  p.order = "dp-tp-pp";
  all(p, [](const Estimate& e) { return e.parallel.order == "dp-tp-pp"; });
  p = {};
  p.tp = 2, p.pp = 2, p.zero = 1, p.recompute = Recompute::selective, p.schedule = Schedule::interleaved;
  all(p, [](const Estimate& e) {
    return e.parallel.tp == 2 && e.parallel.pp == 2 && e.parallel.dp == 4 && e.parallel.zero == 1 &&
           e.parallel.recompute == Recompute::selective && e.parallel.schedule == Schedule::interleaved;
  });
}

TEST_CASE("contradicting pins are errors that name the flag") {
  const Job j = job("gpt2-124m", "dgx-a100", 8, 32);
  auto error = [&](const SearchPins& p) {
    auto s = make_search_space(j.model, j.cluster, j.train, p);
    REQUIRE(!s.ok());
    return s.error().message;
  };
  SearchPins p;
  p.tp = 3;
  CHECK(error(p).rfind("--tp: must divide --gpus", 0) == 0);
  p = {};
  p.tp = 2, p.pp = 2, p.dp = 4;
  CHECK(error(p).rfind("--dp: dp x tp x pp must equal --gpus", 0) == 0);
  p = {};
  p.tp = 4, p.max_tp = 2;
  CHECK(error(p).rfind("--tp: exceeds --max-tp", 0) == 0);
  p = {};
  p.sp = true, p.tp = 1;
  CHECK(error(p).rfind("--sp:", 0) == 0);
  p = {};
  p.vpp = 2, p.schedule = Schedule::one_f_one_b;
  CHECK(error(p).rfind("--vpp:", 0) == 0);
  p = {};
  p.schedule = Schedule::interleaved, p.pp = 1;
  CHECK(error(p).rfind("--schedule:", 0) == 0);
  p = {};
  p.zero = 4;
  CHECK(error(p).rfind("--zero:", 0) == 0);
  p = {};
  p.order = "tp-tp-dp";
  CHECK(error(p).rfind("--order:", 0) == 0);
}

TEST_CASE("the same inputs give the same plan, whatever the thread count") {
  const Job j = job("gpt2-124m", "dgx-a100", 16, 64);
  const SearchResult one = run(j, {}, true, 1, 30);
  for (int threads : {2, 3, 7}) {
    INFO(threads << " threads");
    same_result(one, run(j, {}, true, threads, 30));
  }
  same_result(one, run(j, {}, true, 1, 30));
}

TEST_CASE("refine_until_settled re-ranks what it re-scored and stops once no later candidate could win") {
  const Job j = job("gpt2-124m", "dgx-a100", 8, 32);
  SearchResult r = run(j, {}, true, 2, 5);
  REQUIRE(r.top.size() == 5);
  const auto before = keys(r);
  // A rescorer that makes the first plan slowest.
  auto slow_first = [&](const Plan& p) -> Expected<Estimate> {
    Estimate e = p.prediction;
    if (key(e) == before[0]) e.step_time_s *= 100;
    return e;
  };
  auto refined = refine_until_settled(r, j.model, j.cluster, 3, 5, slow_first);
  REQUIRE(refined.ok());
  CHECK(refined->refined == 3);  // the 4th is no faster than the best re-scored one
  CHECK(refined->shortlist_settled);
  const auto after = keys(*refined);
  CHECK(after[0] == before[1]);
  CHECK(after[1] == before[2]);
  CHECK(after[2] == before[0]);
  CHECK(after[3] == before[3]);
  // At least one: the first turns out slow, so the second could still win and is re-scored;
  // the third cannot beat the second and the search stops there.
  auto one = refine_until_settled(r, j.model, j.cluster, 1, 5, slow_first);
  REQUIRE(one.ok());
  CHECK(one->refined == 2);
  CHECK(keys(*one)[0] == before[1]);
  CHECK(keys(*one)[1] == before[0]);
  auto failing = refine_until_settled(r, j.model, j.cluster, 2, 5,
                                      [](const Plan&) -> Expected<Estimate> { return Error{"sim: no"}; });
  CHECK(!failing.ok());
}

// ---- the command line -------------------------------------------------------------------------

namespace {
const std::string kSmall = "plan --model gpt2-124m --cluster dgx-a100 --gpus 8 --global-batch 32 ";

size_t lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }
}  // namespace

TEST_CASE("loom plan prints the table, the winner's breakdown, the reason it wins and the summary") {
  LoomRun r = run_loom(kSmall + "--top 3");
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());  // piped: no progress bar
  for (const char* s : {"peak / capacity GiB", "memory per GPU", "time per step", "searched", "tp does not divide heads"})
    CHECK(r.out.find(s) != std::string::npos);
  // Why #1 is first: a faster step, or an equal one and a lower peak.
  CHECK((r.out.find("#1 beats #2") != std::string::npos || r.out.find("#1 ties with #2") != std::string::npos));
}

TEST_CASE("loom plan --json has best, top, considered, rejected, search_time_s") {
  LoomRun r = run_loom(kSmall + "--top 4 --json");
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"best", "top", "considered", "rejected", "search_time_s"}) CHECK(j.contains(k));
  CHECK(j["top"].size() == 4);
  CHECK(j["best"] == j["top"][0]);
  CHECK(j["best"]["fits"] == true);
  CHECK(j["schema_version"] == 1);
  // Each reason: {"id", "reason", "candidates"}, the id a stable identifier beside the sentence.
  int64_t rejected = 0;
  REQUIRE(j["rejected"].is_array());
  for (const auto& e : j["rejected"]) {
    CHECK(e.size() == 3);
    CHECK(e["id"] == loom::reason_id(e["reason"].get<std::string>()));
    rejected += e["candidates"].get<int64_t>();
  }
  CHECK(rejected + j["feasible"].get<int64_t>() == j["considered"].get<int64_t>());
}

TEST_CASE("each search rejection reason has its stable identifier", "[plan-json]") {
  using loom::reason_id;
  CHECK(reason_id("tp does not divide heads") == "tp_not_divide_heads");
  CHECK(reason_id("tp does not divide kv_heads") == "tp_not_divide_kv_heads");
  CHECK(reason_id("tp does not divide ffn_hidden") == "tp_not_divide_ffn_hidden");
  CHECK(reason_id("pp x vpp does not divide layers") == "pp_vpp_not_divide_layers");
  CHECK(reason_id("dp x micro-batch does not divide global batch") == "dp_micro_batch_not_divide_global_batch");
  CHECK(reason_id("interleaved: micro-batches not a multiple of pp") == "interleaved_micro_batches_not_multiple_of_pp");
  CHECK(reason_id("sp: tp does not divide seq") == "sp_tp_not_divide_seq");
  CHECK(reason_id("seq exceeds the position table") == "seq_exceeds_position_table");
  CHECK(reason_id(loom::kDoesNotFitMemory) == "does_not_fit_memory");
  // A rule without an entry: its sentence as an identifier.
  CHECK(reason_id("vpp: must be <= 8, the most ") == "vpp_must_be_8_the_most");
}

TEST_CASE("loom plan -o writes a plan that predict --plan re-evaluates to the same numbers") {
  auto path = temp_file("planned.json", "");
  LoomRun a = run_loom(kSmall + "--json -o " + path);
  REQUIRE(a.code == 0);
  LoomRun b = run_loom("predict --json --plan " + path);
  REQUIRE(b.code == 0);
  auto best = nlohmann::json::parse(a.out)["best"];
  // plan's winner also carries the event simulator's step (--refine); predict does not simulate.
  CHECK(best["simulated_step_time_s"].is_number());
  best["simulated_step_time_s"] = nullptr;
  CHECK(nlohmann::json::parse(b.out) == best);
}

TEST_CASE("loom plan --refine re-ranks the best K by the simulated step time") {
  LoomRun r = run_loom(kSmall + "--json --top 6 --refine 4");
  REQUIRE(r.code == 0);
  auto top = nlohmann::json::parse(r.out)["top"];
  REQUIRE(top.size() == 6);
  for (size_t i = 0; i < 4; ++i) CHECK(top[i]["simulated_step_time_s"].is_number());
  for (size_t i = 4; i < 6; ++i) CHECK(top[i]["simulated_step_time_s"].is_null());
  for (size_t i = 0; i + 1 < 4; ++i)
    CHECK(top[i]["simulated_step_time_s"].get<double>() <= top[i + 1]["simulated_step_time_s"].get<double>());
  LoomRun off = run_loom(kSmall + "--json --refine 0");
  REQUIRE(off.code == 0);
  CHECK(nlohmann::json::parse(off.out)["best"]["simulated_step_time_s"].is_null());
  LoomRun bad = run_loom(kSmall + "--refine -1");
  CHECK(bad.code == 2);
  CHECK(bad.err == "loom: --refine: must be >= 0\n");
}

TEST_CASE("loom plan pins on the command line") {
  LoomRun r = run_loom(kSmall + "--tp 2 --pp 2 --zero 1 --sp on --recompute selective --json --top 50");
  REQUIRE(r.code == 0);
  for (const auto& e : nlohmann::json::parse(r.out)["top"]) {
    CHECK(e["tp"] == 2);
    CHECK(e["pp"] == 2);
    CHECK(e["zero"] == 1);
    CHECK(e["sp"] == true);
    CHECK(e["recompute"] == "selective");
  }
}

TEST_CASE("loom plan: bad pins get one line naming the flag, exit 2") {
  auto rejected = [](const std::string& args, const std::string& must) {
    INFO("loom " << args);
    LoomRun r = run_loom(args);
    INFO("stderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find(must) != std::string::npos);
    CHECK(r.out.empty());
  };
  rejected(kSmall + "--tp 3", "--tp: must divide --gpus");
  rejected(kSmall + "--tp 0", "--tp: must be >= 1");
  rejected(kSmall + "--tp 4 --max-tp 2", "--tp: exceeds --max-tp");
  rejected(kSmall + "--zero 5", "--zero");
  rejected(kSmall + "--sp on --tp 1", "--sp");
  rejected(kSmall + "--sp maybe", "--sp");
  rejected(kSmall + "--vpp 2 --schedule 1f1b", "--vpp");
  rejected(kSmall + "--schedule interleaved --pp 1", "--schedule");
  rejected(kSmall + "--schedule zigzag", "--schedule");
  rejected(kSmall + "--recompute some", "--recompute");
  rejected(kSmall + "--memory-headroom 1.5", "--memory-headroom");
  rejected(kSmall + "--top 0", "--top");
  rejected(kSmall + "--order tp-dp", "--order");
  rejected(kSmall + "--micro-batch 0", "--micro-batch");
  rejected("plan --model gpt2-124m --cluster dgx-a100 --gpus 8", "--global-batch");
}

TEST_CASE("loom plan: nothing fits is an answer, not an error") {
  LoomRun r = run_loom("plan --model gpt3-175b --cluster dgx-a100 --gpus 8 --global-batch 8 --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["best"].is_null());
  int64_t not_fit = 0;
  for (const auto& e : j["rejected"])
    if (e["id"] == "does_not_fit_memory") {
      CHECK(e["reason"] == "does not fit memory");
      not_fit = e["candidates"].get<int64_t>();
    }
  CHECK(not_fit > 0);
}

TEST_CASE("the simulator's shortlist grows until no candidate beyond it could win") {
  // Re-scoring at least 3 or at least 40 of GPT-3 175B's candidates picks the same winner: the
  // stopping rule (refine_until_settled) only stops once no later candidate could beat it.
  auto few = run_loom("plan --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --refine 3 --json");
  auto many = run_loom("plan --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --refine 40 --json");
  REQUIRE(few.code == 0);
  REQUIRE(many.code == 0);
  const auto a = nlohmann::json::parse(few.out), b = nlohmann::json::parse(many.out);
  CHECK(a["shortlist_settled"].get<bool>());
  CHECK(a["refined"].get<int64_t>() >= 3);
  CHECK(b["refined"].get<int64_t>() >= 40);
  for (const char* k : {"dp", "tp", "pp", "zero", "micro_batch", "schedule", "vpp", "recompute", "sp", "order"})
    CHECK(a["best"][k] == b["best"][k]);
  CHECK(a["best"]["simulated_step_time_s"] == b["best"]["simulated_step_time_s"]);
}
