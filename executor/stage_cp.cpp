// Context parallelism in a layer (stage.hpp): the attention core of this rank's tokens as a ring
// over the cp group (cpu/ring_attention.hpp), its K and V blocks sent to the next cp rank and
// received from the previous one over MPI, or (CpComm::all_gather) every block all-gathered
// first and the K and V gradients reduce-scattered after; and RoPE at the tokens' global positions.
#include <algorithm>

#include "executor/cpu/ring_attention.hpp"
#include "executor/stage.hpp"
#include "executor/step_trace.hpp"

namespace loom::exec {

namespace {

// Tag of the ring's messages: apart from the collectives' (10..17), the bootstrap's (800..808),
// the trace's (900) and the pipeline's (>= 1000). Every cp rank of a ring runs the same layers in
// the same order, so FIFO matching per (peer, tag) pairs each hop with its block.
constexpr int kCpRingTag = 700;

cpu::CpSplit split(const Dims& d) { return {d.T * d.cp, d.cp, d.cp_rank}; }

cpu::RingShape shape(const Dims& d) { return {d.B, d.Hl, d.Hkvl, d.hd, split(d)}; }

// The two travelling blocks (comm_buffers) and the row statistics, in att_out: the workspace
// that holds selective recompute's discarded output, which a cp plan does not run (check_cpu_plan).
cpu::RingBuffers buffers(StageCtx& c) { return {c.s.ring_a.data(), c.s.ring_b.data(), c.s.att_out.data()}; }

// The hop's name in a measured trace (step_trace.hpp), as the simulator names it, so the time
// counts as context parallelism's, not the pipeline's.
void label_hop(StageCtx& c) {
  if (auto* traced = dynamic_cast<TracedComm*>(&c.comm)) traced->label(trace_names::kCpRing, trace_names::Stream::tp);
}

// One hop: send to the next rank of the cp group, receive from the previous one, both posted
// before either waits.
cpu::RingShift shift(StageCtx& c) {
  return [&c](const float* send, float* recv, int64_t n) -> Status {
    const Group& g = *c.cp;
    const int next = g.ranks[static_cast<size_t>((g.index + 1) % g.size())];
    const int prev = g.ranks[static_cast<size_t>((g.index + g.size() - 1) % g.size())];
    const int64_t bytes = n * static_cast<int64_t>(sizeof(float));
    label_hop(c);
    auto req = c.comm.isend(next, send, bytes, kCpRingTag, GroupKind::cp);
    if (!req) return req.error();
    label_hop(c);
    if (auto st = c.comm.recv(prev, recv, bytes, kCpRingTag, "cp ring receive"); !st) return st;
    return c.comm.wait(*req, "cp ring send");
  };
}

// CpComm::all_gather's collectives over the cp group: K and V gathered, dK and dV reduce-scattered.
cpu::RingCollective gather(StageCtx& c) {
  return [&c](float* data, int64_t n) { return c.comm.all_gather(*c.cp, data, n); };
}
cpu::RingCollective reduce_scatter(StageCtx& c) {
  return [&c](float* data, int64_t n) { return c.comm.reduce_scatter(*c.cp, data, n); };
}

}  // namespace

int64_t cp_position(const Dims& d, int64_t t) { return split(d).position(t); }

// The ring, or with CpComm::all_gather every K and V block gathered into ring_a first.
Status cp_attention_forward(StageCtx& c, LayerStash& st) {
  const Dims& d = c.d;
  if (d.cp_all_gather)
    return cpu::gathered_attention_forward(st.atty.data(), st.lse.data(), st.q.data(), st.k.data(), st.v.data(),
                                           shape(d), c.s.ring_a.data(), c.s.att_out.data(), gather(c), c.flops);
  return cpu::ring_attention_forward(st.atty.data(), st.lse.data(), st.q.data(), st.k.data(), st.v.data(), shape(d),
                                     buffers(c), shift(c), c.flops);
}

// s.dq, s.dk, s.dv (zeroed by the caller) from s.d_atty, the stashed output and log-sum-exp; with
// CpComm::all_gather, K and V gathered into ring_a again and every block's dK, dV in ring_b.
Status cp_attention_backward(StageCtx& c, LayerStash& st) {
  const Dims& d = c.d;
  Scratch& s = c.s;
  if (d.cp_all_gather)
    return cpu::gathered_attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.d_atty.data(), st.atty.data(),
                                            st.lse.data(), st.q.data(), st.k.data(), st.v.data(), shape(d),
                                            s.ring_a.data(), s.ring_b.data(), s.att_out.data(), gather(c),
                                            reduce_scatter(c), c.flops);
  return cpu::ring_attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.d_atty.data(), st.atty.data(),
                                      st.lse.data(), st.q.data(), st.k.data(), st.v.data(), shape(d), buffers(c),
                                      shift(c), c.flops);
}

void cp_rope(const StageCtx& c, LayerStash& st) {
  const Dims& d = c.d;
  cpu::cp_rope_forward(st.q.data(), st.q.data(), d.B, split(d), d.Hl, d.hd, d.rope_theta);
  cpu::cp_rope_forward(st.k.data(), st.k.data(), d.B, split(d), d.Hkvl, d.hd, d.rope_theta);
}

void cp_rope_grad(StageCtx& c) {
  const Dims& d = c.d;
  Scratch& s = c.s;
  std::fill(s.dq0.vec().begin(), s.dq0.vec().end(), 0.0f);
  std::fill(s.dk0.vec().begin(), s.dk0.vec().end(), 0.0f);
  cpu::cp_rope_backward(s.dq0.data(), s.dq.data(), d.B, split(d), d.Hl, d.hd, d.rope_theta);
  cpu::cp_rope_backward(s.dk0.data(), s.dk.data(), d.B, split(d), d.Hkvl, d.hd, d.rope_theta);
}

}  // namespace loom::exec
