// The CPU executor on a small MoE model under MPI (tag [moe]): every plan of expert, data, tensor
// and pipeline parallelism trains to the same losses and weights as one rank, does the same GEMM
// FLOPs in total, and a plan the expert grid cannot hold is refused in one line. Also the
// pieces under it: the all-to-all, the expert grid of sim/rank_grid.hpp, and the MoE layer rule
// of the reference model against the cost model's.
#include <catch2/catch.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "executor/cpu/moe.hpp"
#include "mpi_harness.hpp"
#include "sim/moe.hpp"
#include "sim/plan.hpp"
#include "sim/rank_grid.hpp"

using namespace loom;
using namespace loom::test;

namespace {

MpiHarness& harness() {
  static MpiHarness h("loom_moe_test_");
  return h;
}

// Llama family (the cost model prices SwiGLU experts), 4 experts, top-2, one shared expert, two
// layers of hidden 64: every size divides by 2 so tp, etp, ep and pp of 2 split it evenly.
ModelSpec tiny_moe() {
  ModelSpec m;
  m.name = "tiny-moe";
  m.family = Family::llama;
  m.layers = 2;
  m.hidden = 64;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn_hidden = 128;
  m.vocab = 64;
  m.seq_len = 16;
  m.tied_embeddings = false;  // pp > 1
  m.experts = 4;
  m.experts_per_token = 2;
  m.shared_experts = 1;
  m.expert_ffn_hidden = 32;
  return m;
}

ParallelConfig moe_config(int64_t dp, int64_t tp, int64_t pp, int64_t ep, int64_t etp) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.ep = ep;
  p.etp = etp;
  p.sp = tp > 1;  // MoE with tp needs SP (Megatron's rule, check_cpu_moe)
  return p;
}

Plan moe_plan(const ParallelConfig& p, bool validate = true) {
  TrainSpec t = tiny_train(Attention::unfused);
  // E / k: every expert can take all of a rank's rows, so none is dropped and every plan computes
  // what one rank does, with the GEMMs and all-to-alls at the cost model's capacity shapes.
  t.moe_capacity_factor = 2.0;
  return cpu_plan(tiny_moe(), t, p, validate);
}

const Trained& one_rank() {
  static const Trained r = harness().train("moe_reference", moe_plan(moe_config(1, 1, 1, 1, 1)));
  return r;
}

// What each rank measured against the cost model's prediction for its stage (sim/moe.hpp: GEMMs
// and all-to-alls at capacity, expert weights over ep and etp, expert gradients over edp), field
// by field and exactly.
void check_against_cost_model(const Plan& plan, const nlohmann::json& report) {
  for (const auto& r : report["ranks"]) {
    const int64_t stage = r["pp"].get<int64_t>();
    const StageEstimate& s = plan.prediction.stages[static_cast<size_t>(stage)];
    INFO("rank " << r["rank"] << " stage " << stage);
    CHECK(r["flops"].get<int64_t>() == static_cast<int64_t>(s.flops));
    CHECK(r["comm_bytes"]["tp"].get<int64_t>() == s.comm.tp);
    CHECK(r["comm_bytes"]["dp"].get<int64_t>() == s.comm.dp);
    CHECK(r["comm_bytes"]["pp"].get<int64_t>() == s.comm.pp);
    CHECK(r["comm_bytes"].value("ep", int64_t{0}) == s.comm.ep);
    const auto& mem = r["memory_bytes"];
    CHECK(mem["weights"].get<int64_t>() == s.memory.weights);
    CHECK(mem["grads"].get<int64_t>() == s.memory.grads);
    CHECK(mem["optimizer"].get<int64_t>() == s.memory.optimizer);
    CHECK(mem["activations"].get<int64_t>() == s.memory.activations);
    // Not compared: comm_buffers and workspace. The MoE block's transient buffers (dispatch send
    // and receive, the etp-gathered rows, the experts' backward scratch) are host vectors of
    // executor/cpu/moe.cpp the ledger does not see yet.
  }
}

// Each plan runs once; the equivalence and the accounting tests read the same run.
const Trained& run_plan(const std::string& name, const ParallelConfig& p) {
  static std::map<std::string, Trained> runs;
  auto it = runs.find(name);
  if (it == runs.end()) it = runs.emplace(name, harness().train(name, moe_plan(p))).first;
  return it->second;
}

// Tolerances as the dense matrix's (mpi_harness.hpp explains them: fp32 sums in another order,
// a few ulps on the losses, Adam magnifying rounding of near-zero gradients on the weights). A
// router whose top-k flipped between plans, or an expert gradient summed over the wrong group,
// moves the loss by > 1e-4 and weights by about one step (lr 1e-3).
void check_like_one_rank(const std::string& name, const ParallelConfig& p) {
  const Trained& r = run_plan(name, p);
  const Trained& ref = one_rank();
  check_like_reference(r, ref);
  // The same GEMMs, split: tp and etp cut their widths, ep their experts, dp and pp their rows and
  // layers, SP the router's and shared experts' rows; no token is routed twice or dropped.
  CHECK(r.report["flops"]["hardware"].get<double>() == ref.report["flops"]["hardware"].get<double>());
}

}  // namespace

TEST_CASE("MoE: dp 2 x ep 2 trains as one rank", "[moe]") { check_like_one_rank("moe_dp2_ep2", moe_config(2, 1, 1, 2, 1)); }
TEST_CASE("MoE: dp 2 with every expert on each rank (ep 1) trains as one rank", "[moe]") {
  check_like_one_rank("moe_dp2_ep1", moe_config(2, 1, 1, 1, 1));
}
TEST_CASE("MoE: tp 2 (SP) x ep 2, etp 1 trains as one rank", "[moe]") {
  check_like_one_rank("moe_tp2_ep2", moe_config(1, 2, 1, 2, 1));
}
TEST_CASE("MoE: dp 2 x tp 2 (SP) x ep 2 x etp 2 trains as one rank", "[moe]") {
  check_like_one_rank("moe_dp2_tp2_ep2_etp2", moe_config(2, 2, 1, 2, 2));
}
TEST_CASE("MoE: pp 2 x dp 2 x ep 2 trains as one rank", "[moe]") {
  check_like_one_rank("moe_pp2_dp2_ep2", moe_config(2, 1, 2, 2, 1));
}
TEST_CASE("MoE: dp 2 x tp 2 (SP) x pp 2 x ep 2 trains as one rank", "[moe]") {
  check_like_one_rank("moe_dp2_tp2_pp2_ep2", moe_config(2, 2, 2, 2, 1));
}

TEST_CASE("MoE: what each rank measures equals the cost model's prediction for its stage", "[moe]") {
  const std::pair<const char*, ParallelConfig> plans[] = {{"moe_dp2_ep2", moe_config(2, 1, 1, 2, 1)},
                                                          {"moe_tp2_ep2", moe_config(1, 2, 1, 2, 1)},
                                                          {"moe_dp2_tp2_ep2_etp2", moe_config(2, 2, 1, 2, 2)},
                                                          {"moe_pp2_dp2_ep2", moe_config(2, 1, 2, 2, 1)}};
  for (const auto& [name, p] : plans) {
    INFO(name);
    check_against_cost_model(moe_plan(p), run_plan(name, p).report);
  }
}

TEST_CASE("MoE: a block recompute of the first layer trains as one rank, measured as priced", "[moe]") {
  // Full recompute of each chunk's first layer (Megatron-LM's --recompute-method block
  // --recompute-num-layers 1): the first MoE layer keeps only its input, the second everything.
  for (auto [name, p] : {std::pair{"moe_dp2_ep2_block1", moe_config(2, 1, 1, 2, 1)},
                         std::pair{"moe_tp2_ep2_block1", moe_config(1, 2, 1, 2, 1)}}) {
    INFO(name);
    p.recompute = Recompute::full;
    p.recompute_layers = 1;
    const Trained& r = run_plan(name, p);
    check_like_reference(r, one_rank());
    // One layer's forward more than the reference's GEMM FLOPs, as the cost model counts them.
    CHECK(r.report["flops"]["hardware"].get<double>() > one_rank().report["flops"]["hardware"].get<double>());
    check_against_cost_model(moe_plan(p), r.report);
  }
}

TEST_CASE("MoE: a plan whose ep does not divide the experts or fit tp x dp is refused in one line", "[moe]") {
  for (const auto& [name, p] : {std::pair{std::string("ep8_of_4"), moe_config(8, 1, 1, 8, 1)},
                                std::pair{std::string("ep4_dp2"), moe_config(2, 1, 1, 4, 1)}}) {
    INFO(name);
    const std::string path = harness().write_plan("moe_bad_" + name, moe_plan(p, false));
    const Run r = harness().mpirun(static_cast<int>(p.gpus()), path + " --device cpu --quiet --steps 1");
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find("ep") != std::string::npos);
    // one line per rank, each the same refusal
    std::istringstream lines(r.out);
    std::string line, first;
    int n = 0;
    while (std::getline(lines, line))
      if (line.rfind("loom: ", 0) == 0) {
        if (first.empty()) first = line;
        CHECK(line == first);
        ++n;
      }
    CHECK(n >= 1);
  }
}

TEST_CASE("the expert grid regroups a stage's tp x dp ranks etp innermost, then ep, then edp", "[moe]") {
  // tp 2, dp 4, pp 2 (order tp-dp-pp): stage 1 holds ranks 8..15; ep 2, etp 2, so edp 2.
  auto dense = RankGrid::make(2, 4, 2, "tp-dp-pp");
  REQUIRE(dense.ok());
  auto g = ExpertGrid::make(*dense, 2, 2);
  REQUIRE(g.ok());
  CHECK(g->size(ExpertDim::edp) == 2);
  const ExpertCoords c = g->coords(13);  // stage-local 5 = etp 1 + 2 (ep 0 + 2 edp 1)
  CHECK(c.etp == 1);
  CHECK(c.ep == 0);
  CHECK(c.edp == 1);
  CHECK(g->group(ExpertDim::etp, 13) == std::vector<int64_t>{12, 13});  // = its tp group (etp = tp)
  CHECK(g->group(ExpertDim::ep, 13) == std::vector<int64_t>{13, 15});
  CHECK(g->group(ExpertDim::edp, 13) == std::vector<int64_t>{9, 13});
  CHECK_FALSE(ExpertGrid::make(*dense, 3, 1).ok());  // 3 does not divide tp x dp = 8
  auto bad = ExpertGrid::make(*dense, 4, 4);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "ep: ep x etp must divide tp x cp x dp (got ep 4, etp 4, tp x cp x dp 8)");
}

TEST_CASE("the reference model's MoE layers are the cost model's", "[moe]") {
  ModelSpec m = tiny_moe();
  for (int64_t layers : {2, 6, 7})
    for (int64_t dense : {0, 1, 2})
      for (int64_t interval : {1, 2, 3}) {
        m.layers = layers;
        m.dense_layers = dense;
        m.moe_layer_interval = interval;
        for (int64_t l = 0; l < layers; ++l) CHECK(cpu::moe_layer(m, l) == is_moe_layer(m, l));
      }
}

TEST_CASE("the emulated all-to-all counts the blocks sent to others and echoes them", "[moe]") {
  auto comm = exec::make_emulated_comm(1, 3);
  exec::Group g{exec::GroupKind::ep, {0, 1, 2}, 1};
  const std::vector<int32_t> send = {1, 2, 3, 4, 5, 6};  // blocks of 1, 2 and 3 values
  std::vector<int32_t> recv(6, -1);
  const std::vector<int64_t> sb = {4, 8, 12}, rb = {4, 8, 12};
  REQUIRE(comm->all_to_all(g, send.data(), sb, recv.data(), rb).ok());
  CHECK(recv == send);
  CHECK(comm->counters().by_group[static_cast<size_t>(exec::GroupKind::ep)] == 16);
  CHECK(comm->counters().by_collective.at("ep.all_to_all") == 16);
}
