#include "sim/tp_overlap.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "sim/op_timer.hpp"
#include "sim/schedule.hpp"

namespace loom {

namespace {

// What each overlapped collective does beside the layer GEMM whose slot it is (Op::tp_slot, set
// where the GEMMs are made), as Transformer Engine pairs them (its userbuffers names in
// brackets). Forward (and a full recompute's forward): the all-gathers before QKV [qkv_fprop]
// and fc1 [fc1_fprop] by ring exchange, the reduce-scatters after the projection [proj_fprop]
// and fc2 [fc2_fprop] by the SM-driven pipeline method. Backward: the gathers of the output
// gradient before the projection's [proj_dgrad] and fc2's [fc2_dgrad] data gradient by ring
// exchange; QKV's and fc1's backward carry two halves each, the input gathered again for the
// weight gradient and the data gradient reduce-scattered, by the SM-driven bulk method
// [qkv_dgrad, qkv_wgrad, fc1_dgrad, fc1_wgrad].
struct Pairing {
  int64_t halves;     // tp halves (b s h each) per layer beside this GEMM
  bool takes_sms;     // its collective runs on SMs the GEMM then does not have
  bool bulk;          // the whole collective beside the whole GEMM; else pipelined in tp chunks
};
// By slot (qkv, proj, fc1, fc2), then forward and backward.
constexpr Pairing kPairings[4][2] = {
    {{1, false, false}, {2, true, true}},   // qkv: all-gather; backward bulk reduce-scatter + all-gather
    {{1, true, false}, {1, false, false}},  // proj: reduce-scatter; backward all-gather
    {{1, false, false}, {2, true, true}},   // fc1: as qkv
    {{1, true, false}, {1, false, false}},  // fc2: as proj
};

const Pairing* pairing_of(const Op& o) {
  if (o.pass == Pass::step || (o.kind != OpKind::gemm && o.kind != OpKind::gemm_bwd)) return nullptr;
  if (o.tp_slot == TpOverlapSlot::none) return nullptr;
  const size_t slot = static_cast<size_t>(o.tp_slot) - 1;
  return &kPairings[slot][o.pass == Pass::backward ? 1 : 0];
}

}  // namespace

int64_t gpu_sm_count(const GpuSpec& gpu) { return gpu.sm_count; }

void chunk_overlapped_gemms(std::vector<Op>& ops, const GpuSpec& gpu, int64_t tp) {
  const double sms = static_cast<double>(gpu_sm_count(gpu));
  const double slowdown = sms / (sms - static_cast<double>(kTpOverlapCommSms));
  for (Op& o : ops) {
    const Pairing* x = pairing_of(o);
    if (x == nullptr) continue;
    if (x->takes_sms) o.scale *= slowdown;
    if (o.pass == Pass::backward) continue;  // whole GEMMs (tp_overlap.hpp)
    // T = b s rows; sequence parallelism makes tp divide s, so the chunks are whole rows and
    // each chunk's FLOPs are exactly 1/tp of the GEMM's.
    o.m /= static_cast<double>(tp);
    o.flops /= tp;
    o.count *= tp;
  }
}

bool tp_backward_beside_gemms(const TrainSpec& t, const ParallelConfig& p) {
  return t.tp_backward_overlap && p.tp > 1 && !p.tp_comm_overlap && !(splits_backward(p.schedule) && p.pp > 1);
}

double tp_backward_hidden_s(const StageWork& w, const GroupLinks& tp, const OpTimer& op, bool sp) {
  double half_s = 0;
  for (const Message& msg : w.messages)
    if (msg.group == Group::tp && msg.pass == Pass::backward && std::strcmp(msg.name, "tp activations") == 0)
      half_s = message_time_s(msg, tp);
  if (tp.size <= 1 || half_s <= 0) return 0;
  double hidden = 0;
  for (const Op& o : w.ops) {
    if (o.pass != Pass::backward || o.kind != OpKind::gemm_bwd || o.count == 0) continue;
    if (o.tp_slot != TpOverlapSlot::qkv && o.tp_slot != TpOverlapSlot::fc1) continue;
    const double wgrad = o.scale * op.wgrad(o), dgrad = op.op(o) - wgrad;
    const double per_layer = sp ? std::min(half_s, dgrad) + std::min(half_s, wgrad) : std::min(2 * half_s, wgrad);
    hidden += static_cast<double>(o.count) * per_layer;
  }
  return hidden;
}

TpHiddenTime tp_overlap_hidden_s(const StageWork& w, const GroupLinks& tp, const OpTimer& op) {
  TpHiddenTime out;
  double half_s[3] = {0, 0, 0};  // one half's time, by pass (forward, backward, recompute)
  for (const Message& msg : w.messages)
    if (msg.group == Group::tp && std::strcmp(msg.name, kTpOverlappedMessage) == 0 && msg.count > 0)
      half_s[static_cast<int>(msg.pass)] = message_time_s(msg, tp);
  const double t = static_cast<double>(tp.size);
  if (t <= 1) return out;
  for (const Op& o : w.ops) {
    const Pairing* x = pairing_of(o);
    if (x == nullptr || o.count == 0) continue;
    const int pass = static_cast<int>(o.pass);
    // Forward GEMMs are counted in tp chunks (chunk_overlapped_gemms), backward ones whole.
    const double chunks = o.pass == Pass::backward ? 1 : t;
    const double layers = static_cast<double>(o.count) / chunks;
    // Beside a backward pipeline (the projection's and fc2's output-gradient gathers) runs the
    // data gradient only; a bulk collective beside the whole GEMM.
    const double whole_s = chunks * op.op(o);
    const double gemm_s = o.pass == Pass::backward && !x->bulk && o.kind == OpKind::gemm_bwd ? whole_s - o.scale * op.wgrad(o) : whole_s;
    const double comm_s = static_cast<double>(x->halves) * half_s[pass];
    // A pipeline leaves its first (or last) chunk's transfer exposed; the bulk method none.
    const double exposed = x->bulk ? 0 : 1 / t;
    const double hidden = layers * (1 - exposed) * std::min(comm_s, gemm_s);
    (o.pass == Pass::forward ? out.forward_s : o.pass == Pass::backward ? out.backward_s : out.recompute_s) += hidden;
  }
  return out;
}

}  // namespace loom
