// The trainer's setup and step loop; its other jobs live in trainer_*.cpp (trainer_impl.hpp).
#include "executor/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>

#include "executor/cpu/gpt.hpp"
#include "executor/trainer_impl.hpp"
#include "sim/model_math.hpp"
#include "sim/spec_json.hpp"

namespace loom::exec {

namespace tn = trace_names;


namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

void Trainer::setup_dims() {
  const auto& p = plan_.parallel;
  const auto& m = plan_.model;
  d_.B = p.micro_batch;
  d_.T = plan_.train.seq / p.cp;  // context parallelism: this rank's chunks of each sequence
  d_.cp = p.cp;
  d_.cp_rank = coords_.cp;
  d_.cp_all_gather = p.cp_comm == CpComm::all_gather;
  d_.N = d_.B * d_.T;
  d_.Ns = p.sp ? d_.N / p.tp : d_.N;
  d_.C = m.hidden;
  d_.hd = m.head_dim();
  d_.Hl = m.heads / p.tp;
  d_.Hkvl = m.kv_heads / p.tp;
  d_.Ql = d_.Hl * d_.hd;
  d_.KVl = d_.Hkvl * d_.hd;
  d_.Fl = m.ffn_hidden / p.tp;
  d_.V = m.vocab;
  d_.Vr = vocab_per_rank(m.vocab, p.tp);
  d_.gpt = m.family == Family::gpt;
  d_.sp = p.sp;
  d_.eps = m.norm_eps;
  d_.rope_theta = cpu::default_rope_theta(m);
}

Status Trainer::setup() {
  const auto& p = plan_.parallel;
  rank_ = comm_.rank();
  auto g = RankGrid::make(p.tp, p.dp, p.pp, p.order, p.cp);
  if (!g) return g.error();
  grid_ = *g;
  coords_ = grid_->coords(rank_);
  tp_ = make_group(*grid_, Dim::tp, rank_);
  dp_ = make_group(*grid_, Dim::dp, rank_);
  pp_ = make_group(*grid_, Dim::pp, rank_);
  if (auto st = setup_cp(); !st) return st;  // cp > 1: dp_ becomes the dp-cp group
  world_.kind = GroupKind::world;
  for (int r = 0; r < comm_.world(); ++r) world_.ranks.push_back(r);
  world_.index = rank_;
  zero_ = dp_.size() > 1 ? p.zero : 0;
  m_ = plan_.train.global_batch / (p.dp * p.micro_batch);
  vpp_ = p.vpp;
  pp_size_ = p.pp;
  setup_dims();
  if (auto st = setup_experts(); !st) return st;

  cpu::GptOptions go;
  go.seed = opt_.seed;
  go.padded_vocab = d_.Vr * p.tp;
  // The full model's layout and init rule, not its arrays: the whole model need not fit one host.
  auto ref = cpu::Gpt::layout_only(plan_.model, go);
  if (!ref) return ref.error();
  full_model_ = ref->num_elements();
  layout_ = build_layout(ref->tensors(), {plan_.model.layers, p.pp, vpp_, coords_.pp, p.tp, dp_.size(), zero_, p.stage_layers, p.ep, p.etp,
                                          p.schedule});
  auto compute = make_compute_(ComputeSetup{comm_, tp_, d_, ledger_, flops_, holds_head(), &ep_, &etp_, &cp_});
  if (!compute) return compute.error();
  compute_ = std::move(*compute);
  if (auto st = allocate(); !st) return st;
  return place_initial_weights(*ref);
}

// The rank's long-lived buffers, each booked in the category the cost model prices it under.
Status Trainer::allocate() {
  const int64_t total = layout_.total, shard = layout_.total_shard, max_unit = layout_.max_unit;
  const int64_t rows = d_.Ns * d_.C;
  const bool pp = plan_.parallel.pp > 1;
  struct Want {
    Buffer* buf;
    Mem cat;
    int64_t n;
    bool needed;
  };
  // ZeRO-3 keeps the gathered current and next layer; ZeRO-2/3 one layer's full gradient
  // before its reduce-scatter; the pipeline one send and one receive buffer.
  const Want wants[] = {{&params_, Mem::weights, zero_ >= 3 ? shard : total, true},
                        {&grads_, Mem::grads, zero_ >= 2 ? shard : total, true},
                        {&adam_m_, Mem::optimizer, zero_ >= 1 ? shard : total, true},
                        {&adam_v_, Mem::optimizer, zero_ >= 1 ? shard : total, true},
                        {&gathered_[0], Mem::comm_buffers, max_unit, zero_ >= 3},
                        {&gathered_[1], Mem::comm_buffers, max_unit, zero_ >= 3},
                        {&unit_grad_, Mem::comm_buffers, max_unit, zero_ >= 2},
                        {&send_buf_, Mem::comm_buffers, rows, pp},
                        {&recv_buf_, Mem::comm_buffers, rows, pp},
                        {&dres_, Mem::workspace, rows, true},
                        {&rec_out_, Mem::workspace, rows,
                         stage_recomputed_layers(plan_.parallel, plan_.model.layers, coords_.pp) > 0}};
  for (const Want& w : wants) {
    if (!w.needed) continue;
    auto b = compute_->alloc(w.cat, w.n);
    if (!b) return b.error();
    *w.buf = std::move(*b);
  }
  return ok_status();
}

// Initial weights: this rank's slices of the reference model (ZeRO-3: its shard of each unit),
// each element as cpu::Gpt initialises it (init_value), so no rank holds the whole model.
Status Trainer::place_initial_weights(const cpu::Gpt& ref) {
  std::map<int64_t, size_t> tensor_at;  // full offset -> tensor index
  for (size_t i = 0; i < ref.tensors().size(); ++i) tensor_at[ref.tensors()[i].offset] = i;
  for (const Unit& u : layout_.units) {
    std::vector<float> local(static_cast<size_t>(u.size));
    for (const auto& t : u.tensors) {
      const size_t ti = tensor_at.at(t.full_offset);
      for_each_element(t, shard_coords(), [&](int64_t li, int64_t fi) {
        local[static_cast<size_t>(li)] = ref.init_value(ti, fi - t.full_offset);
      });
    }
    const Status st = zero_ >= 3 ? compute_->upload(params_.data() + u.shard_offset, local.data() + my_begin(u),
                                                    my_end(u) - my_begin(u))
                                 : compute_->upload(params_.data() + u.offset, local.data(), u.size);
    if (!st) return st;
  }
  return ok_status();
}

// Fault injection (the reliability tests), then the traced step's common start.
Status Trainer::begin_step(int64_t step) {
  if (step == opt_.die_at_step && rank_ == opt_.die_rank) std::raise(opt_.stall ? SIGSTOP : SIGKILL);
  if (step == opt_.nan_at_step && holds_head()) {
    const Unit& u = layout_.units.back();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (auto st = compute_->upload(params_.data() + (zero_ >= 3 ? u.shard_offset : u.offset), &nan, 1); !st) return st;
  }
  // The traced step starts together on every rank, so their timelines share an origin.
  if (!opt_.trace_path.empty() && step + 1 == opt_.steps) return comm_.barrier();
  return ok_status();
}

// After the last slot: the pipeline drained, gradients reduced, the loss and the global norm
// summed over the world, then the clipped AdamW step. Returns the step's mean loss.
Expected<double> Trainer::finish_step(int64_t step) {
  if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st.error();
  if (auto st = sp_sync(); !st) return st.error();
  if (auto st = dp_sync(); !st) return st.error();
  const bool last = holds_head();
  double sums[2] = {last && tp_.index == 0 ? loss_local_ : 0.0, 0.0};
  if (auto st = add_grad_sum_squares(sums[1]); !st) return st.error();
  if (auto st = host_traced().all_reduce(world_, sums, 2); !st) return st.error();
  const double loss = sums[0] / static_cast<double>(m_ * plan_.parallel.dp);
  if (!std::isfinite(loss) || !std::isfinite(sums[1])) {
    const bool mine = last && !std::isfinite(loss_local_);
    ending_ = Ending::together;  // every rank saw the same sums
    return make_error("rank " + std::to_string(rank_),
                      mine ? "loss is not finite (" + std::to_string(loss_local_) + ") at step " +
                                 std::to_string(step) + " on this rank (last pipeline stage): stopping"
                           : "stopping at step " + std::to_string(step) +
                                 ": the loss is not finite (computed by the last pipeline stage)");
  }
  const double norm = std::sqrt(sums[1]);
  const double clip = opt_.grad_clip > 0 && norm > opt_.grad_clip ? opt_.grad_clip / (norm + 1e-6) : 1.0;
  if (auto st = optimizer_step(step, clip); !st) return st.error();
  return loss;
}

void Trainer::record_row(std::vector<double>& row, double step_s, int64_t in_flight) const {
  const auto& cc = comm_.counters();
  for (int k = 0; k < 7; ++k) row[static_cast<size_t>(kMemory + k)] = static_cast<double>(ledger_.peak(static_cast<Mem>(k)));
  row[kFlops] = static_cast<double>(flops_.total_flops());
  for (int k = 0; k < 4; ++k) row[static_cast<size_t>(kCommBytes + k)] = static_cast<double>(cc.by_group[static_cast<size_t>(k)]);
  // MoE, as the cost model splits it: expert gradients (edp) are dp traffic; ep and etp are ep.
  auto group_bytes = [&](GroupKind g) { return static_cast<double>(cc.by_group[static_cast<size_t>(g)]); };
  row[kCommBytes + 1] += group_bytes(GroupKind::edp);
  row[kCommEp] = group_bytes(GroupKind::ep) + group_bytes(GroupKind::etp);
  row[kCommCp] = group_bytes(GroupKind::cp);  // the ring's hops or the all-gathered variant's collectives, stage_cp.cpp
  const MeasuredTimes mt = measured_times(rec_.events());
  row[kLastStep] = step_s;
  row[kForward] = mt.forward_s;
  row[kBackward] = mt.backward_s;
  row[kRecompute] = mt.recompute_s;
  row[kOptimizer] = mt.optimizer_s;
  row[kTp] = mt.tp_s;
  row[kTpSync] = mt.tp_grad_sync_s;
  row[kDp] = mt.dp_s;
  row[kPp] = mt.pp_s;
  row[kWorld] = mt.world_s;
  row[kCp] = mt.cp_s;
  row[kParams] = static_cast<double>(layout_.total);
  row[kInFlight] = static_cast<double>(in_flight);
}

Status Trainer::train_step(int64_t step, const std::vector<Slot>& slots, RunRecord& rec) {
  if (auto st = begin_step(step); !st) return st;
  const auto t0 = Clock::now();
  rec_.start_step();
  comm_.reset_counters();
  flops_ = {};
  grad_bucket_ = 0;
  loss_local_ = 0;
  if (auto st = compute_->fill_zero(grads_.data(), grads_.size()); !st) return st;
  int64_t in_flight = 0;
  for (const Slot& s : slots) {
    auto st = s.phase == Phase::forward    ? forward_slot(step, s.micro_batch, s.chunk)
              : s.phase == Phase::backward ? backward_slot(step, s.micro_batch, s.chunk)
                                           : weight_slot(s.micro_batch, s.chunk);
    if (!st) return st;
    in_flight = std::max(in_flight, static_cast<int64_t>(stash_.size()));
  }
  auto loss = finish_step(step);
  if (!loss) return loss.error();
  rec.times_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  rec.losses.push_back(*loss);
  record_row(rec.row, rec.times_s.back(), in_flight);
  return ok_status();
}

Expected<nlohmann::json> Trainer::run() {
  if (auto st = setup(); !st) return st.error();
  int64_t start = 0;
  if (!opt_.resume_dir.empty()) {
    auto s = load();
    if (!s) return s.error();
    start = *s;
    ending_ = Ending::abort;
  }
  const auto table = make_schedule(plan_.parallel.schedule, pp_size_, vpp_, m_);
  const auto& slots = table[static_cast<size_t>(coords_.pp)];
  RunRecord rec;
  for (int64_t step = start; step < opt_.steps; ++step)
    if (auto st = train_step(step, slots, rec); !st) return st.error();
  for (double t : rec.times_s) rec.row[kMeanStep] += t / static_cast<double>(rec.times_s.size());
  if (!opt_.trace_path.empty())
    if (auto st = write_trace(rec.row[kLastStep]); !st) return st.error();
  if (!opt_.save_dir.empty())
    if (auto st = save(opt_.steps); !st) return st.error();
  if (!opt_.weights_out.empty())
    if (auto st = write_weights(); !st) return st.error();
  return report(rec);
}

Expected<nlohmann::json> execute_plan(const Plan& plan, Comm& comm, const ExecOptions& options,
                                      const ComputeFactory& compute, Ending* ending, Comm* host) {
  Trainer t(plan, comm, host, options, compute);
  auto out = t.run();
  if (ending) *ending = t.ending();
  return out;
}

Expected<nlohmann::json> execute_cpu(const Plan& plan, Comm& comm, const ExecOptions& options, Ending* ending) {
  if (ending) *ending = Ending::refused;  // the same plan on every rank: refused together
  if (auto st = check_cpu_plan(plan); !st) return st.error();
  return execute_plan(plan, comm, options, make_cpu_compute, ending);
}

}  // namespace loom::exec
