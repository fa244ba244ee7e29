// Context parallelism in the CPU executor under MPI (tag [cp]): each sequence split over the cp
// ranks (Megatron's load-balanced chunks i and 2cp-1-i), attention as a ring of K and V blocks
// (executor/cpu/ring_attention.hpp), gradients summed over dp x cp. Every plan trains a small
// Llama-family model (RoPE, GQA, SwiGLU) and a small GPT (learned positions) to the losses and
// weights of one rank, step by step; each rank's memory, FLOPs and bytes are compared with the
// cost model's prediction for it; and what the executor does not run with cp is refused in one line.
#include <catch2/catch.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "executor/cuda/plan_limits.hpp"
#include "mpi_harness.hpp"
#include "sim/plan.hpp"

using namespace loom;
using namespace loom::test;

namespace {

MpiHarness& harness() {
  static MpiHarness h("loom_cp_test_");
  return h;
}

// Two layers of hidden 64, 4 heads over 2 kv heads (GQA), head size 16: every size divides by 2
// so tp 2 splits it; seq 16 cuts into 2 cp = 4 chunks of 4 tokens with cp 2.
ModelSpec tiny(Family family) {
  ModelSpec m;
  m.name = family == Family::llama ? "tiny-llama-cp" : "tiny-gpt-cp";
  m.family = family;
  m.layers = 2;
  m.hidden = 64;
  m.heads = 4;
  m.kv_heads = family == Family::llama ? 2 : 4;
  m.ffn_hidden = 128;
  m.vocab = 64;
  m.seq_len = 16;
  m.tied_embeddings = false;
  return m;
}

ParallelConfig cp_config(int64_t dp, int64_t tp, int64_t cp, int zero = 0, Recompute rc = Recompute::none,
                         bool sp = false) {
  ParallelConfig p;
  p.dp = dp;
  p.tp = tp;
  p.cp = cp;
  p.zero = zero;
  p.recompute = rc;
  p.sp = sp;
  return p;
}

// cp > 1 runs the ring (fused attention: the log-sum-exp kept, not the probabilities); the
// one-rank reference stores the probabilities (unfused), as the CPU executor runs cp = 1.
Plan cp_plan(Family family, const ParallelConfig& p, bool validate = true) {
  return cpu_plan(tiny(family), tiny_train(p.cp > 1 ? Attention::fused : Attention::unfused), p, validate);
}

const Trained& one_rank(Family family) {
  static std::map<Family, Trained> refs;
  auto it = refs.find(family);
  if (it == refs.end())
    it = refs.emplace(family, harness().train(family == Family::llama ? "llama_ref" : "gpt_ref",
                                              cp_plan(family, cp_config(1, 1, 1)))).first;
  return it->second;
}

// Tolerances as the dense matrix's (mpi_harness.hpp: fp32 sums in another order, a few ulps on
// the losses, Adam magnifying rounding of near-zero gradients on the weights); here the ring also
// adds each row's softmax block by block (ring attention alone: within 1e-6 of the full
// attention, test_ring_attention.cpp). A token at the wrong position, a block skipped or a
// gradient summed over the wrong group moves the loss by > 1e-4 and weights by about one step.
void check_like_one_rank(Family family, const Trained& r) { check_like_reference(r, one_rank(family)); }

// Each rank's measurement against the cost model's prediction for it, exactly: the GEMM and
// attention FLOPs (each cp rank does 1/cp of the sequence's), the weights, gradients and
// optimizer state (ZeRO shards over dp x cp), the activations (a log-sum-exp per head and token
// in place of the probabilities), the buffers, the tp and dp bytes (gradients reduced over
// dp x cp) and the bytes of the KV ring.
void check_against_cost_model(const Plan& plan, const nlohmann::json& report) {
  const StageEstimate& s = plan.prediction.stages[0];
  CHECK(report["flops"]["hardware"].get<double>() == static_cast<double>(plan.prediction.flops_hardware));
  for (const auto& r : report["ranks"]) {
    INFO("rank " << r["rank"]);
    CHECK(r["flops"].get<int64_t>() == static_cast<int64_t>(s.flops));
    const auto& mem = r["memory_bytes"];
    CHECK(mem["weights"].get<int64_t>() == s.memory.weights);
    CHECK(mem["grads"].get<int64_t>() == s.memory.grads);
    CHECK(mem["optimizer"].get<int64_t>() == s.memory.optimizer);
    CHECK(mem["activations"].get<int64_t>() == s.memory.activations);
    CHECK(mem["logits"].get<int64_t>() == s.memory.logits);
    CHECK(mem["comm_buffers"].get<int64_t>() == s.memory.comm_buffers);
    CHECK(mem["workspace"].get<int64_t>() == s.memory.workspace);
    CHECK(r["comm_bytes"]["tp"].get<int64_t>() == s.comm.tp);
    CHECK(r["comm_bytes"]["dp"].get<int64_t>() == s.comm.dp);
    CHECK(r["comm_bytes"].value("cp", int64_t{0}) == s.comm.cp);  // the KV ring's hops
  }
  // The ring's bytes, counted by hand: per micro-batch and layer cp - 1 hops of K and V forward
  // (again in a full recompute's forward) and of K, V, dK and dV backward, then dK and dV home;
  // a block is micro_batch x seq / cp tokens x kv channels / tp x 4 bytes (fp32). All-gathered:
  // the ring all-gather of K and V sends cp - 1 blocks of each, forward, backward and in a
  // recompute, and the reduce-scatter of dK and dV as many; nothing goes home.
  const auto& p = plan.parallel;
  const int64_t block = p.micro_batch * (plan.train.seq / p.cp) * (plan.model.kv_dim() / p.tp) * 4;
  const int64_t hops = (p.cp - 1) * (2 + 4 + (p.recompute == Recompute::full ? 2 : 0)) +
                       (p.cp_comm == CpComm::all_gather ? 0 : 2);
  const int64_t micro_batches = plan.train.global_batch / (p.dp * p.micro_batch);
  CHECK(s.comm.cp == micro_batches * plan.model.layers * block * hops);
}

// K and V all-gathered (CpComm::all_gather, TransformerEngine's AttnFuncWithCPAndKVAllGather).
ParallelConfig all_gathered(ParallelConfig p) {
  p.cp_comm = CpComm::all_gather;
  return p;
}

struct Case {
  const char* name;
  Family family;
  ParallelConfig p;
};

}  // namespace

TEST_CASE("context parallelism trains as one rank, step by step, priced as the cost model prices it", "[cp]") {
  for (const Case& c : {Case{"cp2", Family::llama, cp_config(1, 1, 2)},
                        Case{"dp2cp2_zero1", Family::llama, cp_config(2, 1, 2, 1)},
                        Case{"tp2cp2_sp", Family::llama, cp_config(1, 2, 2, 0, Recompute::none, true)},
                        Case{"cp2_full_recompute_zero3", Family::llama, cp_config(1, 1, 2, 3, Recompute::full)},
                        Case{"gpt_cp2", Family::gpt, cp_config(1, 1, 2)},
                        Case{"cp4_allgather", Family::llama, all_gathered(cp_config(1, 1, 4))},
                        Case{"tp2cp2_sp_allgather_full_recompute", Family::llama,
                             all_gathered(cp_config(1, 2, 2, 0, Recompute::full, true))}}) {
    INFO(c.name);
    const Plan plan = cp_plan(c.family, c.p);
    const Trained r = harness().train(c.name, plan);
    check_like_one_rank(c.family, r);
    check_against_cost_model(plan, r.report);
  }
}

TEST_CASE("what the CPU executor does not run with cp is refused in one line", "[cp]") {
  struct Refused {
    const char* name;
    ParallelConfig p;
    Attention attention;
    const char* expect;  // the line's field and rule
  };
  ParallelConfig pp2 = cp_config(1, 1, 2);
  pp2.pp = 2;
  // Unfused attention is refused when the plan is read (cp needs the ring's fused blocks); the
  // others are plans the cost model prices that the CPU executor does not run.
  for (const Refused& c : {Refused{"unfused", cp_config(1, 1, 2), Attention::unfused, "/parallel/cp: context parallelism needs fused attention"},
                           Refused{"selective", cp_config(1, 1, 2, 0, Recompute::selective), Attention::fused,
                                   "loom: parallel.recompute: the CPU executor runs cp > 1 with recompute none or full"},
                           Refused{"pp2", pp2, Attention::fused, "loom: parallel.cp: the CPU executor runs cp > 1 with pp = 1 only"}}) {
    INFO(c.name);
    Plan plan = cp_plan(Family::llama, c.p);
    plan.train.attention = c.attention;
    const Run r = harness().mpirun(static_cast<int>(c.p.gpus()), harness().write_plan(std::string("refused_") + c.name, plan) +
                                                                     " --device cpu --quiet --steps 1");
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(c.expect) != std::string::npos);
  }
}

TEST_CASE("the CUDA path refuses cp > 1 in one line", "[cp]") {
  Plan plan = cp_plan(Family::llama, cp_config(1, 1, 2));
  plan.train.dtype = Dtype::bf16;
  plan.train.grad_dtype = Dtype::bf16;
  const Status st = cuda::check_cuda_plan(plan);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("parallel.cp") != std::string::npos);
  plan.parallel.cp = 1;
  const Status one = cuda::check_cuda_plan(plan);  // refused for something else (head size 16), not cp
  CHECK((one.ok() || one.error().message.find("parallel.cp") == std::string::npos));
}
