// Offload (sim/offload.hpp): what moves to host memory, what crosses the host link and what it
// costs, the same in the cost model and the simulator; the flag, the plan file, the engines'
// names for it; and the planner fitting GPT-3 175B on fewer GPUs with it.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "run_loom.hpp"
#include "sim_fixtures.hpp"
#include "sim/cost_model.hpp"
#include "sim/model_math.hpp"
#include "sim/offload.hpp"
#include "sim/plan.hpp"
#include "sim/simulator.hpp"
#include "sim/stage_work.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"

using namespace loom;
using namespace loom::test;

namespace {

// Sums of the same doubles in a different order (the simulator's tasks, the cost model's
// terms): they agree to ~1e-12 relative; 1e-9 still catches a copy one of them leaves out.
constexpr double kExact = 1e-9;
bool close(double a, double b) { return std::fabs(a - b) <= kExact * std::max({std::fabs(a), std::fabs(b), 1e-30}); }

Status check(const Job& j, const ParallelConfig& p) {
  return validate_config(j.model, j.cluster, j.train, p, [](const std::string& f) { return f; });
}

ParallelConfig config(int64_t dp, int64_t tp, int64_t pp, int zero, Offload o, Recompute r = Recompute::none) {
  ParallelConfig p;
  p.dp = dp, p.tp = tp, p.pp = pp, p.zero = zero, p.offload = o, p.recompute = r;
  return p;
}

const Buffer* buffer(const StageWork& w, const char* name) {
  for (const Buffer& b : w.buffers)
    if (std::strcmp(b.name, name) == 0) return &b;
  return nullptr;
}

// Device bytes the runtime's fragmentation fraction is charged on (stage_work.cpp runtime_buffers).
int64_t allocated(const StageWork& w) {
  int64_t a = 0;
  for (const Buffer& b : w.buffers)
    if (b.placement == Placement::device && b.category != MemCategory::workspace && b.category != MemCategory::runtime)
      a += b.bytes;
  return a;
}

}  // namespace

TEST_CASE("offload: the optimizer state moves to the host, byte for byte", "[offload]") {
  const Job j = job("gpt3-175b", "dgx-a100", 64, 8, 2048);
  const ParallelConfig none = config(1, 8, 8, 0, Offload::none, Recompute::full);
  const ParallelConfig opt = config(1, 8, 8, 0, Offload::optimizer, Recompute::full);
  REQUIRE(check(j, opt).ok());
  const StageWork a = build_stage_work(j.model, j.cluster, j.train, none, 1);
  const StageWork b = build_stage_work(j.model, j.cluster, j.train, opt, 1);
  const int64_t n = b.optimizer_params;
  CHECK(n == a.optimizer_params);
  // ZeRO paper's K = 12 bytes of Adam state per parameter: on the host now, none on the GPU.
  CHECK(b.host_bytes() == 12 * n);
  CHECK(b.memory().optimizer == 0);
  CHECK(a.memory().optimizer == 12 * n);
  CHECK(b.memory().weights == a.memory().weights);
  CHECK(b.memory().grads == a.memory().grads);
  CHECK(b.memory().activations == a.memory().activations);
  // The device peak falls by the state and the allocator's 5% rounding of it.
  const double f = j.cluster.runtime_memory.allocator_fragmentation;
  const auto frag = [&](const StageWork& w) {
    return static_cast<int64_t>(std::ceil(f * static_cast<double>(allocated(w))));
  };
  CHECK(a.memory().peak() - b.memory().peak() == 12 * n + frag(a) - frag(b));
  // Per step: the gradient shard out (bf16, 2 n), the updated bf16 weights back (2 n).
  const Message* out = b.find(Group::host, "host gradients");
  const Message* in = b.find(Group::host, "host weights");
  REQUIRE(out != nullptr);
  REQUIRE(in != nullptr);
  CHECK(out->kind == MessageKind::to_host);
  CHECK(in->kind == MessageKind::to_device);
  CHECK(out->cadence == Cadence::step);
  CHECK(out->bytes == 2 * n);
  CHECK(in->bytes == 2 * n);
  CHECK(b.optimizer_on_host);
  CHECK_FALSE(a.optimizer_on_host);
}

TEST_CASE("offload: optimizer+params streams each micro-batch's weight shard in twice and gradients out",
          "[offload]") {
  const Job j = job("gpt3-175b", "dgx-a100", 64, 64, 2048);
  const ParallelConfig p = config(8, 8, 1, 3, Offload::optimizer_params, Recompute::full);
  REQUIRE(check(j, p).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const int64_t shard = (w.params + 7) / 8;  // ZeRO-3: ceil(params / dp)
  CHECK(w.optimizer_params == shard);
  // Weights (2), gradients (2) and Adam state (12) of the shard on the host.
  CHECK(w.host_bytes() == 16 * shard);
  CHECK(w.memory().weights == 0);
  CHECK(w.memory().grads == 0);
  CHECK(w.memory().optimizer == 0);
  // On the GPU: two layers' weight shards (current and prefetched) and one's gradient shard; the
  // largest "layer" of GPT-3 with tp 8 is the vocab-parallel embedding with the positions.
  const LayerParams lp = layer_params(j.model);
  const int64_t layer = lp.sharded / 8 + lp.replicated;
  const int64_t embed = vocab_per_rank(j.model.vocab, 8) * j.model.hidden + j.model.seq_len * j.model.hidden;
  const Buffer* staged = buffer(w, "host-streamed layer shards");
  REQUIRE(staged != nullptr);
  CHECK(staged->bytes == (2 * 2 + 2) * ((std::max(layer, embed) + 7) / 8));
  const Message* fwd = nullptr;
  int in_count = 0;
  for (const Message& m : w.messages)
    if (m.group == Group::host) {
      CHECK(m.cadence == Cadence::micro_batch);
      CHECK(m.pieces == 96);  // layer by layer
      if (m.kind == MessageKind::to_device) ++in_count, fwd = m.pass == Pass::forward ? &m : fwd;
      if (m.kind == MessageKind::to_host) CHECK(m.bytes == 2 * shard);
    }
  CHECK(in_count == 2);  // forward and backward
  REQUIRE(fwd != nullptr);
  CHECK(fwd->bytes == 2 * shard);
}

TEST_CASE("offload: activations go to the host instead of being recomputed", "[offload]") {
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  const ParallelConfig p = config(1, 2, 4, 1, Offload::activations);
  REQUIRE(check(j, p).ok());
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const int64_t act = layer_activation_bytes(j.model, 1, 1024, 2, false, Recompute::none, Attention::fused,
                                             Dtype::bf16).total();
  const int64_t layers = 24 / 4;
  const Buffer* host = buffer(w, "layer activations");
  REQUIRE(host != nullptr);
  CHECK(host->placement == Placement::host);
  CHECK(host->bytes == w.in_flight * layers * act);  // 1F1B: 4 micro-batches in flight on stage 0
  CHECK(w.in_flight == 4);
  CHECK(w.host_bytes() == 4 * layers * act);
  const Buffer* transit = buffer(w, "activations in transit");
  REQUIRE(transit != nullptr);
  CHECK(transit->bytes == 2 * act);
  for (const Message& m : w.messages)
    if (m.group == Group::host) CHECK(m.bytes == layers * act);
  // Not with recompute: it is the alternative to it.
  auto bad = check(j, config(1, 2, 4, 1, Offload::activations, Recompute::full));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.rfind("offload: activations is the alternative to recompute", 0) == 0);
}

TEST_CASE("offload: the host link and the CPU optimizer priced from the cluster's host figures", "[offload]") {
  // A copy of L layers beside `window` of compute shows one layer's copy and what the rest
  // exceeds the window by; without overlap all of it.
  CHECK(host_exposed_s(10, 5, 3, true) == 2 + 5);
  CHECK(host_exposed_s(10, 5, 20, true) == 2);
  CHECK(host_exposed_s(10, 5, 3, false) == 10);
  CHECK(host_exposed_s(10, 1, 0, true) == 10);

  const Job j = job("gpt2-350m", "dgx-a100", 8, 16, 1024);
  const ParallelConfig p = config(8, 1, 1, 1, Offload::optimizer);
  REQUIRE(check(j, p).ok());
  const Estimate e = CostModel(j.model, j.cluster, j.train).evaluate(p);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  const double n = static_cast<double>(w.optimizer_params);
  // CPU AdamW reads and writes 12 + 2 + 12 + 2 = 28 bytes per parameter of its shard over the
  // node's DRAM (409.6 GB/s: two EPYC 7742 x 8 DDR4-3200 channels), which its 8 GPUs share.
  CHECK(close(e.stages[0].optimizer_s, 28 * n * 8 / 409.6e9));
  // Gradients out and weights in, 2 n bytes each, over PCIe Gen4 x16 (31.5 GB/s each way).
  CHECK(close(e.stages[0].host_step_s, 4 * n / 31.5e9));
  CHECK(e.stages[0].host_s == 0);
  CHECK(close(e.time.host_comm_s, 4 * n / 31.5e9));
  CHECK(e.comm.host == 4 * w.optimizer_params);
  CHECK(close(e.step_time_s, e.time.total_s()));

  // Activations: per micro-batch and pass, one layer's copy (24 x act bytes over PCIe Gen5 x16,
  // 63 GB/s) exposed and the rest beside the pass's compute and tp time, what exceeds it shown.
  // GPT-2 350M's layers are too small to hide it in forward (the link does not keep up).
  const Job h = job("gpt2-350m", "dgx-h100", 1, 4, 1024);
  const ParallelConfig a = config(1, 1, 1, 0, Offload::activations);
  const Estimate ea = CostModel(h.model, h.cluster, h.train).evaluate(a);
  const StageEstimate& s = ea.stages[0];
  const double act = static_cast<double>(
      layer_activation_bytes(h.model, 1, 1024, 1, false, Recompute::none, Attention::fused, Dtype::bf16).total());
  const double copy = 24 * act / 63e9, one = act / 63e9;
  const double fwd_window = s.forward_s + s.tp_forward_s, bwd_window = s.backward_s + s.recompute_s;
  CHECK(copy - one > fwd_window);
  const double expected = one + std::max(0.0, copy - one - fwd_window) + one + std::max(0.0, copy - one - bwd_window);
  CHECK(close(s.host_s, expected));
  CHECK(close(ea.time.host_comm_s, 4 * expected));  // 4 micro-batches
  CHECK(ea.memory.activations < CostModel(h.model, h.cluster, h.train).evaluate(config(1, 1, 1, 0, Offload::none))
                                    .memory.activations);
}

TEST_CASE("offload: the simulator's host-link tasks equal the analytical terms", "[offload]") {
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  int64_t configs = 0;
  for (Offload o : {Offload::optimizer, Offload::optimizer_params, Offload::activations})
    for (int64_t tp : {1, 2})
      for (int64_t pp : {1, 2})
        for (int zero : {0, 1, 2, 3})
          for (Recompute r : {Recompute::none, Recompute::full})
            for (Schedule sch : {Schedule::one_f_one_b, Schedule::zb_h1}) {
              ParallelConfig p = config(8 / (tp * pp), tp, pp, zero, o, r);
              p.schedule = sch;
              if ((sch == Schedule::zb_h1 && pp == 1) || !check(j, p).ok()) continue;
              const CostModel cm(j.model, j.cluster, j.train);
              const Estimate est = cm.evaluate(p, /*overlap=*/false);
              SimOptions so;
              so.overlap = false;
              so.contention = false;
              auto r2 = simulate(cm, p, so);
              REQUIRE(r2.ok());
              INFO("offload " << to_string(o) << " tp " << tp << " pp " << pp << " zero " << zero << " recompute "
                              << static_cast<int>(r) << " schedule " << static_cast<int>(sch));
              const double m = static_cast<double>(est.micro_batches);
              for (int64_t i = 0; i < pp; ++i) {
                const StageEstimate& se = est.stages[i];
                const TimeBreakdown& st = r2->stages[i].time;
                CHECK(se.host_s + se.host_step_s > 0);
                CHECK(close(st.host_comm_s, m * se.host_s + se.host_step_s));
                CHECK(close(st.optimizer_s, se.optimizer_s));
                CHECK(close(st.compute_s, m * (se.forward_s + se.backward_s + se.recompute_s)));
              }
              int64_t host_bytes = 0;
              for (const SimTask& t : r2->tasks)
                if (t.kind == TaskKind::host_copy && t.stage == 0) host_bytes += t.bytes;
              // Per-slot bytes are cut into a first layer and the rest: exact up to rounding of v
              // chunks and L layers (at most 2 bytes per slot).
              CHECK(std::llabs(host_bytes - est.stages[0].comm.host) <= 4 * static_cast<int64_t>(m));
              if (pp == 1) CHECK(close(r2->step_time_s, est.step_time_s));
              ++configs;
            }
  CHECK(configs > 40);
}

TEST_CASE("offload: with overlap the simulated step equals the analytical one on one stage", "[offload]") {
  const Job j = job("gpt2-350m", "dgx-h100", 1, 4, 1024);
  for (Offload o : {Offload::optimizer, Offload::optimizer_params, Offload::activations}) {
    const ParallelConfig p = config(1, 1, 1, o == Offload::optimizer_params ? 3 : 0, o);
    REQUIRE(check(j, p).ok());
    const CostModel cm(j.model, j.cluster, j.train);
    auto r = simulate(cm, p, SimOptions{});
    REQUIRE(r.ok());
    INFO(to_string(o) << ": simulated " << r->step_time_s << ", analytical " << r->analytical_step_s);
    CHECK(close(r->step_time_s, r->analytical_step_s));
    CHECK(r->time.host_comm_s > 0);
  }
}

TEST_CASE("offload: host memory is checked beside GPU memory; the rules of each choice", "[offload]") {
  Job j = job("gpt3-175b", "dgx-a100", 16, 16, 2048);
  const ParallelConfig p = config(2, 8, 1, 3, Offload::optimizer_params, Recompute::full);
  REQUIRE(check(j, p).ok());
  const Estimate e = CostModel(j.model, j.cluster, j.train).evaluate(p);
  const StageWork w = build_stage_work(j.model, j.cluster, j.train, p, 0);
  CHECK(e.host_memory_bytes == 8 * w.host_bytes());  // 8 GPUs of a node share its DRAM
  CHECK(e.host_capacity_bytes == 2199023255552);
  j.cluster.host.memory_bytes = 8 * w.host_bytes() - 1;
  const Estimate small = CostModel(j.model, j.cluster, j.train).evaluate(p);
  CHECK_FALSE(small.fits);
  CHECK(small.reason.find("host memory: 8 GPUs x") != std::string::npos);

  const Job bare = job("gpt2-124m", "h100-sxm", 1, 8, 1024);  // no host section
  auto st = check(bare, config(1, 1, 1, 0, Offload::optimizer));
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("needs the cluster's host memory_bytes") != std::string::npos);
  auto z = check(job("gpt2-124m", "dgx-h100", 8, 8, 1024), config(8, 1, 1, 2, Offload::optimizer_params));
  REQUIRE_FALSE(z.ok());
  CHECK(z.error().message == "offload: optimizer+params needs zero 3 (as DeepSpeed's offload_param and FSDP2 do; got zero 2)");
}

TEST_CASE("offload: the plan file keeps the choice and the cluster's host figures", "[offload]") {
  const Job j = job("gpt2-350m", "dgx-h100", 8, 16, 1024);
  Plan plan{j.model, j.cluster, j.train, config(8, 1, 1, 3, Offload::optimizer_params), {}};
  plan.prediction = CostModel(j.model, j.cluster, j.train).evaluate(plan.parallel);
  const nlohmann::json doc = plan_to_json(plan);
  CHECK(doc["parallel"]["offload"] == "optimizer+params");
  CHECK(doc["cluster"]["host"]["link_bytes_per_s"] == 63e9);
  CHECK(doc["prediction"]["offload"] == "optimizer+params");
  CHECK(doc["prediction"]["comm_bytes"]["host"] == plan.prediction.comm.host);
  auto back = plan_from_json(doc, "plan.json");
  REQUIRE(back.ok());
  CHECK(back->parallel.offload == Offload::optimizer_params);
  CHECK(back->cluster.host.memory_bytes == j.cluster.host.memory_bytes);
  nlohmann::json bad = doc;
  bad["parallel"]["offload"] = "disk";
  auto refused = plan_from_json(bad, "plan.json");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("offload") != std::string::npos);
}

namespace {

std::string cluster_with_host_memory(int64_t bytes) {
  auto j = nlohmann::json::parse(slurp(std::string(LOOM_SOURCE_DIR) + "/models/clusters/dgx-a100.json"));
  j["host"]["memory_bytes"] = bytes;
  return temp_file("offload_small_host.json", j.dump());
}

bool one_line(const std::string& s) { return std::count(s.begin(), s.end(), '\n') == 1; }

}  // namespace

TEST_CASE("offload on the command line: bad values, no host, too little host memory; execute refuses",
          "[offload][cli]") {
  const std::string base = "predict --model gpt2-124m --global-batch 8 --seq 1024 --tp 1 --pp 1 ";
  LoomRun r = run_loom(base + "--cluster dgx-h100 --gpus 8 --zero 1 --offload disk");
  CHECK(r.code == 2);
  CHECK(one_line(r.err));
  CHECK(r.err.find("--offload: must be one of none, optimizer, optimizer+params, activations (got disk)") !=
        std::string::npos);
  r = run_loom(base + "--cluster h100-sxm --gpus 1 --offload optimizer");
  CHECK(r.code == 2);
  CHECK(one_line(r.err));
  CHECK(r.err.find("loom: --offload: offload optimizer needs the cluster's host") == 0);
  r = run_loom(base + "--cluster " + cluster_with_host_memory(1 << 20) + " --gpus 8 --offload optimizer");
  CHECK(r.code == 2);
  CHECK(one_line(r.err));
  CHECK(r.err.find("GiB of host memory per node, more than the cluster's") != std::string::npos);

  const auto plan = temp_file("offload_plan.json", "");
  r = run_loom(base + "--cluster dgx-h100 --gpus 8 --zero 1 --offload optimizer -o " + plan);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("offload optimizer") != std::string::npos);
  CHECK(r.out.find("host link (offload optimizer):") != std::string::npos);
  CHECK(r.out.find("host-link copies (exposed, offload)") != std::string::npos);
  r = run_loom("execute " + plan + " --device cpu");
  CHECK(r.code == 2);
  CHECK(one_line(r.err));
  CHECK(r.err.find("/parallel/offload: loom's executors run no offload") != std::string::npos);
  r = run_loom("simulate " + plan + " --offload activations");
  CHECK(r.code == 0);
  CHECK(r.out.find("host-link copies (exposed, offload): stage 0 ") != std::string::npos);
  r = run_loom("simulate " + plan + " --offload optimizer+params");
  CHECK(r.code == 2);
  CHECK(r.err == "loom: --offload: optimizer+params needs zero 3 (as DeepSpeed's offload_param and FSDP2 do; got "
                 "zero 1)\n");
}

namespace {

// The configuration and the predicted step time: what the import must give back.
nlohmann::json configuration(const std::string& plan_path) {
  nlohmann::json c = plan_configuration(plan_path);
  c["step_time_s"] = nlohmann::json::parse(slurp(plan_path))["prediction"]["step_time_s"];
  return c;
}

void round_trip(const std::string& engine, const std::string& predict_args, const std::string& import_args,
                const std::string& name, const std::string& must_contain) {
  INFO(engine << " " << predict_args);
  const RoundTrip t = export_round_trip(engine, predict_args, import_args, name, must_contain);
  CHECK(configuration(t.imported) == configuration(t.plan));
  CHECK(configuration(t.imported)["parallel"]["offload"] == configuration(t.plan)["parallel"]["offload"]);
}

}  // namespace

TEST_CASE("offload exported in each engine's names reads back as the same plan", "[offload][import]") {
  round_trip("deepspeed",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 64 --tp 1 --pp 1 --zero 2 --offload optimizer "
             "--grad-accumulation separate",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8", "ds_opt",
             "\"offload_optimizer\": {\n      \"device\": \"cpu\",\n      \"pin_memory\": true");
  round_trip("deepspeed",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8 --global-batch 64 --tp 1 --pp 1 --zero 3 "
             "--offload optimizer+params --grad-accumulation separate",
             "--model gpt2-350m --cluster dgx-a100 --gpus 8", "ds_params", "\"offload_param\"");
  round_trip("megatron",
             "--model gpt3-175b --cluster dgx-a100 --gpus 64 --global-batch 64 --tp 8 --pp 8 --zero 1 "
             "--recompute full --offload optimizer --grad-dtype fp32",
             "--cluster dgx-a100 --gpus 64", "mg_opt",
             "--optimizer-cpu-offload \\\n  --optimizer-offload-fraction 1.0 \\\n  --use-precision-aware-optimizer");
  round_trip("torchtitan",
             "--model llama3-8b --cluster dgx-h100 --gpus 8 --global-batch 16 --seq 2048 --tp 1 --pp 1 --zero 3 "
             "--offload optimizer+params --grad-dtype fp32 --grad-accumulation separate",
             "--cluster dgx-h100 --gpus 8", "tt_params", "enable_cpu_offload = true");
}

namespace {

// The fewest GPUs (whole DGX A100 nodes, doubling) at which `loom plan` finds a plan for GPT-3
// 175B, and that plan's output.
std::pair<int64_t, std::string> fewest_gpus(const std::string& extra) {
  for (int64_t gpus = 8; gpus <= 128; gpus *= 2) {
    LoomRun r = run_loom("plan --model gpt3-175b --cluster dgx-a100 --gpus " + std::to_string(gpus) +
                         " --global-batch 32 --seq 2048 --tp 8 --micro-batch 1 --recompute full --schedule 1f1b "
                         "--grad-dtype bf16 --order tp-dp-pp --refine 0 " + extra);
    INFO(r.err);
    REQUIRE((r.code == 0 || r.out.find("no configuration fits") != std::string::npos));
    if (r.code == 0 && r.out.find("no configuration fits") == std::string::npos) return {gpus, r.out};
  }
  return {0, ""};
}

}  // namespace

TEST_CASE("offload: the planner fits GPT-3 175B on fewer DGX A100 GPUs, and says what the link costs",
          "[offload][plan]") {
  const auto [without, out_without] = fewest_gpus("");
  const auto [with, out_with] = fewest_gpus("--offload any");
  INFO(out_with);
  REQUIRE(with > 0);
  REQUIRE(without > 0);
  CHECK(with < without);
  // 175e9 parameters x 16 bytes = 2.8 TB of model state: 87.5 GB per GPU on 32 even fully
  // sharded, over 80 GB; with the Adam state (12 of the 16 bytes) on the host, 16 GPUs hold the
  // rest and two nodes' 2 TB of DRAM the state. On 8 GPUs the bf16 weights and gradients alone
  // (4 x 21.9e9 bytes per GPU) exceed 80 GB, and with them on the host too 2.8 TB exceeds 2 TB.
  CHECK(without == 64);
  CHECK(with == 16);
  CHECK(out_with.find("  offload optimizer") != std::string::npos);
  CHECK(out_with.find("host link (offload optimizer") != std::string::npos);
  CHECK(out_with.find("bytes per GPU per step") != std::string::npos);
  CHECK(out_with.find("s exposed per step") != std::string::npos);
}
