#include "sim/step_result.hpp"

#include <algorithm>
#include <cmath>

#include "sim/fp8.hpp"
#include "sim/json_reader.hpp"
#include "sim/offload.hpp"
#include "sim/spec_json.hpp"
#include "sim/stage_split.hpp"

namespace loom {

const std::vector<std::string>& step_source_names() {
  static const std::vector<std::string> n = {"predicted", "simulated", "measured"};
  return n;
}

std::string to_string(StepSource s) { return step_source_names()[static_cast<size_t>(s)]; }

// ---- writer -----------------------------------------------------------------------------

namespace {

double as_double(FlopCount f) { return static_cast<double>(f); }

nlohmann::json memory_json(const MemoryBytes& m) {
  return {{"weights", m.weights},   {"grads", m.grads},         {"optimizer", m.optimizer},
          {"activations", m.activations}, {"logits", m.logits}, {"comm_buffers", m.comm_buffers},
          {"workspace", m.workspace}, {"runtime", m.runtime},   {"other", m.other()},
          {"peak", m.peak()}};
}

nlohmann::json comm_json(const CommBytes& c) {
  nlohmann::json j = {{"tp", c.tp}, {"dp", c.dp}, {"pp", c.pp}};
  if (c.host > 0) j["host"] = c.host;  // offload's host-link bytes
  if (c.ep > 0) j["ep"] = c.ep;  // MoE: expert all-to-alls and expert tp
  if (c.cp > 0) j["cp"] = c.cp;  // context parallelism: the KV ring
  return j;
}

// `other`: a measurement's time that no category holds (absent from predictions).
nlohmann::json time_json(const TimeBreakdown& t, const double* other) {
  nlohmann::json j = {{"compute", t.compute_s}, {"tp_comm", t.tp_comm_s}, {"dp_comm", t.dp_comm_s},
                      {"pp_comm", t.pp_comm_s}, {"bubble", t.bubble_s},   {"optimizer", t.optimizer_s}};
  if (other) j["other"] = *other;
  if (t.host_comm_s > 0) j["host_comm"] = t.host_comm_s;  // offload
  if (t.ep_comm_s > 0) j["ep_comm"] = t.ep_comm_s;  // MoE
  if (t.cp_comm_s > 0) j["cp_comm"] = t.cp_comm_s;  // context parallelism
  return j;
}

nlohmann::json stage_json(const StageEstimate& s) {
  if (!s.reported) return nullptr;
  nlohmann::json j = {{"stage", s.index},
          {"layers", s.layers},
          {"params", s.params},
          {"in_flight", s.in_flight},
          {"memory_bytes", memory_json(s.memory)},
          {"flops", as_double(s.flops)},
          {"comm_bytes", comm_json(s.comm)},
          {"micro_batch_time_s",
           {{"forward", s.forward_s}, {"backward", s.backward_s}, {"recompute", s.recompute_s}, {"tp_comm", s.tp_comm_s}}},
          {"tp_grad_sync_s", s.tp_grad_sync_s},
          {"dp_comm_exposed_s", s.dp_comm_exposed_s},
          {"optimizer_s", s.optimizer_s}};
  if (s.host_s > 0 || s.host_step_s > 0) {  // offload
    j["host_s"] = s.host_s;
    j["host_step_s"] = s.host_step_s;
  }
  if (s.ep_comm_s > 0 || s.edp_step_s > 0) {  // MoE
    j["ep_comm_s"] = s.ep_comm_s;
    j["ep_forward_s"] = s.ep_forward_s;
    j["edp_step_s"] = s.edp_step_s;
  }
  if (s.cp_comm_s > 0) {  // context parallelism: the KV ring's exposed waits
    j["cp_comm_s"] = s.cp_comm_s;
    j["cp_forward_s"] = s.cp_forward_s;
  }
  if (s.sm_contention_s > 0) j["sm_contention_s"] = s.sm_contention_s;  // within the pass times
  return j;
}

nlohmann::json rank_json(const RankMeasurement& r) {
  nlohmann::json comm = comm_json(r.comm);
  comm["world"] = r.comm_world_bytes;
  return {{"rank", r.rank},   {"dp", r.dp},
          {"tp", r.tp},       {"pp", r.pp},
          {"memory_bytes", memory_json(r.memory)},
          {"flops", as_double(r.flops)},
          {"comm_bytes", comm},
          {"step_time_s", r.step_time_s},
          {"time_s", time_json(r.time, &r.other_s)}};
}

void config_into(nlohmann::json& j, const Estimate& e) {
  const auto& p = e.parallel;
  j.update({{"source", to_string(e.source)},
            {"model", e.model},
            {"cluster", e.cluster},
            {"params", e.params},
            {"gpus", e.gpus},
            {"dp", p.dp},
            {"tp", p.tp},
            {"pp", p.pp},
            {"zero", p.zero},
            {"micro_batch", p.micro_batch},
            {"micro_batches", e.micro_batches},
            {"global_batch", e.train.global_batch},
            {"seq", e.train.seq},
            {"vpp", p.vpp},
            {"recompute", to_string(p.recompute)},
            {"sp", p.sp},
            {"schedule", to_string(p.schedule)},
            {"order", p.order},
            {"dtype", train_dtype_name(e.train)},
            {"grad_dtype", to_string(e.train.grad_dtype)}});
  if (!p.stage_layers.empty()) j["stage_layers"] = p.stage_layers;
  if (p.offload != Offload::none) j["offload"] = to_string(p.offload);
  if (p.ep > 1 || p.etp > 1) j["ep"] = p.ep, j["etp"] = p.etp;  // MoE
  if (p.tp_comm_overlap) j["tp_comm_overlap"] = true;  // sim/tp_overlap.hpp
  if (p.overlap_param_gather) j["overlap_param_gather"] = true;  // ZeRO 1/2 (sim/specs.hpp)
  if (!p.overlap_grad_reduce) j["overlap_grad_reduce"] = false;  // the reduction after the backward
  if (p.pp_comm_overlap) j["pp_comm_overlap"] = *p.pp_comm_overlap;  // where set (sim/specs.hpp)
  if (p.recompute_layers > 0) j["recompute_layers"] = p.recompute_layers;  // a block recompute
  if (p.recompute_every > 0) j["recompute_every"] = p.recompute_every;  // every K-th layer of each chunk
  if (p.cp > 1) j["cp"] = p.cp;  // context parallelism (sim/context_parallel.hpp)
  if (p.cp_comm != CpComm::p2p) j["cp_comm"] = to_string(p.cp_comm);
  if (e.train.moe_capacity_factor != TrainSpec{}.moe_capacity_factor)
    j["moe_capacity_factor"] = e.train.moe_capacity_factor;
  if (e.train.fp8 && e.train.fp8_recipe != Fp8Recipe::delayed) j["fp8_recipe"] = to_string(e.train.fp8_recipe);
  if (e.train.fp8 && e.train.fp8_param_gather) j["fp8_param_gather"] = true;
}

// The measurement's own fields; those a producer did not measure (zero, empty) are left out.
void measurement_into(nlohmann::json& j, const Measurement& m) {
  j["device"] = m.device;
  if (m.emulated_rank >= 0) j["emulated_rank"] = m.emulated_rank;
  if (m.steps > 0) j["steps"] = m.steps;
  if (!m.step_times_s.empty()) j["step_times_s"] = m.step_times_s;
  if (!m.losses.empty()) j["losses"] = m.losses;
  if (!m.grad_norms.empty()) j["grad_norms"] = m.grad_norms;
  if (!m.ranks.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : m.ranks) rows.push_back(rank_json(r));
    j["ranks"] = rows;
  }
  if (!m.op_time_s.empty()) {
    nlohmann::json ops = nlohmann::json::object();
    for (const auto& [name, s] : m.op_time_s) ops[name] = s;
    j["op_time_s"] = ops;
    j["profiled_step_s"] = m.profiled_step_s;
  }
  if (m.allocated_bytes > 0) j["allocated_bytes"] = m.allocated_bytes;
  if (m.device_used_bytes > 0) j["device_used_bytes"] = m.device_used_bytes;
  if (m.free_before_bytes > 0) j["free_before_bytes"] = m.free_before_bytes;
  if (m.predicted_step_time_s > 0)
    j["predicted"] = {{"step_time_s", m.predicted_step_time_s},
                      {"tokens_per_s", m.predicted_tokens_per_s},
                      {"mfu", m.predicted_mfu},
                      {"memory_peak_bytes", m.predicted_peak_bytes}};
}

// The simulator's own numbers, at the top level (the names `loom simulate --json` has always had).
void simulation_into(nlohmann::json& j, const SimulationDetail& d) {
  nlohmann::json stages = nlohmann::json::array();
  for (size_t i = 0; i < d.stage_time.size(); ++i)
    stages.push_back({{"stage", i},
                      {"time_s", time_json(d.stage_time[i], nullptr)},
                      {"end_s", d.stage_end_s.at(i)},
                      {"peak_in_flight", d.stage_peak_in_flight.at(i)}});
  j.update({{"analytical_step_time_s", d.analytical_step_time_s},
            {"tasks", d.tasks},
            {"edges", d.edges},
            {"contention_s", d.contention_s},
            {"simulated_stages", stages}});
}

}  // namespace

nlohmann::json estimate_to_json(const Estimate& e) {
  const bool measured = e.source == StepSource::measured;
  // An emulated rank ran its share of the job alone: no job throughput, and its FLOPs are its own.
  const bool emulated = measured && e.measurement.emulated_rank >= 0;
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : e.stages) stages.push_back(stage_json(s));
  nlohmann::json j = {{"schema_version", kJsonSchemaVersion}};
  config_into(j, e);
  auto or_null = [&](double v) { return emulated ? nlohmann::json(nullptr) : nlohmann::json(v); };
  j.update({{"step_time_s", e.step_time_s},
            {"simulated_step_time_s",
             e.simulated_step_time_s > 0 ? nlohmann::json(e.simulated_step_time_s) : nlohmann::json(nullptr)},
            {"tokens_per_s", or_null(e.tokens_per_s)},
            {"tflops_per_gpu", or_null(e.tflops_per_gpu)},
            {"mfu", or_null(e.mfu)},
            {"tflops_per_gpu_paper", or_null(e.tflops_per_gpu_paper)},
            {"mfu_paper", or_null(e.mfu_paper)},
            {"flops",
             {{"model", as_double(e.flops_model)},
              {"model_paper", as_double(e.flops_model_paper)},
              {emulated ? "rank" : "hardware", as_double(e.flops_hardware)}}},
            {"memory_bytes", memory_json(e.memory)},
            {"peak_stage", e.peak_stage},
            {"capacity_bytes", e.capacity_bytes},
            {"usable_bytes", e.usable_bytes},
            {"comm_bytes", comm_json(e.comm)},
            {"time_s", time_json(e.time, measured ? &e.measurement.other_s : nullptr)},
            {"dp_alternatives_s",
             {{"ring_all_reduce", e.dp_alternatives.ring_all_reduce_s},
              {"parameter_server", e.dp_alternatives.parameter_server_s},
              {"compressed_ring", e.dp_alternatives.compressed_ring_s}}},
            {"stages", stages},
            {"fits", e.fits},
            {"reason", e.reason}});
  if (!e.priced_by.empty()) j["priced_by"] = e.priced_by;
  if (e.host_capacity_bytes > 0) {  // offload
    j["host_memory_bytes"] = e.host_memory_bytes;
    j["host_capacity_bytes"] = e.host_capacity_bytes;
  }
  if (measured) measurement_into(j, e.measurement);
  if (e.source == StepSource::simulated) simulation_into(j, e.simulation);
  return j;
}

// ---- reader -----------------------------------------------------------------------------

namespace {

// Bounds no real job reaches, so sums of the fields cannot wrap around: 2^56 bytes (64 PiB)
// per memory category or per group's traffic, 2^40 parameters, 10^30 FLOPs per step.
constexpr int64_t kMaxBytes = int64_t{1} << 56;
constexpr int64_t kMaxCount = int64_t{1} << 40;
constexpr double kMaxFlops = 1e30;
// Member `key` of r's object, which must be an object; an empty object once the error is
// recorded (callers check r.failed() before reading it).
const nlohmann::json& member_object(ObjectReader& r, const std::string& key) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  const nlohmann::json* v = r.object(key);
  return v ? *v : kEmpty;
}

void read_memory(ObjectReader& parent, const std::string& key, MemoryBytes& m) {
  const nlohmann::json& j = member_object(parent, key);
  if (parent.failed()) return;
  ObjectReader r(parent, key, j);
  for (auto [k, f] : {std::pair{"weights", &m.weights}, {"grads", &m.grads}, {"optimizer", &m.optimizer},
                      {"activations", &m.activations}, {"logits", &m.logits}, {"comm_buffers", &m.comm_buffers},
                      {"workspace", &m.workspace}, {"runtime", &m.runtime}})
    r.integer(k, *f, 0, kMaxBytes);
  int64_t other = 0, peak = 0;
  r.integer("other", other, 0, 8 * kMaxBytes);
  r.integer("peak", peak, 0, 8 * kMaxBytes);
  r.reject_unknown_keys();
  if (r.failed()) return;
  if (other != m.other())
    r.fail("other", "must be logits + comm_buffers + workspace + runtime (" + std::to_string(m.other()) +
                        "; got " + std::to_string(other) + ")");
  else if (peak != m.peak())
    r.fail("peak", "must be the sum of the categories (" + std::to_string(m.peak()) + "; got " + std::to_string(peak) + ")");
}

void read_comm(ObjectReader& parent, const std::string& key, CommBytes& c, int64_t* world) {
  const nlohmann::json& j = member_object(parent, key);
  if (parent.failed()) return;
  ObjectReader r(parent, key, j);
  r.integer("tp", c.tp, 0, kMaxBytes);
  r.integer("dp", c.dp, 0, kMaxBytes);
  r.integer("pp", c.pp, 0, kMaxBytes);
  r.opt_integer("host", c.host, 0, kMaxBytes);
  r.opt_integer("ep", c.ep, 0, kMaxBytes);
  r.opt_integer("cp", c.cp, 0, kMaxBytes);
  if (world) r.integer("world", *world, 0, kMaxBytes);
  r.reject_unknown_keys();
}

// time_s: `other` is read (optionally: reports older than it lack it) when not null.
void read_time(ObjectReader& parent, const std::string& key, TimeBreakdown& t, double* other) {
  const nlohmann::json& j = member_object(parent, key);
  if (parent.failed()) return;
  ObjectReader r(parent, key, j);
  r.number("compute", t.compute_s, 0, false);
  r.number("tp_comm", t.tp_comm_s, 0, false);
  r.number("dp_comm", t.dp_comm_s, 0, false);
  r.number("pp_comm", t.pp_comm_s, 0, false);
  r.opt_number("bubble", t.bubble_s, 0, false);
  r.number("optimizer", t.optimizer_s, 0, false);
  r.opt_number("host_comm", t.host_comm_s, 0, false);
  r.opt_number("ep_comm", t.ep_comm_s, 0, false);
  r.opt_number("cp_comm", t.cp_comm_s, 0, false);
  if (other) r.opt_number("other", *other, 0, false);
  r.reject_unknown_keys();
}

// FLOPs are written as JSON numbers (they exceed int64 for large jobs): whole and >= 0.
void read_flops(ObjectReader& r, const std::string& key, FlopCount& out, bool required = true) {
  double d = 0;
  if (required) r.number(key, d, 0, false, kMaxFlops);
  else r.opt_number(key, d, 0, false, kMaxFlops);
  if (r.failed()) return;
  if (d != std::floor(d)) return r.fail(key, "must be a whole number of FLOPs");
  out = static_cast<FlopCount>(d);
}

// A number, or null where the document says "not known" (`allow_null`).
void read_nullable(ObjectReader& r, const nlohmann::json& j, const std::string& key, double& out, bool allow_null,
                   double min, bool min_exclusive) {
  if (allow_null && j.is_object() && j.contains(key) && j[key].is_null()) return r.skip(key);
  r.number(key, out, min, min_exclusive);
}

// An array member: `each(index, element, key)` for every element until an error, with the key
// "<key>/<index>" for a reader of the element.
template <class F>
void read_array(ObjectReader& r, const nlohmann::json& doc, const std::string& key, bool required, F&& each) {
  if (r.failed()) return;
  if (!r.has(key)) {
    if (required) r.fail(key, "required field is missing");
    return;
  }
  r.skip(key);
  const nlohmann::json& a = doc[key];
  if (!a.is_array()) return r.fail(key, "must be an array");
  // Element i is read under the key "<key>/<i>", so its errors name "/<key>/<i>/...".
  for (size_t i = 0; i < a.size() && !r.failed(); ++i) each(i, a[i], key + "/" + std::to_string(i));
}

void read_numbers(ObjectReader& r, const nlohmann::json& doc, const std::string& key, std::vector<double>& out) {
  read_array(r, doc, key, false, [&](size_t, const nlohmann::json& v, const std::string& at) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) return r.fail(at, "must be a finite number");
    out.push_back(v.get<double>());
  });
}

void read_stage(ObjectReader& parent, const std::string& key, const nlohmann::json& j, int64_t index,
                StageEstimate& s) {
  ObjectReader r(parent, key, j);
  r.integer("stage", s.index, 0, kMaxCount);
  r.integer("layers", s.layers, 0, kMaxCount);
  r.integer("params", s.params, 0, kMaxCount);
  r.integer("in_flight", s.in_flight, 0, kMaxCount);
  read_memory(r, "memory_bytes", s.memory);
  read_flops(r, "flops", s.flops);
  read_comm(r, "comm_bytes", s.comm, nullptr);
  {
    const nlohmann::json& mb = member_object(r, "micro_batch_time_s");
    if (r.failed()) return;
    ObjectReader t(r, "micro_batch_time_s", mb);
    t.number("forward", s.forward_s, 0, false);
    t.number("backward", s.backward_s, 0, false);
    t.number("recompute", s.recompute_s, 0, false);
    t.number("tp_comm", s.tp_comm_s, 0, false);
    t.reject_unknown_keys();
  }
  r.opt_number("tp_grad_sync_s", s.tp_grad_sync_s, 0, false);
  r.number("dp_comm_exposed_s", s.dp_comm_exposed_s, 0, false);
  r.number("optimizer_s", s.optimizer_s, 0, false);
  r.opt_number("host_s", s.host_s, 0, false);
  r.opt_number("host_step_s", s.host_step_s, 0, false);
  r.opt_number("ep_comm_s", s.ep_comm_s, 0, false);
  r.opt_number("ep_forward_s", s.ep_forward_s, 0, false);
  r.opt_number("edp_step_s", s.edp_step_s, 0, false);
  r.opt_number("cp_comm_s", s.cp_comm_s, 0, false);
  r.opt_number("cp_forward_s", s.cp_forward_s, 0, false);
  r.opt_number("sm_contention_s", s.sm_contention_s, 0, false);
  r.reject_unknown_keys();
  if (!r.failed() && s.index != index)
    r.fail("stage", "must be its index in stages (" + std::to_string(index) + "; got " + std::to_string(s.index) + ")");
}

void read_rank(ObjectReader& parent, const std::string& key, const nlohmann::json& j, RankMeasurement& m) {
  ObjectReader r(parent, key, j);
  r.integer("rank", m.rank, 0, kMaxCount);
  r.integer("dp", m.dp, 0, kMaxCount);
  r.integer("tp", m.tp, 0, kMaxCount);
  r.integer("pp", m.pp, 0, kMaxCount);
  read_memory(r, "memory_bytes", m.memory);
  read_flops(r, "flops", m.flops);
  read_comm(r, "comm_bytes", m.comm, &m.comm_world_bytes);
  r.number("step_time_s", m.step_time_s, 0, false);
  read_time(r, "time_s", m.time, &m.other_s);
  r.reject_unknown_keys();
}

void read_config(ObjectReader& r, Estimate& e) {
  auto& p = e.parallel;
  r.string("model", e.model);
  r.string("cluster", e.cluster);
  r.integer("params", e.params, 0, kMaxCount);
  r.integer("gpus", e.gpus, 1, kMaxCount);
  r.integer("dp", p.dp, 1, kMaxCount);
  r.integer("tp", p.tp, 1, kMaxCount);
  r.integer("pp", p.pp, 1, kMaxCount);
  int64_t zero = 0;
  r.integer("zero", zero, 0, 3);
  p.zero = static_cast<int>(zero);
  r.integer("micro_batch", p.micro_batch, 1, kMaxCount);
  r.integer("micro_batches", e.micro_batches, 1, kMaxCount);
  r.integer("global_batch", e.train.global_batch, 1, kMaxCount);
  r.integer("seq", e.train.seq, 1, kMaxCount);
  r.integer("vpp", p.vpp, 1, kMaxCount);
  int rc = 0, sched = 0, dt = 0, gdt = 0;
  r.choice("recompute", recompute_names(), rc);
  r.boolean("sp", p.sp);
  r.choice("schedule", schedule_names(), sched);
  r.string("order", p.order);
  r.choice("dtype", train_dtype_names(), dt);  // bf16, fp32 or fp8 (sim/fp8.hpp)
  r.choice("grad_dtype", dtype_names(), gdt);
  int offload = 0;
  r.opt_choice("offload", offload_names(), offload);
  p.offload = static_cast<Offload>(offload);
  r.opt_integer("ep", p.ep, 1, kMaxCount);  // MoE
  r.opt_integer("etp", p.etp, 1, kMaxCount);
  r.opt_boolean("tp_comm_overlap", p.tp_comm_overlap);
  r.opt_boolean("overlap_param_gather", p.overlap_param_gather);
  r.opt_boolean("overlap_grad_reduce", p.overlap_grad_reduce);
  r.opt_boolean("pp_comm_overlap", p.pp_comm_overlap);
  r.opt_integer("recompute_layers", p.recompute_layers, 0, kMaxCount);
  r.opt_integer("recompute_every", p.recompute_every, 0, kMaxCount);
  r.opt_integer("cp", p.cp, 1, kMaxCount);  // context parallelism: default 1
  int cp_comm = 0;
  r.opt_choice("cp_comm", cp_comm_names(), cp_comm);  // default p2p
  p.cp_comm = static_cast<CpComm>(cp_comm);
  r.opt_number("moe_capacity_factor", e.train.moe_capacity_factor, 0, true, 1e6);
  int recipe = 0;
  r.opt_choice("fp8_recipe", fp8_recipe_names(), recipe);  // FP8 (sim/fp8.hpp): default delayed
  e.train.fp8_recipe = static_cast<Fp8Recipe>(recipe);
  r.opt_boolean("fp8_param_gather", e.train.fp8_param_gather);
  p.recompute = static_cast<Recompute>(rc);
  p.schedule = static_cast<Schedule>(sched);
  set_train_dtype(e.train, train_dtype_names()[static_cast<size_t>(dt)]);
  e.train.grad_dtype = static_cast<Dtype>(gdt);
}

void read_predicted_summary(ObjectReader& parent, Measurement& m) {
  if (!parent.has("predicted")) return;
  const nlohmann::json& j = member_object(parent, "predicted");
  if (parent.failed()) return;
  ObjectReader r(parent, "predicted", j);
  r.number("step_time_s", m.predicted_step_time_s, 0, true);
  r.number("tokens_per_s", m.predicted_tokens_per_s, 0, false);
  r.number("mfu", m.predicted_mfu, 0, false);
  r.integer("memory_peak_bytes", m.predicted_peak_bytes, 0, 8 * kMaxBytes);
  r.reject_unknown_keys();
}

void read_measurement(ObjectReader& r, const nlohmann::json& doc, Measurement& m) {
  r.string("device", m.device);
  r.opt_integer("emulated_rank", m.emulated_rank, 0, kMaxCount);
  r.opt_integer("steps", m.steps, 1, kMaxCount);
  read_numbers(r, doc, "step_times_s", m.step_times_s);
  read_numbers(r, doc, "losses", m.losses);
  read_numbers(r, doc, "grad_norms", m.grad_norms);
  read_array(r, doc, "ranks", false, [&](size_t, const nlohmann::json& v, const std::string& at) {
    RankMeasurement row;
    read_rank(r, at, v, row);
    m.ranks.push_back(row);
  });
  if (r.has("op_time_s")) {
    const nlohmann::json& ops = member_object(r, "op_time_s");
    for (auto it = ops.begin(); it != ops.end() && !r.failed(); ++it) {
      if (!it.value().is_number() || !(it.value().get<double>() >= 0) || !std::isfinite(it.value().get<double>()))
        return r.fail("op_time_s/" + it.key(), "must be a number >= 0");
      m.op_time_s.emplace_back(it.key(), it.value().get<double>());
    }
    r.number("profiled_step_s", m.profiled_step_s, 0, false);
  }
  r.opt_integer("allocated_bytes", m.allocated_bytes, 1, 8 * kMaxBytes);
  r.opt_integer("device_used_bytes", m.device_used_bytes, 1, 8 * kMaxBytes);
  r.opt_integer("free_before_bytes", m.free_before_bytes, 1, 8 * kMaxBytes);
  read_predicted_summary(r, m);
}

void read_simulation(ObjectReader& r, const nlohmann::json& doc, SimulationDetail& d) {
  r.number("analytical_step_time_s", d.analytical_step_time_s, 0, false);
  r.integer("tasks", d.tasks, 0, INT64_MAX);
  r.integer("edges", d.edges, 0, INT64_MAX);
  r.number("contention_s", d.contention_s, 0, false);
  read_array(r, doc, "simulated_stages", true, [&](size_t i, const nlohmann::json& v, const std::string& at) {
    ObjectReader s(r, at, v);
    int64_t index = 0;
    double end = 0;
    int64_t in_flight = 0;
    TimeBreakdown t;
    s.integer("stage", index, 0, kMaxCount);
    read_time(s, "time_s", t, nullptr);
    s.number("end_s", end, 0, false);
    s.integer("peak_in_flight", in_flight, 0, kMaxCount);
    s.reject_unknown_keys();
    if (!s.failed() && index != static_cast<int64_t>(i)) s.fail("stage", "must be its index in simulated_stages");
    d.stage_time.push_back(t);
    d.stage_end_s.push_back(end);
    d.stage_peak_in_flight.push_back(in_flight);
  });
}

// "source", or what wrote a document that lacks it (see the header).
StepSource read_source(ObjectReader& r) {
  if (!r.has("source")) return r.has("device") ? StepSource::measured : StepSource::predicted;
  int s = 0;
  r.choice("source", step_source_names(), s);
  return static_cast<StepSource>(s);
}

// The step's numbers. An emulated rank's report has null throughput and its own FLOPs ("rank").
void read_results(ObjectReader& r, const nlohmann::json& j, Estimate& e) {
  const bool measured = e.source == StepSource::measured, emulated = measured && e.measurement.emulated_rank >= 0;
  r.number("step_time_s", e.step_time_s, 0, false);
  read_nullable(r, j, "simulated_step_time_s", e.simulated_step_time_s, true, 0, true);
  read_nullable(r, j, "tokens_per_s", e.tokens_per_s, emulated, 0, false);
  read_nullable(r, j, "tflops_per_gpu", e.tflops_per_gpu, emulated, 0, false);
  read_nullable(r, j, "mfu", e.mfu, emulated, 0, false);
  // Files written before the paper-convention fields existed have none: left 0.
  if (j.contains("tflops_per_gpu_paper")) read_nullable(r, j, "tflops_per_gpu_paper", e.tflops_per_gpu_paper, emulated, 0, false);
  if (j.contains("mfu_paper")) read_nullable(r, j, "mfu_paper", e.mfu_paper, emulated, 0, false);
  r.opt_string("priced_by", e.priced_by);
  {
    const nlohmann::json& fj = member_object(r, "flops");
    if (r.failed()) return;
    ObjectReader f(r, "flops", fj);
    read_flops(f, "model", e.flops_model);
    read_flops(f, "model_paper", e.flops_model_paper, /*required=*/false);
    read_flops(f, emulated ? "rank" : "hardware", e.flops_hardware);
    f.reject_unknown_keys();
  }
  read_memory(r, "memory_bytes", e.memory);
  r.integer("peak_stage", e.peak_stage, 0, kMaxCount);
  r.integer("capacity_bytes", e.capacity_bytes, 0, 8 * kMaxBytes);
  r.integer("usable_bytes", e.usable_bytes, 0, 8 * kMaxBytes);
  r.opt_integer("host_memory_bytes", e.host_memory_bytes, 0, 8 * kMaxBytes);
  r.opt_integer("host_capacity_bytes", e.host_capacity_bytes, 0, 8 * kMaxBytes);
  read_comm(r, "comm_bytes", e.comm, nullptr);
  read_time(r, "time_s", e.time, measured ? &e.measurement.other_s : nullptr);
  {
    const nlohmann::json& dj = member_object(r, "dp_alternatives_s");
    if (r.failed()) return;
    ObjectReader d(r, "dp_alternatives_s", dj);
    d.number("ring_all_reduce", e.dp_alternatives.ring_all_reduce_s, 0, false);
    d.number("parameter_server", e.dp_alternatives.parameter_server_s, 0, false);
    d.number("compressed_ring", e.dp_alternatives.compressed_ring_s, 0, false);
    d.reject_unknown_keys();
  }
  r.boolean("fits", e.fits);
  r.string("reason", e.reason, true);
}

void read_stages(ObjectReader& r, const nlohmann::json& j, Estimate& e) {
  const bool measured = e.source == StepSource::measured;
  read_array(r, j, "stages", true, [&](size_t i, const nlohmann::json& v, const std::string& at) {
    StageEstimate s;
    if (v.is_null() && measured) {  // a stage no rank reported (an emulated rank's report)
      s.index = static_cast<int64_t>(i);
      s.reported = false;
    } else {
      read_stage(r, at, v, static_cast<int64_t>(i), s);
    }
    e.stages.push_back(s);
  });
}

// What the fields say about each other: the world is dp x tp x pp (x cp), the batch splits into the
// micro-batches, one stage per pipeline rank (a measurement may hold none), the peak stage is one.
Status check_consistency(const Estimate& e, const std::string& where, const std::string& pointer) {
  const auto& p = e.parallel;
  const __int128 world3 = static_cast<__int128>(p.dp) * p.tp * p.pp;  // each <= 2^40: < 2^120
  const __int128 world = world3 > e.gpus ? world3 : world3 * p.cp;      // then x cp < 2^80
  const __int128 batch = static_cast<__int128>(e.micro_batches) * p.micro_batch * p.dp;
  const int64_t stages = static_cast<int64_t>(e.stages.size());
  if (world != e.gpus)
    return make_error(where, pointer + "/gpus: must be dp x tp x pp" + std::string(p.cp > 1 ? " x cp" : "") + " (got " +
                                 std::to_string(e.gpus) + ")");
  if (batch != e.train.global_batch)
    return make_error(where, pointer + "/micro_batches: must be global_batch / (dp x micro_batch) (got " +
                                 std::to_string(e.micro_batches) + ")");
  if (stages != p.pp && !(stages == 0 && e.source == StepSource::measured))
    return make_error(where, pointer + "/stages: must hold one entry per pipeline stage (" + std::to_string(p.pp) +
                                 "; got " + std::to_string(stages) + ")");
  if (e.peak_stage >= std::max<int64_t>(1, stages))
    return make_error(where, pointer + "/peak_stage: must be a stage of /stages (got " + std::to_string(e.peak_stage) + ")");
  if (e.source == StepSource::simulated && static_cast<int64_t>(e.simulation.stage_time.size()) != p.pp)
    return make_error(where, pointer + "/simulated_stages: must hold one entry per pipeline stage");
  return ok_status();
}

}  // namespace

void read_schema_version(ObjectReader& r, const nlohmann::json& j) {
  r.skip("schema_version");
  if (!j.is_object() || !j.contains("schema_version")) return;  // written before the field existed
  const nlohmann::json& v = j["schema_version"];
  if (!v.is_number_integer() || v.get<int64_t>() != kJsonSchemaVersion)
    r.fail("schema_version", "unknown schema version: this loom reads version " + std::to_string(kJsonSchemaVersion) +
                                 " (got " + v.dump() + ")");
}

Expected<Estimate> estimate_from_json(const nlohmann::json& j, const std::string& where, const std::string& pointer) {
  ObjectReader r(j, where, pointer);
  Estimate e;
  read_schema_version(r, j);
  e.source = read_source(r);
  if (e.source == StepSource::measured) read_measurement(r, j, e.measurement);
  read_config(r, e);
  read_stage_layers(r, j, e.parallel.stage_layers);
  read_results(r, j, e);
  read_stages(r, j, e);
  if (e.source == StepSource::simulated) read_simulation(r, j, e.simulation);
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  if (auto st = check_consistency(e, where, pointer); !st) return st.error();
  return e;
}

std::optional<std::string> configuration_difference(const Estimate& a, const std::string& a_label,
                                                    const Estimate& b, const std::string& b_label) {
  auto fields = [](const Estimate& e) -> std::vector<std::pair<const char*, std::string>> {
    const auto& p = e.parallel;
    const auto n = [](int64_t v) { return std::to_string(v); };
    return {{"/model", e.model},
            {"/parallel/dp", n(p.dp)},
            {"/parallel/tp", n(p.tp)},
            {"/parallel/pp", n(p.pp)},
            {"/parallel/zero", n(p.zero)},
            {"/parallel/micro_batch", n(p.micro_batch)},
            {"/parallel/vpp", n(p.vpp)},
            {"/parallel/schedule", to_string(p.schedule)},
            {"/parallel/recompute", to_string(p.recompute)},
            {"/parallel/recompute_layers", n(p.recompute_layers)},
            {"/parallel/recompute_every", n(p.recompute_every)},
            {"/parallel/sp", p.sp ? "true" : "false"},
            {"/parallel/order", p.order},
            {"/parallel/offload", to_string(p.offload)},
            {"/parallel/ep", n(p.ep)},
            {"/parallel/etp", n(p.etp)},
            {"/parallel/tp_comm_overlap", p.tp_comm_overlap ? "true" : "false"},
            {"/parallel/stage_layers", stage_layers_text(p.stage_layers)},
            {"/train/global_batch", n(e.train.global_batch)},
            {"/train/seq", n(e.train.seq)},
            {"/train/dtype", train_dtype_name(e.train)},
            {"/train/grad_dtype", to_string(e.train.grad_dtype)},
            {"/train/fp8_recipe", e.train.fp8 ? to_string(e.train.fp8_recipe) : "-"},
            {"/train/fp8_param_gather", e.train.fp8 && e.train.fp8_param_gather ? "true" : "false"}};
  };
  const auto fa = fields(a), fb = fields(b);
  for (size_t i = 0; i < fa.size(); ++i)
    if (fa[i].second != fb[i].second)
      return std::string(fa[i].first) + " differs (" + a_label + " " + fa[i].second + ", " + b_label + " " +
             fb[i].second + ")";
  return std::nullopt;
}

}  // namespace loom
