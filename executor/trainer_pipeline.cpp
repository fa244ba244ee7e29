// Pipeline slots (sim/schedule.hpp's tables): one micro-batch's forward or backward through one
// model chunk of this stage, with the activation (forward) or its gradient (backward) received
// from and sent to the neighbouring stages. Under zb-h1 the backward is split: its B slot
// computes the input gradient (and the gradients of norms, biases, embedding and head) and
// keeps the chunk's stash, which its W slot reads for the layers' GEMM weight gradients and
// then frees. Under zb-v (two chunks per rank as a V) the last stage's chunk 0 feeds its own
// chunk 1, and chunk 1's input gradient goes back to chunk 0, without a message: see receive.
#include <string>

#include "executor/cpu/synthetic_data.hpp"
#include "executor/trainer_impl.hpp"

namespace loom::exec {

namespace tn = trace_names;

namespace {

int p2p_tag(int64_t mb, int64_t model_chunk, int64_t chunks, int phase) {
  return 1000 + static_cast<int>((mb * chunks + model_chunk) * 2 + phase);
}

}  // namespace

// Data-parallel rank r takes sequences [r m b, (r+1) m b) of the step's global batch, in
// micro-batches of b: every plan trains on the same sequences.
void Trainer::tokens_for(int64_t step, int64_t mb, Tokens& in, Tokens& tg) const {
  const int64_t b = plan_.parallel.micro_batch;
  cpu::SyntheticStream s{plan_.model.vocab, opt_.seed, 61};
  in.resize(static_cast<size_t>(d_.N * d_.cp));
  tg.resize(static_cast<size_t>(d_.N * d_.cp));
  const int64_t first = step * plan_.train.global_batch + coords_.dp * m_ * b + mb * b;
  cpu::synthetic_batch(in.data(), tg.data(), s, first, b, d_.T * d_.cp);
  keep_cp_tokens(in);  // cp > 1: this rank's chunks of each sequence (trainer_cp.cpp)
  keep_cp_tokens(tg);
}

// The stash of (mb, chunk) for its backward: each layer's input, each layer's state (none for a
// layer recomputed in full) and, on the last model chunk, the head's.
Expected<ChunkStash*> Trainer::open_stash(int mb, int chunk) {
  const Recompute rc = plan_.parallel.recompute;
  const bool last = vstage(chunk) == pp_size_ * vpp_ - 1;
  ChunkStash& cs = stash_[{mb, chunk}];
  for (int64_t i = 0; i < layers_in(chunk); ++i) {
    auto x = compute_->alloc(Mem::activations, d_.Ns * d_.C);
    if (!x) return x.error();
    cs.xs.push_back(std::move(*x));
    if (recomputes(chunk, i)) {
      cs.layers.emplace_back();
      continue;
    }
    auto st = compute_->layer_state(rc == Recompute::selective ? StashKind::no_attention_core : StashKind::full);
    if (!st) return st.error();
    cs.layers.push_back(std::move(*st));
  }
  if (last) {
    auto h = compute_->head_state();
    if (!h) return h.error();
    cs.head = std::move(*h);
  }
  if (layers_in(chunk) == 0 && !last) return make_error("parallel.pp", "a pipeline chunk without layers");
  return &cs;
}

// Pipeline sends that block their sender (ParallelConfig::pp_overlapped() false: Megatron-core's
// non-interleaved 1F1B, DeepSpeed's pipeline engine, which the simulator plays on the sender's
// compute stream): the slot after a send computes only once the send is through. It waits once
// its own receive is in, as Megatron-LM pairs them (p2p_communication.py
// send_forward_recv_backward and the like: one batch of isend and irecv, then a wait on both);
// waiting right after the isend could leave two neighbours that send to each other each waiting
// for the other to post its receive. Overlapped sends are waited for only before their buffer is
// written again.
Status Trainer::finish_blocking_send() {
  if (plan_.parallel.pp_overlapped()) return ok_status();
  return comm_.wait(send_req_, "pipeline send");
}

// The activation (forward) or its gradient (backward) of (mb, chunk) from the stage before
// (after), into `dst`; then the previous send, where sends block (finish_blocking_send). zb-v's
// turn of the V on the last stage stays on the rank: chunk 0's forward left its output in
// recv_buf_, and chunk 1's backward its input gradient in dres_, the
// backward's `dst`. Neither is written over before it is read: zb_v_rank's last table runs no
// receiving slot (chunk 0's F, chunk 1's B) between a chunk-0 F and its chunk-1 F, and a
// chunk-1 B's next B is its chunk-0 B (tests/test_simulator.cpp pins both).
Status Trainer::receive(int mb, int chunk, Phase phase, float* dst) {
  const int64_t stage = coords_.pp, chunks = pp_size_ * vpp_, mc = vstage(chunk);
  const bool fwd = phase == Phase::forward;
  const StageChunk src = slot_source(plan_.parallel.schedule, stage, chunk, phase, pp_size_, vpp_);
  if (src.stage == stage) {
    if (auto st = finish_blocking_send(); !st) return st;
    return fwd ? compute_->copy(dst, recv_buf_.data(), d_.Ns * d_.C) : ok_status();
  }
  const int from = pp_.ranks[static_cast<size_t>(src.stage)];
  comm_.label(tn::pp_recv(fwd, mb), tn::pp_recv_stream(fwd));
  if (auto st = comm_.recv(from, recv_buf_.data(), recv_buf_.bytes(), p2p_tag(mb, mc, chunks, fwd ? 0 : 1),
                           fwd ? "pipeline forward receive" : "pipeline backward receive");
      !st)
    return st;
  if (auto st = finish_blocking_send(); !st) return st;
  return compute_->copy(dst, recv_buf_.data(), d_.Ns * d_.C);
}

// Sends `src` (copied into the send buffer once the previous send is done, unless it is the
// send buffer already) to the stage that runs (mb, chunk)'s next slot; on zb-v's turn of the V
// it keeps it on the rank instead (receive): the activation in recv_buf_, the gradient in dres_.
Status Trainer::send_from(const float* src, int mb, int chunk, Phase phase) {
  const int64_t stage = coords_.pp, chunks = pp_size_ * vpp_;
  const bool fwd = phase == Phase::forward;
  const Schedule sched = plan_.parallel.schedule;
  const StageChunk dst = slot_destination(sched, stage, chunk, phase, pp_size_, vpp_);
  if (dst.stage == stage) {
    float* keep = fwd ? recv_buf_.data() : dres_.data();
    return src == keep ? ok_status() : compute_->copy(keep, src, d_.Ns * d_.C);
  }
  if (src != send_buf_.data()) {
    if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st;
    if (auto st = compute_->copy(send_buf_.data(), src, d_.Ns * d_.C); !st) return st;
  }
  const int to = pp_.ranks[static_cast<size_t>(dst.stage)];
  comm_.label(tn::pp_send(fwd, mb), tn::Stream::pp);
  const int tag = p2p_tag(mb, virtual_stage(sched, dst.stage, dst.chunk, pp_size_), chunks, fwd ? 0 : 1);
  auto r = comm_.isend(to, send_buf_.data(), send_buf_.bytes(), tag, GroupKind::pp);
  if (!r) return r.error();
  send_req_ = *r;
  return ok_status();
}

// The chunk's layers: each writes the next layer's input, the head's input (last chunk) or the
// send buffer (once the previous send is done).
Status Trainer::forward_layers(ChunkStash& cs, const std::vector<int>& ids, size_t& ui, int mb, int chunk, bool last) {
  const std::string gather = tn::dp_gather(true, mb, chunk);
  for (int64_t i = 0; i < layers_in(chunk); ++i) {
    const Unit& u = unit(ids[ui++]);
    float* out;
    if (i + 1 < layers_in(chunk)) {
      out = cs.xs[static_cast<size_t>(i + 1)].data();
    } else if (last) {
      out = compute_->head_input(*cs.head);
    } else {
      if (auto st = comm_.wait(send_req_, "pipeline send"); !st) return st;
      out = send_buf_.data();
    }
    auto P = acquire(u, gather);
    if (!P) return P.error();
    const float* x = cs.xs[static_cast<size_t>(i)].data();
    if (recomputes(chunk, i)) {  // the layer's state lives only for this call
      auto tmp = compute_->layer_state(StashKind::full);
      if (!tmp) return tmp.error();
      if (auto st = compute_->layer_forward(*P, u.o, x, **tmp, out); !st) return st;
    } else if (auto st = compute_->layer_forward(*P, u.o, x, *cs.layers[static_cast<size_t>(i)], out); !st) {
      return st;
    }
  }
  return ok_status();
}

Status Trainer::forward_head(ChunkStash& cs, const Unit& u, const Tokens& targets, int mb, int chunk) {
  auto P = acquire(u, tn::dp_gather(true, mb, chunk));
  if (!P) return P.error();
  const float* head = u.o.head >= 0 ? *P + u.o.head : tied_head();
  auto loss = compute_->head_forward(*P, u.o, head, compute_->head_input(*cs.head), targets.data(), *cs.head);
  if (!loss) return loss.error();
  if (tp_.index == 0) loss_local_ += *loss / static_cast<double>(d_.N * d_.cp);  // the mean over every cp rank's tokens
  return ok_status();
}

Status Trainer::forward_slot(int64_t step, int mb, int chunk) {
  const int64_t chunks = pp_size_ * vpp_, mc = vstage(chunk);
  const bool first = mc == 0, last = mc == chunks - 1;
  auto cs = open_stash(mb, chunk);
  if (!cs) return cs.error();
  Tokens tokens, targets;
  tokens_for(step, mb, tokens, targets);
  const auto& ids = chunk_units(chunk);
  size_t ui = 0;
  float* x0 = layers_in(chunk) > 0 ? (*cs)->xs[0].data() : compute_->head_input(*(*cs)->head);
  // The input first (a blocking send before waits after it), then the slot's compute.
  if (auto st = first ? finish_blocking_send() : receive(mb, chunk, Phase::forward, x0); !st) return st;
  rec_.compute_begin(tn::forward(mb, chunk), mb, chunk);
  if (first) {
    const Unit& u = unit(ids[ui++]);
    auto P = acquire(u, tn::dp_gather(true, mb, chunk));
    if (!P) return P.error();
    if (auto st = compute_->embed_forward(*P, u.o, tokens.data(), x0); !st) return st;
  }
  if (auto st = forward_layers(**cs, ids, ui, mb, chunk, last); !st) return st;
  if (last) {
    if (auto st = forward_head(**cs, unit(ids[ui++]), targets, mb, chunk); !st) return st;
  } else if (auto st = send_from(layers_in(chunk) == 0 ? x0 : send_buf_.data(), mb, chunk, Phase::forward); !st) {
    return st;
  }
  rec_.compute_end();
  return ok_status();
}

// The loss's gradient through the head into d (Ns, C); the head's gradients released.
Status Trainer::backward_head(ChunkStash& cs, const Unit& u, const Tokens& targets, int mb, int chunk, float* d) {
  auto P = acquire(u, tn::dp_gather(false, mb, chunk));
  if (!P) return P.error();
  auto G = grads_for(u);
  if (!G) return G.error();
  const float* head = u.o.head >= 0 ? *P + u.o.head : tied_head();
  float* head_g = u.o.head >= 0 ? *G + u.o.head : tied_head_grad();
  const double scale = 1.0 / static_cast<double>(d_.N * d_.cp * m_ * plan_.parallel.dp);
  if (auto st = compute_->head_backward(*P, *G, u.o, head, head_g, targets.data(), *cs.head, scale, d); !st) return st;
  return release_grads(u);
}

// Layer i's backward (full recompute: its forward again first, from its stashed input); split,
// only its input gradient (B), the operands of its weight gradients kept in the stash.
Status Trainer::backward_layer(ChunkStash& cs, const Unit& u, int64_t i, int mb, int chunk, float* d) {
  const Recompute rc = plan_.parallel.recompute;
  auto P = acquire(u, tn::dp_gather(false, mb, chunk));
  if (!P) return P.error();
  auto G = grads_for(u);
  if (!G) return G.error();
  float* x = cs.xs[static_cast<size_t>(i)].data();
  if (splits_backward(plan_.parallel.schedule)) {  // check_cpu_plan: no full recompute
    auto& st = *cs.layers[static_cast<size_t>(i)];
    if (auto s = compute_->layer_backward_input(*P, *G, u.o, x, st, d, rc == Recompute::selective); !s) return s;
  } else if (recomputes(chunk, i)) {
    auto tmp = compute_->layer_state(StashKind::full);
    if (!tmp) return tmp.error();
    rec_.compute_begin(tn::recompute(mb, chunk), mb, chunk);
    if (auto st = compute_->layer_forward(*P, u.o, x, **tmp, rec_out_.data()); !st) return st;
    rec_.compute_begin(tn::backward(mb, chunk), mb, chunk);
    if (auto st = compute_->layer_backward(*P, *G, u.o, x, **tmp, d, false); !st) return st;
  } else {
    auto& st = *cs.layers[static_cast<size_t>(i)];
    if (auto s = compute_->layer_backward(*P, *G, u.o, x, st, d, rc == Recompute::selective); !s) return s;
  }
  return release_grads(u);
}

Status Trainer::backward_embed(const Unit& u, const Tokens& tokens, int mb, int chunk, const float* d) {
  auto P = acquire(u, tn::dp_gather(false, mb, chunk));  // FSDP gathers every unit in backward too (its traffic is counted)
  if (!P) return P.error();
  auto G = grads_for(u);
  if (!G) return G.error();
  if (auto st = compute_->embed_backward(*G, u.o, tokens.data(), d); !st) return st;
  return release_grads(u);
}

Status Trainer::backward_slot(int64_t step, int mb, int chunk) {
  const int64_t chunks = pp_size_ * vpp_, mc = vstage(chunk);
  const bool first = mc == 0, last = mc == chunks - 1;
  auto it = stash_.find({mb, chunk});
  if (it == stash_.end()) return make_error("rank " + std::to_string(rank_), "backward before forward (schedule)");
  ChunkStash& cs = it->second;
  Tokens tokens, targets;
  tokens_for(step, mb, tokens, targets);
  const auto& ids = chunk_units(chunk);
  int ui = static_cast<int>(ids.size()) - 1;
  float* d = dres_.data();
  // The gradient first (a blocking send before waits after it), then the slot's compute.
  if (auto st = last ? finish_blocking_send() : receive(mb, chunk, Phase::backward, d); !st) return st;
  rec_.compute_begin(tn::backward(mb, chunk), mb, chunk);
  if (last) {
    if (auto st = backward_head(cs, unit(ids[static_cast<size_t>(ui--)]), targets, mb, chunk, d); !st) return st;
  }
  for (int64_t i = layers_in(chunk) - 1; i >= 0; --i)
    if (auto st = backward_layer(cs, unit(ids[static_cast<size_t>(ui--)]), i, mb, chunk, d); !st) return st;
  if (first) {
    if (auto st = backward_embed(unit(ids[static_cast<size_t>(ui--)]), tokens, mb, chunk, d); !st) return st;
  } else if (auto st = send_from(d, mb, chunk, Phase::backward); !st) {
    return st;
  }
  rec_.compute_end();
  if (splits_backward(plan_.parallel.schedule)) cs.head.reset();  // the head's gradients are done
  else stash_.erase(it);
  return ok_status();
}

// zb-h1's W: the chunk's layers' GEMM weight gradients from what B kept, added in the order
// the schedule runs the W's (micro-batch order, as 1F1B's backwards add them); then the stash
// is freed.
Status Trainer::weight_slot(int mb, int chunk) {
  auto it = stash_.find({mb, chunk});
  if (it == stash_.end()) return make_error("rank " + std::to_string(rank_), "weight slot before backward (schedule)");
  ChunkStash& cs = it->second;
  const auto& ids = chunk_units(chunk);
  const bool first = vstage(chunk) == 0;
  if (auto st = finish_blocking_send(); !st) return st;  // a W receives nothing
  rec_.compute_begin(tn::weight(mb, chunk), mb, chunk);
  for (int64_t i = 0; i < layers_in(chunk); ++i) {
    const Unit& u = unit(ids[static_cast<size_t>(i + (first ? 1 : 0))]);
    auto G = grads_for(u);
    if (!G) return G.error();
    const float* x = cs.xs[static_cast<size_t>(i)].data();
    if (auto st = compute_->layer_backward_weight(*G, u.o, x, *cs.layers[static_cast<size_t>(i)]); !st) return st;
    if (auto st = release_grads(u); !st) return st;
  }
  rec_.compute_end();
  stash_.erase(it);
  return ok_status();
}

}  // namespace loom::exec
