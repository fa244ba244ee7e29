#include "sim/validate.hpp"

#include "sim/rank_grid.hpp"

namespace loom {

namespace {
std::string s(int64_t v) { return std::to_string(v); }
}  // namespace

Status size_cluster(ClusterSpec& c, int64_t gpus, const std::string& where) {
  if (gpus < 1) return make_error(where, "must be >= 1 (got " + s(gpus) + ")");
  const int64_t capacity = c.max_nodes * c.gpus_per_node;
  if (gpus > capacity)
    return make_error(where, "more GPUs than cluster " + c.name + " has (" + s(gpus) + " > " + s(c.max_nodes) +
                                 " nodes x " + s(c.gpus_per_node) + ")");
  if (gpus > c.gpus_per_node && gpus % c.gpus_per_node != 0)
    return make_error(where, "more than one node must be whole nodes: " + s(gpus) + " is not a multiple of " +
                                 s(c.gpus_per_node) + " GPUs per node");
  c.gpus = gpus;
  c.nodes = (gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  return ok_status();
}

Status validate_config(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t, const ParallelConfig& p,
                       const FieldNamer& name) {
  auto fail = [&](const std::string& field, const std::string& rule) -> Status {
    return Error{name(field) + ": " + rule};
  };
  if (p.gpus() != c.gpus)
    return fail("dp", "dp x tp x pp must equal the GPUs in use (" + s(p.dp) + " x " + s(p.tp) + " x " + s(p.pp) +
                          " = " + s(p.gpus()) + ", gpus = " + s(c.gpus) + ")");
  if (m.heads % p.tp != 0) return fail("tp", "must divide heads (" + s(m.heads) + " % " + s(p.tp) + " != 0)");
  if (m.kv_heads % p.tp != 0)
    return fail("tp", "must divide kv_heads (" + s(m.kv_heads) + " % " + s(p.tp) + " != 0)");
  if (m.ffn_hidden % p.tp != 0)
    return fail("tp", "must divide ffn_hidden (" + s(m.ffn_hidden) + " % " + s(p.tp) + " != 0)");
  if (p.schedule == Schedule::interleaved && p.vpp < 2)
    return fail("vpp", "the interleaved schedule needs vpp > 1 (got " + s(p.vpp) + ")");
  if (p.schedule != Schedule::interleaved && p.vpp != 1)
    return fail("vpp", "vpp > 1 needs the interleaved schedule (got schedule " +
                           std::string(p.schedule == Schedule::gpipe ? "gpipe" : "1f1b") + ")");
  if (p.schedule == Schedule::interleaved && p.pp < 2)
    return fail("schedule", "the interleaved schedule needs pp > 1");
  if (m.layers % (p.pp * p.vpp) != 0)
    return fail(p.vpp > 1 ? "vpp" : "pp", "pp x vpp must divide layers (" + s(m.layers) + " % " +
                                              s(p.pp * p.vpp) + " != 0)");
  if (p.sp && p.tp < 2) return fail("sp", "sequence parallelism needs tensor parallelism (tp > 1)");
  if (t.global_batch % (p.dp * p.micro_batch) != 0)
    return fail("global_batch", "must be a multiple of dp x micro_batch (" + s(t.global_batch) + " % " +
                                    s(p.dp * p.micro_batch) + " != 0)");
  const int64_t mb = t.global_batch / (p.dp * p.micro_batch);
  if (p.schedule == Schedule::interleaved && mb % p.pp != 0)
    return fail("micro_batch", "the interleaved schedule needs the micro-batch count (" + s(mb) +
                                   ") to be a multiple of pp (" + s(p.pp) + "), as Megatron-LM requires");
  if (p.sp && (t.seq % p.tp != 0))
    return fail("seq", "sequence parallelism needs tp to divide seq (" + s(t.seq) + " % " + s(p.tp) + " != 0)");
  if (m.family == Family::gpt && t.seq > m.seq_len)
    return fail("seq", "must be <= the model's learned position table (" + s(m.seq_len) + ")");
  if (p.zero < 0 || p.zero > 3) return fail("zero", "must be 0, 1, 2 or 3");
  auto grid = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  if (!grid) return fail("order", grid.error().message.substr(7));
  if (p.dp_comm == DpComm::parameter_server && p.ps_servers < 1)
    return fail("ps_servers", "the parameter-server layout needs at least one server");
  if (p.dp_comm == DpComm::ring && p.ps_servers != 0)
    return fail("ps_servers", "servers are only used with dp_comm ps");
  if (p.dp_comm == DpComm::parameter_server && p.zero != 0)
    return fail("zero", "the parameter-server layout shards nothing: zero must be 0");
  if (p.grad_compression < 1) return fail("grad_compression", "must be >= 1 (original / sent bytes)");
  return ok_status();
}

}  // namespace loom
