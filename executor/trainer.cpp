#include "executor/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include "executor/cpu/adamw.hpp"
#include "executor/cpu/gpt.hpp"
#include "executor/cpu/synthetic_data.hpp"
#include "executor/stage.hpp"
#include "executor/step_trace.hpp"
#include "sim/json_reader.hpp"
#include "sim/model_math.hpp"
#include "sim/rank_grid.hpp"
#include "sim/schedule.hpp"
#include "sim/spec_json.hpp"

namespace loom::exec {

namespace tn = trace_names;

Status check_cpu_plan(const Plan& plan) {
  const auto& m = plan.model;
  const auto& t = plan.train;
  const auto& p = plan.parallel;
  if (t.dtype != Dtype::fp32 || t.grad_dtype != Dtype::fp32)
    return make_error("train.dtype", "the CPU executor runs fp32: dtype and grad_dtype must be fp32");
  if (t.attention != Attention::unfused)
    return make_error("train.attention", "the CPU executor stores softmax probabilities: attention must be unfused");
  if (m.dropout) return make_error("model.dropout", "the CPU executor has no dropout: must be false");
  if (m.tied_embeddings && (p.pp > 1 || (p.zero >= 2 && p.dp > 1)))
    return make_error("model.tied_embeddings",
                      "the CPU executor ties embeddings only with pp = 1 and zero < 2 (untie them in the model file)");
  if (p.dp_comm != DpComm::ring) return make_error("parallel.dp_comm", "the CPU executor runs the ring only");
  if (p.grad_compression != 1) return make_error("parallel.grad_compression", "the CPU executor does not compress");
  if (p.sp && p.zero >= 2 && p.dp > 1)
    return make_error("parallel.sp", "the CPU executor runs sequence parallelism with zero < 2 only");
  return ok_status();
}

namespace {

using Clock = std::chrono::steady_clock;

Group make_group(const RankGrid& grid, Dim d, int rank) {
  Group g;
  g.kind = d == Dim::tp ? GroupKind::tp : d == Dim::dp ? GroupKind::dp : GroupKind::pp;
  for (int64_t r : grid.group(d, rank)) {
    if (r == rank) g.index = static_cast<int>(g.ranks.size());
    g.ranks.push_back(static_cast<int>(r));
  }
  return g;
}

void set_offset(UnitOffsets& o, const std::string& name, int64_t off) {
  static const std::pair<const char*, int64_t UnitOffsets::*> table[] = {
      {"tok_emb.weight", &UnitOffsets::wte},      {"pos_emb.weight", &UnitOffsets::wpe},
      {"norm1.weight", &UnitOffsets::norm1_w},    {"norm1.bias", &UnitOffsets::norm1_b},
      {"attn.q.weight", &UnitOffsets::q_w},       {"attn.q.bias", &UnitOffsets::q_b},
      {"attn.k.weight", &UnitOffsets::k_w},       {"attn.k.bias", &UnitOffsets::k_b},
      {"attn.v.weight", &UnitOffsets::v_w},       {"attn.v.bias", &UnitOffsets::v_b},
      {"attn.o.weight", &UnitOffsets::o_w},       {"attn.o.bias", &UnitOffsets::o_b},
      {"norm2.weight", &UnitOffsets::norm2_w},    {"norm2.bias", &UnitOffsets::norm2_b},
      {"mlp.fc.weight", &UnitOffsets::fc_w},      {"mlp.fc.bias", &UnitOffsets::fc_b},
      {"mlp.gate.weight", &UnitOffsets::fc_w},    {"mlp.up.weight", &UnitOffsets::up_w},
      {"mlp.proj.weight", &UnitOffsets::proj_w},  {"mlp.proj.bias", &UnitOffsets::proj_b},
      {"mlp.down.weight", &UnitOffsets::proj_w},  {"norm_f.weight", &UnitOffsets::normf_w},
      {"norm_f.bias", &UnitOffsets::normf_b},     {"lm_head.weight", &UnitOffsets::head}};
  for (const auto& [suffix, field] : table) {
    const std::string s(suffix);
    if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
        (name.size() == s.size() || name[name.size() - s.size() - 1] == '.')) {
      o.*field = off;
      return;
    }
  }
}

// Element (i, j) of a tp rank's shard <-> the full tensor in cpu::Gpt's flat layout.
template <class F>
void for_each_element(const TensorSlice& t, int tp_index, int tp, F&& f) {
  const int64_t lr = t.split == 0 ? t.rows / tp : t.rows, lc = t.split == 1 ? t.cols / tp : t.cols;
  const int64_t r0 = t.split == 0 ? tp_index * lr : 0, c0 = t.split == 1 ? tp_index * lc : 0;
  for (int64_t i = 0; i < lr; ++i)
    for (int64_t j = 0; j < lc; ++j) f(t.offset + i * lc + j, t.full_offset + (r0 + i) * t.cols + (c0 + j));
}

struct ChunkStash {
  std::vector<Buf> xs;            // each layer's input (Ns, C)
  std::vector<LayerStash> layers; // empty under full recompute
  std::optional<HeadStash> head;  // last model chunk
};

class Trainer {
 public:
  Trainer(const Plan& plan, Comm& comm, const ExecOptions& opt)
      : plan_(plan), comm_(comm, rec_, plan.parallel.sp), opt_(opt) {}
  Expected<nlohmann::json> run();
  Ending ending() const { return ending_; }

 private:
  Status setup();
  Status build_units(const cpu::Gpt& ref);
  int64_t my_begin(const Unit& u) const { return std::min(u.size, dp_.index * u.shard); }
  int64_t my_end(const Unit& u) const { return std::min(u.size, (dp_.index + 1) * u.shard); }
  // ZeRO-3 gathers the unit; `name` labels that all-gather in the trace.
  Expected<float*> acquire(const Unit& u, const std::string& name = tn::kDpGatherParams);
  float* grads_for(const Unit& u);
  Status release_grads(const Unit& u);
  void tokens_for(int64_t step, int64_t mb, std::vector<int32_t>& in, std::vector<int32_t>& tg) const;
  Status forward_slot(int64_t step, int mb, int chunk);
  Status backward_slot(int64_t step, int mb, int chunk);
  Status send(int to_rank, int tag, std::string name);
  Status write_trace(double step_time_s);
  Status dp_sync();
  Status sp_sync();
  // Calls f(unit, tensor, lo, hi, grad ptr at lo, param ptr at lo, m ptr, v ptr) for every range
  // of reduced gradients this rank owns after the DP sync.
  template <class F>
  void for_each_owned(F&& f);
  Status optimizer_step(int64_t step, double clip_scale);
  std::vector<Section> sections();
  Status save(int64_t step);
  Expected<int64_t> load();
  Status write_weights();
  std::vector<int>& chunk_units(int chunk) { return chunk_units_[static_cast<size_t>(chunk)]; }

  const Plan& plan_;
  StepRecorder rec_;
  TracedComm comm_;
  ExecOptions opt_;
  int rank_ = 0;
  std::optional<RankGrid> grid_;
  Coords coords_;
  Group tp_, dp_, pp_, world_;
  int zero_ = 0;  // effective stage (dp = 1 shards nothing)
  int64_t m_ = 0, vpp_ = 1, pp_size_ = 1, L_chunk_ = 0;
  Dims d_;
  Ledger ledger_;
  cpu::FlopCounter flops_;
  std::vector<Unit> units_;
  std::vector<std::vector<int>> chunk_units_;  // unit indices per chunk, in forward order
  int64_t total_ = 0, total_shard_ = 0, max_unit_ = 0, full_model_ = 0;
  Buf params_, grads_, adam_m_, adam_v_, gathered_[2], unit_grad_, send_buf_, recv_buf_, dres_, rec_out_;
  int slot_ = 0;
  int send_req_ = -1;
  int64_t grad_bucket_ = 0;  // dp gradient collectives issued this step (trace names)
  std::unique_ptr<Scratch> scratch_;
  std::map<std::pair<int, int>, ChunkStash> stash_;
  double loss_local_ = 0;
  bool embed_tied_ = false;
  Ending ending_ = Ending::abort;  // how a failure ends the job (trainer.hpp)
};

Status Trainer::setup() {
  const auto& p = plan_.parallel;
  const auto& m = plan_.model;
  rank_ = comm_.rank();
  auto g = RankGrid::make(p.tp, p.dp, p.pp, p.order);
  if (!g) return g.error();
  grid_ = *g;
  coords_ = grid_->coords(rank_);
  tp_ = make_group(*grid_, Dim::tp, rank_);
  dp_ = make_group(*grid_, Dim::dp, rank_);
  pp_ = make_group(*grid_, Dim::pp, rank_);
  world_.kind = GroupKind::world;
  for (int r = 0; r < comm_.world(); ++r) world_.ranks.push_back(r);
  world_.index = rank_;
  zero_ = p.dp > 1 ? p.zero : 0;
  m_ = plan_.train.global_batch / (p.dp * p.micro_batch);
  vpp_ = p.vpp;
  pp_size_ = p.pp;
  L_chunk_ = m.layers / (p.pp * p.vpp);
  d_.B = p.micro_batch;
  d_.T = plan_.train.seq;
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
  embed_tied_ = m.tied_embeddings;

  cpu::GptOptions go;
  go.seed = opt_.seed;
  go.padded_vocab = d_.Vr * p.tp;
  auto ref = cpu::Gpt::create(m, go);  // the full model, for its layout and init (setup only)
  if (!ref) return ref.error();
  full_model_ = static_cast<int64_t>(ref->params().size());
  if (auto st = build_units(*ref); !st) return st;

  const Mem W = Mem::weights, G = Mem::grads, O = Mem::optimizer;
  params_ = Buf(ledger_, W, zero_ >= 3 ? total_shard_ : total_);
  grads_ = Buf(ledger_, G, zero_ >= 2 ? total_shard_ : total_);
  adam_m_ = Buf(ledger_, O, zero_ >= 1 ? total_shard_ : total_);
  adam_v_ = Buf(ledger_, O, zero_ >= 1 ? total_shard_ : total_);
  // ZeRO-3: the gathered current and next layer; ZeRO-2/3: one layer's full gradient before its
  // reduce-scatter.
  if (zero_ >= 3) for (auto& b : gathered_) b = Buf(ledger_, Mem::comm_buffers, max_unit_);
  if (zero_ >= 2) unit_grad_ = Buf(ledger_, Mem::comm_buffers, max_unit_);
  if (p.pp > 1) {
    send_buf_ = Buf(ledger_, Mem::comm_buffers, d_.Ns * d_.C);
    recv_buf_ = Buf(ledger_, Mem::comm_buffers, d_.Ns * d_.C);
  }
  dres_ = Buf(ledger_, Mem::workspace, d_.Ns * d_.C);
  if (p.recompute == Recompute::full) rec_out_ = Buf(ledger_, Mem::workspace, d_.Ns * d_.C);
  scratch_ = std::make_unique<Scratch>(make_scratch(ledger_, d_, coords_.pp == pp_size_ - 1));

  // Initial weights: this rank's slices of the reference model.
  const std::vector<float>& full = ref->params();
  for (const Unit& u : units_) {
    std::vector<float> local(static_cast<size_t>(u.size));
    for (const auto& t : u.tensors)
      for_each_element(t, tp_.index, static_cast<int>(p.tp), [&](int64_t li, int64_t fi) {
        local[static_cast<size_t>(li)] = full[static_cast<size_t>(fi)];
      });
    if (zero_ >= 3) {
      std::copy(local.begin() + my_begin(u), local.begin() + my_end(u), params_.data() + u.shard_offset);
    } else {
      std::copy(local.begin(), local.end(), params_.data() + u.offset);
    }
  }
  return ok_status();
}

Status Trainer::build_units(const cpu::Gpt& ref) {
  const auto place = layer_placement(plan_.model.layers, pp_size_, vpp_);
  const int stage = static_cast<int>(coords_.pp);
  const bool first = stage == 0, last = stage == pp_size_ - 1;
  chunk_units_.assign(static_cast<size_t>(vpp_), {});
  auto unit_of = [&](const cpu::TensorInfo& t) -> std::pair<UnitKind, int64_t> {
    if (t.layer >= 0) return {UnitKind::layer, t.layer};
    if (t.name.rfind("tok_emb", 0) == 0 || t.name.rfind("pos_emb", 0) == 0) return {UnitKind::embed, -1};
    return {UnitKind::out, -1};
  };
  auto make_unit = [&](UnitKind kind, int64_t layer, int chunk) {
    Unit u;
    u.kind = kind;
    u.layer = layer;
    u.chunk = chunk;
    for (const auto& t : ref.tensors()) {
      auto [k, l] = unit_of(t);
      if (k != kind || l != layer) continue;
      TensorSlice s;
      s.name = t.name;
      s.offset = u.size;
      s.split = t.tp_split_dim;
      s.numel = s.split >= 0 ? t.numel / plan_.parallel.tp : t.numel;
      s.replicated = s.split < 0;
      s.decay = t.weight_decay;
      s.full_offset = t.offset;
      s.rows = t.shape[0];
      s.cols = t.numel / t.shape[0];
      set_offset(u.o, t.name, s.offset);
      u.size += s.numel;
      u.tensors.push_back(s);
    }
    u.offset = total_;
    total_ += u.size;
    u.shard = (u.size + plan_.parallel.dp - 1) / plan_.parallel.dp;
    if (zero_ == 0) u.shard = u.size;
    u.shard_offset = total_shard_;
    total_shard_ += u.shard;
    max_unit_ = std::max(max_unit_, u.size);
    chunk_units_[static_cast<size_t>(chunk)].push_back(static_cast<int>(units_.size()));
    units_.push_back(std::move(u));
  };
  for (int c = 0; c < vpp_; ++c) {
    if (first && c == 0) make_unit(UnitKind::embed, -1, c);
    for (const auto& lp : place)
      if (lp.stage == stage && lp.chunk == c) make_unit(UnitKind::layer, lp.layer, c);
    if (last && c == vpp_ - 1) make_unit(UnitKind::out, -1, c);
  }
  return ok_status();
}

Expected<float*> Trainer::acquire(const Unit& u, const std::string& name) {
  if (zero_ < 3) return params_.data() + u.offset;
  float* buf = gathered_[slot_].data();
  slot_ ^= 1;
  std::copy(params_.data() + u.shard_offset, params_.data() + u.shard_offset + (my_end(u) - my_begin(u)),
            buf + my_begin(u));
  comm_.label(name, tn::Stream::dp_gather);
  if (auto st = comm_.all_gather(dp_, buf, u.size); !st) return st.error();
  return buf;
}

float* Trainer::grads_for(const Unit& u) {
  if (zero_ < 2) return grads_.data() + u.offset;
  std::fill(unit_grad_.data(), unit_grad_.data() + u.size, 0.0f);
  return unit_grad_.data();
}

// ZeRO-2/3: this micro-batch's gradient of the unit is reduce-scattered at once (only a shard
// is kept); the rank's chunk is added to its shard accumulator.
Status Trainer::release_grads(const Unit& u) {
  if (zero_ < 2) return ok_status();
  comm_.label(tn::dp_bucket("reduce_scatter", grad_bucket_++), tn::Stream::dp);
  if (auto st = comm_.reduce_scatter(dp_, unit_grad_.data(), u.size); !st) return st;
  const float* mine = unit_grad_.data() + my_begin(u);
  float* acc = grads_.data() + u.shard_offset;
  for (int64_t i = 0; i < my_end(u) - my_begin(u); ++i) acc[i] += mine[i];
  return ok_status();
}

// Data-parallel rank r takes sequences [r m b, (r+1) m b) of the step's global batch, in
// micro-batches of b: every plan trains on the same sequences.
void Trainer::tokens_for(int64_t step, int64_t mb, std::vector<int32_t>& in, std::vector<int32_t>& tg) const {
  const int64_t b = plan_.parallel.micro_batch;
  cpu::SyntheticStream s{plan_.model.vocab, opt_.seed, 61};
  in.resize(static_cast<size_t>(d_.N));
  tg.resize(static_cast<size_t>(d_.N));
  const int64_t first = step * plan_.train.global_batch + coords_.dp * m_ * b + mb * b;
  cpu::synthetic_batch(in.data(), tg.data(), s, first, b, d_.T);
}

int p2p_tag(int64_t mb, int64_t model_chunk, int64_t chunks, int phase) {
  return 1000 + static_cast<int>((mb * chunks + model_chunk) * 2 + phase);
}

Status Trainer::send(int to_rank, int tag, std::string name) {
  comm_.label(std::move(name), tn::Stream::pp);
  auto r = comm_.isend(to_rank, send_buf_.data(), send_buf_.bytes(), tag, GroupKind::pp);
  if (!r) return r.error();
  send_req_ = *r;
  return ok_status();
}

Status Trainer::forward_slot(int64_t step, int mb, int chunk) {
  const int stage = static_cast<int>(coords_.pp);
  const int64_t chunks = pp_size_ * vpp_, mc = chunk * pp_size_ + stage;
  const bool first = mc == 0, last = mc == chunks - 1;
  const Recompute rc = plan_.parallel.recompute;
  ChunkStash& cs = stash_[{mb, chunk}];
  for (int64_t i = 0; i < L_chunk_; ++i) {
    cs.xs.emplace_back(ledger_, Mem::activations, d_.Ns * d_.C);
    if (rc != Recompute::full)
      cs.layers.push_back(make_layer_stash(ledger_, d_, rc == Recompute::selective ? StashKind::no_attention_core
                                                                                   : StashKind::full));
  }
  if (last) cs.head = make_head_stash(ledger_, d_);
  StageCtx c{comm_, tp_, d_, *scratch_, ledger_, flops_};
  std::vector<int32_t> tokens, targets;
  tokens_for(step, mb, tokens, targets);
  const auto& ids = chunk_units(chunk);
  size_t ui = 0;
  rec_.compute_begin(tn::forward(mb, chunk), mb, chunk);
  const std::string gather = tn::dp_gather(true, mb, chunk);
  float* x0 = L_chunk_ > 0 ? cs.xs[0].data() : cs.head->lnf_in.data();
  if (first) {
    const Unit& u = units_[static_cast<size_t>(ids[ui++])];
    auto P = acquire(u, gather);
    if (!P) return P.error();
    if (auto st = embed_forward(c, *P, u.o, tokens.data(), x0); !st) return st;
  } else {
    const int from = pp_.ranks[static_cast<size_t>(slot_source(stage, chunk, Phase::forward, pp_size_, vpp_).stage)];
    comm_.label(tn::pp_recv(true, mb), tn::Stream::pp);
    if (auto st = comm_.recv(from, recv_buf_.data(), recv_buf_.bytes(), p2p_tag(mb, mc, chunks, 0),
                             "pipeline forward receive");
        !st)
      return st;
    std::copy(recv_buf_.data(), recv_buf_.data() + d_.Ns * d_.C, x0);
  }
  for (int64_t i = 0; i < L_chunk_; ++i) {
    const Unit& u = units_[static_cast<size_t>(ids[ui++])];
    float* out;
    if (i + 1 < L_chunk_) {
      out = cs.xs[static_cast<size_t>(i + 1)].data();
    } else if (last) {
      out = cs.head->lnf_in.data();
    } else {
      if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st;
      out = send_buf_.data();
    }
    auto P = acquire(u, gather);
    if (!P) return P.error();
    if (rc == Recompute::full) {
      LayerStash tmp = make_layer_stash(ledger_, d_, StashKind::full);
      if (auto st = layer_forward(c, *P, u.o, cs.xs[static_cast<size_t>(i)].data(), tmp, out); !st) return st;
    } else {
      if (auto st = layer_forward(c, *P, u.o, cs.xs[static_cast<size_t>(i)].data(), cs.layers[static_cast<size_t>(i)], out);
          !st)
        return st;
    }
  }
  if (last) {
    const Unit& u = units_[static_cast<size_t>(ids[ui++])];
    auto P = acquire(u, gather);
    if (!P) return P.error();
    const float* head = u.o.head >= 0 ? *P + u.o.head : params_.data() + units_[0].offset + units_[0].o.wte;
    auto loss = head_forward(c, *P, u.o, head, cs.head->lnf_in.data(), targets.data(), *cs.head);
    if (!loss) return loss.error();
    if (tp_.index == 0) loss_local_ += *loss / static_cast<double>(d_.N);
  } else {
    const StageChunk dst = slot_destination(stage, chunk, Phase::forward, pp_size_, vpp_);
    const int to = pp_.ranks[static_cast<size_t>(dst.stage)];
    if (L_chunk_ == 0) {
      if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st;
      std::copy(x0, x0 + d_.Ns * d_.C, send_buf_.data());
    }
    if (auto st = send(to, p2p_tag(mb, dst.chunk * pp_size_ + dst.stage, chunks, 0), tn::pp_send(true, mb)); !st) return st;
  }
  rec_.compute_end();
  return ok_status();
}

Status Trainer::backward_slot(int64_t step, int mb, int chunk) {
  const int stage = static_cast<int>(coords_.pp);
  const int64_t chunks = pp_size_ * vpp_, mc = chunk * pp_size_ + stage;
  const bool first = mc == 0, last = mc == chunks - 1;
  const Recompute rc = plan_.parallel.recompute;
  auto it = stash_.find({mb, chunk});
  if (it == stash_.end()) return make_error("rank " + std::to_string(rank_), "backward before forward (schedule)");
  ChunkStash& cs = it->second;
  StageCtx c{comm_, tp_, d_, *scratch_, ledger_, flops_};
  std::vector<int32_t> tokens, targets;
  tokens_for(step, mb, tokens, targets);
  const auto& ids = chunk_units(chunk);
  int ui = static_cast<int>(ids.size()) - 1;
  float* d = dres_.data();
  const std::string bwd = tn::backward(mb, chunk), gather = tn::dp_gather(false, mb, chunk);
  rec_.compute_begin(bwd, mb, chunk);
  if (last) {
    const Unit& u = units_[static_cast<size_t>(ids[static_cast<size_t>(ui--)])];
    auto P = acquire(u, gather);
    if (!P) return P.error();
    float* G = grads_for(u);
    const float* head = u.o.head >= 0 ? *P + u.o.head : params_.data() + units_[0].offset + units_[0].o.wte;
    float* head_g = u.o.head >= 0 ? G + u.o.head : grads_.data() + units_[0].offset + units_[0].o.wte;
    const double scale = 1.0 / static_cast<double>(d_.N * m_ * plan_.parallel.dp);
    if (auto st = head_backward(c, *P, G, u.o, head, head_g, targets.data(), *cs.head, scale, d); !st) return st;
    if (auto st = release_grads(u); !st) return st;
  } else {
    const int from = pp_.ranks[static_cast<size_t>(slot_source(stage, chunk, Phase::backward, pp_size_, vpp_).stage)];
    comm_.label(tn::pp_recv(false, mb), tn::Stream::pp);
    if (auto st = comm_.recv(from, recv_buf_.data(), recv_buf_.bytes(), p2p_tag(mb, mc, chunks, 1),
                             "pipeline backward receive");
        !st)
      return st;
    std::copy(recv_buf_.data(), recv_buf_.data() + d_.Ns * d_.C, d);
  }
  for (int64_t i = L_chunk_ - 1; i >= 0; --i) {
    const Unit& u = units_[static_cast<size_t>(ids[static_cast<size_t>(ui--)])];
    auto P = acquire(u, gather);
    if (!P) return P.error();
    float* G = grads_for(u);
    const float* x = cs.xs[static_cast<size_t>(i)].data();
    if (rc == Recompute::full) {  // rebuild the layer's activations from its input
      LayerStash tmp = make_layer_stash(ledger_, d_, StashKind::full);
      rec_.compute_begin(tn::recompute(mb, chunk), mb, chunk);
      if (auto st = layer_forward(c, *P, u.o, x, tmp, rec_out_.data()); !st) return st;
      rec_.compute_begin(bwd, mb, chunk);
      if (auto st = layer_backward(c, *P, G, u.o, x, tmp, d, false); !st) return st;
    } else {
      if (auto st = layer_backward(c, *P, G, u.o, x, cs.layers[static_cast<size_t>(i)], d,
                                   rc == Recompute::selective);
          !st)
        return st;
    }
    if (auto st = release_grads(u); !st) return st;
  }
  if (first) {
    const Unit& u = units_[static_cast<size_t>(ids[static_cast<size_t>(ui--)])];
    auto P = acquire(u, gather);  // FSDP gathers every unit in backward too (its traffic is counted)
    if (!P) return P.error();
    float* G = grads_for(u);
    if (auto st = embed_backward(c, G, u.o, tokens.data(), d); !st) return st;
    if (auto st = release_grads(u); !st) return st;
  } else {
    if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st;
    std::copy(d, d + d_.Ns * d_.C, send_buf_.data());
    const StageChunk dst = slot_destination(stage, chunk, Phase::backward, pp_size_, vpp_);
    const int to = pp_.ranks[static_cast<size_t>(dst.stage)];
    if (auto st = send(to, p2p_tag(mb, dst.chunk * pp_size_ + dst.stage, chunks, 1), tn::pp_send(false, mb)); !st) return st;
  }
  rec_.compute_end();
  stash_.erase(it);
  return ok_status();
}

// SP: replicated parameters (norms, row-parallel biases, positions) saw only this rank's token
// rows, so their gradients are summed over the tp group (Megatron's layernorm-grad all-reduce),
// packed into one buffer.
Status Trainer::sp_sync() {
  if (!d_.sp || tp_.size() <= 1) return ok_status();
  std::vector<float*> ptrs;
  std::vector<int64_t> lens;
  int64_t n = 0;
  for (const Unit& u : units_)
    for (const auto& t : u.tensors)
      if (t.replicated) {
        ptrs.push_back(grads_.data() + u.offset + t.offset);
        lens.push_back(t.numel);
        n += t.numel;
      }
  Buf pack(ledger_, Mem::workspace, n);
  int64_t k = 0;
  for (size_t i = 0; i < ptrs.size(); ++i) {
    std::copy(ptrs[i], ptrs[i] + lens[i], pack.data() + k);
    k += lens[i];
  }
  comm_.label(kTpGradSync, tn::Stream::tp);
  if (auto st = comm_.all_reduce(tp_, pack.data(), n); !st) return st;
  k = 0;
  for (size_t i = 0; i < ptrs.size(); ++i) {
    std::copy(pack.data() + k, pack.data() + k + lens[i], ptrs[i]);
    k += lens[i];
  }
  return ok_status();
}

// Gradient reduction over dp after the last micro-batch. ZeRO-0: all-reduce in buckets of
// dp_bucket_bytes (each a multiple of dp elements). ZeRO-1: reduce-scatter of each unit.
// ZeRO-2/3 reduced every micro-batch already.
Status Trainer::dp_sync() {
  if (dp_.size() <= 1) return ok_status();
  if (zero_ == 0) {
    const int64_t n = dp_.size();
    int64_t bucket = plan_.train.dp_bucket_bytes > 0 ? plan_.train.dp_bucket_bytes / 4 / n * n : total_;
    bucket = std::max(bucket, n);
    for (int64_t b0 = 0; b0 < total_; b0 += bucket) {
      comm_.label(tn::dp_bucket("allreduce", grad_bucket_++), tn::Stream::dp);
      if (auto st = comm_.all_reduce(dp_, grads_.data() + b0, std::min(bucket, total_ - b0)); !st) return st;
    }
  } else if (zero_ == 1) {
    for (const Unit& u : units_) {
      comm_.label(tn::dp_bucket("reduce_scatter", grad_bucket_++), tn::Stream::dp);
      if (auto st = comm_.reduce_scatter(dp_, grads_.data() + u.offset, u.size); !st) return st;
    }
  }
  return ok_status();
}

template <class F>
void Trainer::for_each_owned(F&& f) {
  for (const Unit& u : units_) {
    const int64_t lo = zero_ == 0 ? 0 : my_begin(u), hi = zero_ == 0 ? u.size : my_end(u);
    float* g = zero_ >= 2 ? grads_.data() + u.shard_offset - lo : grads_.data() + u.offset;
    float* p = zero_ >= 3 ? params_.data() + u.shard_offset - lo : params_.data() + u.offset;
    float* m = zero_ >= 1 ? adam_m_.data() + u.shard_offset - lo : adam_m_.data() + u.offset;
    float* v = zero_ >= 1 ? adam_v_.data() + u.shard_offset - lo : adam_v_.data() + u.offset;
    for (const auto& t : u.tensors) {
      const int64_t a = std::max(lo, t.offset), b = std::min(hi, t.offset + t.numel);
      if (a < b) f(t, a, b, g, p, m, v);
    }
  }
}

Status Trainer::optimizer_step(int64_t step, double clip) {
  cpu::AdamWConfig cfg;
  cfg.lr = opt_.lr;
  rec_.compute_begin(tn::kOptimizer);
  for_each_owned([&](const TensorSlice& t, int64_t a, int64_t b, float* g, float* p, float* m, float* v) {
    if (clip != 1.0)
      for (int64_t i = a; i < b; ++i) g[i] = static_cast<float>(g[i] * clip);
    cfg.weight_decay = t.decay ? opt_.weight_decay : 0.0;
    cpu::adamw_step(p + a, g + a, m + a, v + a, b - a, step + 1, cfg);
  });
  if (zero_ == 1 || zero_ == 2)
    for (const Unit& u : units_) {
      comm_.label(tn::kDpGatherParams, tn::Stream::dp);
      if (auto st = comm_.all_gather(dp_, params_.data() + u.offset, u.size); !st) return st;
    }
  rec_.compute_end();
  return ok_status();
}

// Checkpoint (executor/checkpoint.hpp): each rank saves what it owns, weights and Adam m and v,
// in the layout of its own buffers; a resumed run of the same plan has the same layout.
std::vector<Section> Trainer::sections() {
  return {{params_.data(), params_.size()}, {adam_m_.data(), adam_m_.size()}, {adam_v_.data(), adam_v_.size()}};
}

Status Trainer::save(int64_t step) {
  const RankHeader h{step, comm_.world(), rank_, plan_fingerprint(plan_)};
  bool lost = false;
  auto st = save_checkpoint(comm_.inner(), opt_.save_dir, h, sections(), lost, opt_.save_fault);
  if (!st) ending_ = lost ? Ending::abort : Ending::together;
  return st;
}

Expected<int64_t> Trainer::load() {
  bool lost = false;
  auto step = load_checkpoint(comm_.inner(), opt_.resume_dir, plan_fingerprint(plan_), sections(), lost);
  ending_ = lost ? Ending::abort : Ending::refused;
  if (!step) return step;
  // Every rank read the same index, so every rank refuses together.
  if (*step >= opt_.steps)
    return make_error("--steps", "must be above the checkpoint's step " + std::to_string(*step) + " in " +
                                     opt_.resume_dir + ": nothing to train (got " + std::to_string(opt_.steps) + ")");
  return step;
}

// The full model in cpu::Gpt's layout: every rank places the tensors it owns (dp rank 0; tp rank
// 0 for replicated ones), a sum over the world assembles it, rank 0 writes it.
Status Trainer::write_weights() {
  std::vector<float> full(static_cast<size_t>(full_model_), 0.0f);
  for (const Unit& u : units_) {
    auto P = acquire(u);
    if (!P) return P.error();
    if (coords_.dp != 0) continue;
    for (const auto& t : u.tensors) {
      if (t.replicated && tp_.index != 0) continue;
      for_each_element(t, tp_.index, static_cast<int>(plan_.parallel.tp),
                       [&](int64_t li, int64_t fi) { full[static_cast<size_t>(fi)] = (*P)[li]; });
    }
  }
  if (auto st = comm_.all_reduce(world_, full.data(), full_model_); !st) return st;
  if (rank_ != 0) return ok_status();
  const std::string tmp = opt_.weights_out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(full.data()), static_cast<std::streamsize>(full.size() * sizeof(float)));
    f.flush();
    if (!f) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);  // leave no half-written file behind
      return make_error("--weights-out", "cannot write " + tmp);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, opt_.weights_out, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return make_error("--weights-out", opt_.weights_out + ": rename failed: " + ec.message());
  }
  return ok_status();
}

// What each rank measured on the last step, gathered to the reporting rank as one row of doubles.
enum Field : int {
  kMemory = 0,           // 7 peaks by Mem category
  kFlops = 7,
  kCommBytes = 8,        // tp, dp, pp, world
  kMeanStep = 12,        // mean over the steps run
  kLastStep, kForward, kBackward, kRecompute, kOptimizer, kTp, kTpGradSync, kDp, kPp, kWorld,
  kParams,               // parameters this rank holds (its tp shard, before ZeRO sharding)
  kInFlight,             // (micro-batch, chunk) activation stashes held at once, at most
  kFields
};

// One rank's row in the step-result vocabulary (sim/estimate.hpp). On this backend every call
// blocks, so each time is exposed time; `pp_comm` includes waiting for the neighbour stage (what
// the prediction splits into pp_comm and bubble), and `other_s` is what no category holds (the
// loss and gradient-norm all-reduce, bookkeeping).
RankMeasurement rank_row(const std::vector<double>& v, int rank, const Coords& c) {
  auto i64 = [&](int k) { return static_cast<int64_t>(v[static_cast<size_t>(k)]); };
  RankMeasurement m;
  m.rank = rank;
  m.dp = c.dp;
  m.tp = c.tp;
  m.pp = c.pp;
  m.memory.weights = i64(kMemory);
  m.memory.grads = i64(kMemory + 1);
  m.memory.optimizer = i64(kMemory + 2);
  m.memory.activations = i64(kMemory + 3);
  m.memory.logits = i64(kMemory + 4);
  m.memory.comm_buffers = i64(kMemory + 5);
  m.memory.workspace = i64(kMemory + 6);
  m.flops = static_cast<FlopCount>(v[kFlops]);
  m.comm = {i64(kCommBytes), i64(kCommBytes + 1), i64(kCommBytes + 2)};
  m.comm_world_bytes = i64(kCommBytes + 3);
  m.step_time_s = v[kMeanStep];
  m.time.compute_s = v[kForward] + v[kBackward] + v[kRecompute];
  m.time.tp_comm_s = v[kTp] + v[kTpGradSync];
  m.time.dp_comm_s = v[kDp];
  m.time.pp_comm_s = v[kPp];
  m.time.optimizer_s = v[kOptimizer];
  m.other_s = std::max(0.0, v[kLastStep] - m.time.total_s());
  return m;
}

// The rank's stage, per micro-batch (forward, backward, recompute, tp_comm) as StageEstimate.
StageEstimate stage_row(const std::vector<double>& v, const RankMeasurement& r, int64_t m, int64_t layers) {
  const double n = static_cast<double>(m);
  StageEstimate s;
  s.index = r.pp;
  s.layers = layers;
  s.params = static_cast<int64_t>(v[kParams]);
  s.in_flight = static_cast<int64_t>(v[kInFlight]);
  s.memory = r.memory;
  s.flops = r.flops;
  s.comm = r.comm;
  s.forward_s = v[kForward] / n;
  s.backward_s = v[kBackward] / n;
  s.recompute_s = v[kRecompute] / n;
  s.tp_comm_s = v[kTp] / n;
  s.tp_grad_sync_s = v[kTpGradSync];
  s.dp_comm_exposed_s = v[kDp];
  s.optimizer_s = v[kOptimizer];
  return s;
}

// The job's numbers from the reported ranks: the slowest rank's step and time by category, the
// largest peak's memory, FLOPs summed, bytes the largest per group. Host memory has no capacity
// the plan priced, so capacity_bytes and usable_bytes are 0 (not known).
Estimate measured_estimate(const Plan& plan, const std::vector<RankMeasurement>& ranks, int world) {
  const auto& t = plan.train;
  Estimate e;
  e.source = StepSource::measured;
  e.model = plan.model.name;
  e.cluster = plan.cluster.name;
  e.params = total_params(plan.model);
  e.gpus = world;
  e.parallel = plan.parallel;
  e.train = t;
  e.micro_batches = t.global_batch / (plan.parallel.dp * plan.parallel.micro_batch);
  e.flops_model = model_flops(plan.model, t.global_batch, t.seq, AttentionFlops::causal);
  e.flops_model_paper = model_flops(plan.model, t.global_batch, t.seq, AttentionFlops::full);
  const RankMeasurement* slowest = &ranks.front();
  int64_t best_peak = -1;
  for (const auto& r : ranks) {
    if (r.memory.peak() > best_peak) {
      best_peak = r.memory.peak();
      e.memory = r.memory;
      e.peak_stage = r.pp;
    }
    if (r.step_time_s > slowest->step_time_s) slowest = &r;
    e.flops_hardware += r.flops;
    e.comm.tp = std::max(e.comm.tp, r.comm.tp);
    e.comm.dp = std::max(e.comm.dp, r.comm.dp);
    e.comm.pp = std::max(e.comm.pp, r.comm.pp);
  }
  e.step_time_s = slowest->step_time_s;
  e.time = slowest->time;
  e.measurement.other_s = slowest->other_s;
  // Throughput as the cost model defines it (sim/cost_model.cpp): tokens and model FLOPs per
  // step over the step time; MFU against the plan's cluster peak for the training dtype.
  if (e.step_time_s > 0) {
    e.tokens_per_s = static_cast<double>(t.global_batch * t.seq) / e.step_time_s;
    const auto& gpu = plan.cluster.gpu;
    set_flop_rates(e, t.dtype == Dtype::bf16 ? gpu.peak_flops_bf16 : gpu.peak_flops_fp32);
  }
  e.fits = true;
  e.measurement.device = "cpu";
  return e;
}

constexpr int kTraceTag = 900;  // below the pipeline's p2p tags (>= 1000), above the collectives'

Status Trainer::write_trace(double step_time_s) {
  const std::string mine = measured_trace_events(rec_.events(), rank_, coords_).dump();
  Comm& raw = comm_.inner();
  if (!opt_.emulated && rank_ != 0) {
    int64_t n = static_cast<int64_t>(mine.size());
    for (auto [ptr, bytes, tag] : {std::tuple<const void*, int64_t, int>{&n, 8, kTraceTag},
                                   std::tuple<const void*, int64_t, int>{mine.data(), n, kTraceTag + 1}}) {
      auto r = raw.isend(0, ptr, bytes, tag, GroupKind::world);
      if (!r) return r.error();
      if (auto st = raw.wait(*r, "trace to rank 0"); !st) return st;
    }
    return ok_status();
  }
  nlohmann::json events = nlohmann::json::parse(mine);
  for (int r = 1; !opt_.emulated && r < comm_.world(); ++r) {
    int64_t n = 0;
    if (auto st = raw.recv(r, &n, 8, kTraceTag, "trace from a rank"); !st) return st;
    std::string text(static_cast<size_t>(n), '\0');
    if (auto st = raw.recv(r, text.data(), n, kTraceTag + 1, "trace from a rank"); !st) return st;
    for (auto& e : nlohmann::json::parse(text)) events.push_back(std::move(e));
  }
  const auto& p = plan_.parallel;
  nlohmann::json other = {{"generator", "loom execute"}, {"device", "cpu"}, {"step", opt_.steps},
                          {"step_time_s", step_time_s}, {"dp", p.dp}, {"tp", p.tp}, {"pp", p.pp}, {"vpp", p.vpp}};
  if (opt_.emulated) other["emulated_rank"] = rank_;
  const nlohmann::json doc = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}, {"otherData", other}};
  return write_text_file_atomic(opt_.trace_path, doc.dump() + "\n");
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
  std::vector<double> losses, times;
  std::vector<double> last(kFields, 0.0);
  for (int64_t step = start; step < opt_.steps; ++step) {
    if (step == opt_.die_at_step && rank_ == opt_.die_rank) std::raise(opt_.stall ? SIGSTOP : SIGKILL);
    if (step == opt_.nan_at_step && coords_.pp == pp_size_ - 1) {
      const Unit& u = units_.back();
      params_[zero_ >= 3 ? u.shard_offset : u.offset] = std::numeric_limits<float>::quiet_NaN();
    }
    // The traced step starts together on every rank, so their timelines share an origin.
    if (!opt_.trace_path.empty() && step + 1 == opt_.steps)
      if (auto st = comm_.barrier(); !st) return st.error();
    const auto t0 = Clock::now();
    rec_.start_step();
    comm_.reset_counters();
    flops_ = {};
    grad_bucket_ = 0;
    std::fill(grads_.vec().begin(), grads_.vec().end(), 0.0f);
    loss_local_ = 0;
    int64_t in_flight = 0;
    for (const Slot& s : slots) {
      auto st = s.phase == Phase::forward ? forward_slot(step, s.micro_batch, s.chunk)
                                          : backward_slot(step, s.micro_batch, s.chunk);
      if (!st) return st.error();
      in_flight = std::max(in_flight, static_cast<int64_t>(stash_.size()));
    }
    if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st.error();
    if (auto st = sp_sync(); !st) return st.error();
    if (auto st = dp_sync(); !st) return st.error();
    // Global gradient norm (each reduced gradient counted once) and the step's loss.
    double sums[2] = {coords_.pp == pp_size_ - 1 && tp_.index == 0 && coords_.dp >= 0 ? loss_local_ : 0.0, 0.0};
    for_each_owned([&](const TensorSlice& t, int64_t a, int64_t b, float* g, float*, float*, float*) {
      if ((t.replicated && tp_.index != 0) || (zero_ == 0 && dp_.index != 0)) return;
      for (int64_t i = a; i < b; ++i) sums[1] += static_cast<double>(g[i]) * g[i];
    });
    if (auto st = comm_.all_reduce(world_, sums, 2); !st) return st.error();
    const double loss = sums[0] / static_cast<double>(m_ * plan_.parallel.dp);
    if (!std::isfinite(loss) || !std::isfinite(sums[1])) {
      const bool mine = coords_.pp == pp_size_ - 1 && !std::isfinite(loss_local_);
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
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    losses.push_back(loss);
    const auto& cc = comm_.counters();
    for (int k = 0; k < 7; ++k) last[static_cast<size_t>(kMemory + k)] = static_cast<double>(ledger_.peak(static_cast<Mem>(k)));
    last[kFlops] = static_cast<double>(flops_.total_flops());
    for (int k = 0; k < 4; ++k) last[static_cast<size_t>(kCommBytes + k)] = static_cast<double>(cc.by_group[static_cast<size_t>(k)]);
    const MeasuredTimes mt = measured_times(rec_.events());
    last[kLastStep] = times.back();
    last[kForward] = mt.forward_s;
    last[kBackward] = mt.backward_s;
    last[kRecompute] = mt.recompute_s;
    last[kOptimizer] = mt.optimizer_s;
    last[kTp] = mt.tp_s;
    last[kTpGradSync] = mt.tp_grad_sync_s;
    last[kDp] = mt.dp_s;
    last[kPp] = mt.pp_s;
    last[kWorld] = mt.world_s;
    last[kParams] = static_cast<double>(total_);
    last[kInFlight] = static_cast<double>(in_flight);
  }
  for (double t : times) last[kMeanStep] += t / static_cast<double>(times.size());
  if (!opt_.trace_path.empty())
    if (auto st = write_trace(last[kLastStep]); !st) return st.error();
  if (!opt_.save_dir.empty())
    if (auto st = save(opt_.steps); !st) return st.error();
  if (!opt_.weights_out.empty())
    if (auto st = write_weights(); !st) return st.error();

  // Every rank's numbers to rank 0 (a sum over the world of one slot each). An emulated rank
  // reports only itself.
  const int W = comm_.world();
  std::vector<double> all(static_cast<size_t>(W * kFields), 0.0);
  std::copy(last.begin(), last.end(), all.begin() + rank_ * kFields);
  if (auto st = comm_.all_reduce(world_, all.data(), static_cast<int64_t>(all.size())); !st) return st.error();
  if (!opt_.emulated && rank_ != 0) return nlohmann::json::object();
  std::vector<int> reported;
  if (opt_.emulated) {
    reported.push_back(rank_);
  } else {
    for (int r = 0; r < W; ++r) reported.push_back(r);
  }
  std::vector<RankMeasurement> ranks;
  std::vector<StageEstimate> stages(static_cast<size_t>(plan_.parallel.pp));
  for (size_t i = 0; i < stages.size(); ++i) {  // null in the report unless a rank of it reported
    stages[i].index = static_cast<int64_t>(i);
    stages[i].reported = false;
  }
  for (int r : reported) {
    const std::vector<double> v(all.begin() + r * kFields, all.begin() + (r + 1) * kFields);
    const Coords c = grid_->coords(r);
    ranks.push_back(rank_row(v, r, c));
    if ((c.dp == 0 && c.tp == 0) || opt_.emulated)
      stages[static_cast<size_t>(c.pp)] = stage_row(v, ranks.back(), m_, plan_.model.layers / plan_.parallel.pp);
  }
  Estimate e = measured_estimate(plan_, ranks, W);
  e.stages = std::move(stages);
  Measurement& m = e.measurement;
  m.steps = static_cast<int64_t>(losses.size());
  m.step_times_s = times;
  m.ranks = std::move(ranks);
  // One rank alone: its own step with local copies for communication, its share of the FLOPs,
  // and no loss of the model (partial sums stand in for reductions); the writer leaves out the
  // job's throughput and names its FLOPs "rank".
  if (opt_.emulated) m.emulated_rank = rank_;
  else m.losses = losses;
  return estimate_to_json(e);
}

}  // namespace

Expected<nlohmann::json> execute_cpu(const Plan& plan, Comm& comm, const ExecOptions& options, Ending* ending) {
  if (ending) *ending = Ending::refused;  // the same plan on every rank: refused together
  if (auto st = check_cpu_plan(plan); !st) return st.error();
  Trainer t(plan, comm, options);
  auto out = t.run();
  if (ending) *ending = t.ending();
  return out;
}

}  // namespace loom::exec
