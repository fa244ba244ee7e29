#include "sim/schedule.hpp"

#include <algorithm>
#include <string>

namespace loom {

int64_t warmup_slots(Schedule s, int64_t pp, int64_t vpp, int64_t rank, int64_t m) {
  switch (s) {
    case Schedule::gpipe: return m * vpp;
    case Schedule::one_f_one_b:
    case Schedule::zb_h1: return std::min(pp - rank - 1, m);
    case Schedule::interleaved: return std::min((pp - rank - 1) * 2 + (vpp - 1) * pp, m * vpp);
    // zb_v_rank: 2(pp - r) - 1 chunk-0 forwards, r pairs, then a chunk-1 F before the first
    // B; with fewer micro-batches the missing ones' slots are dropped. Every forward the rank
    // holds at its peak (in_flight_chunks) runs before its first B: min(2m, m + 1 + r, 2pp).
    case Schedule::zb_v: return std::min({2 * m, m + 1 + rank, 2 * pp});
  }
  return m * vpp;
}

// Megatron-core's schedule table: micro-batches in groups of pp; within a group every chunk
// runs the group's micro-batches before the next chunk starts (the last group takes the
// rest). Backward visits the chunks in reverse. With m a multiple of pp (which Megatron-LM
// and validate_config require) this is get_model_chunk_id and
// get_microbatch_id_in_model_chunk: chunk = (k mod pp v) / pp, micro-batch = (k / pp v) pp + k mod pp.
Slot interleaved_slot(int64_t k, int64_t pp, int64_t vpp, int64_t m, Phase phase) {
  const int64_t group_start = (k / (pp * vpp)) * pp;
  const int64_t group = std::min(pp, m - group_start);  // the last group may be short
  const int64_t in_group = k - group_start * vpp;
  int64_t chunk = in_group / group;
  const int64_t mb = group_start + in_group % group;
  if (phase == Phase::backward) chunk = vpp - 1 - chunk;
  return {static_cast<int32_t>(mb), static_cast<int32_t>(chunk), phase};
}

namespace {

Slot slot_of(Schedule s, int64_t k, int64_t pp, int64_t vpp, int64_t m, Phase phase) {
  if (s == Schedule::interleaved) return interleaved_slot(k, pp, vpp, m, phase);
  return {static_cast<int32_t>(k % m), static_cast<int32_t>(k / m), phase};  // vpp = 1: chunk 0
}

std::vector<Slot> gpipe_rank(int64_t vpp, int64_t m) {
  std::vector<Slot> out;
  out.reserve(2 * m * vpp);
  for (int64_t c = 0; c < vpp; ++c)
    for (int64_t b = 0; b < m; ++b) out.push_back({static_cast<int32_t>(b), static_cast<int32_t>(c), Phase::forward});
  for (int64_t c = vpp - 1; c >= 0; --c)
    for (int64_t b = 0; b < m; ++b) out.push_back({static_cast<int32_t>(b), static_cast<int32_t>(c), Phase::backward});
  return out;
}

// Warm-up forwards, steady one-forward-one-backward, cool-down backwards.
std::vector<Slot> one_f_one_b_rank(Schedule s, int64_t pp, int64_t vpp, int64_t rank, int64_t m) {
  const int64_t total = m * vpp;
  const int64_t warmup = warmup_slots(s, pp, vpp, rank, m);
  std::vector<Slot> out;
  out.reserve(2 * total);
  for (int64_t k = 0; k < warmup; ++k) out.push_back(slot_of(s, k, pp, vpp, m, Phase::forward));
  for (int64_t k = 0; k < total - warmup; ++k) {
    out.push_back(slot_of(s, k + warmup, pp, vpp, m, Phase::forward));
    out.push_back(slot_of(s, k, pp, vpp, m, Phase::backward));
  }
  for (int64_t k = std::max<int64_t>(0, total - warmup); k < total; ++k)
    out.push_back(slot_of(s, k, pp, vpp, m, Phase::backward));
  return out;
}

// ZB-H1 (schedule.hpp): warm-up forwards; `rank` F, B pairs whose W waits; F, B, W triples
// while forwards remain; B, W pairs; the waiting W's. W's in micro-batch order (a queue).
std::vector<Slot> zb_h1_rank(int64_t pp, int64_t rank, int64_t m) {
  std::vector<Slot> out;
  out.reserve(3 * m);
  int32_t f = 0, b = 0, w = 0;
  auto add = [&](int32_t& next, Phase ph) { out.push_back({next++, 0, ph}); };
  for (int64_t k = 0; k < warmup_slots(Schedule::zb_h1, pp, 1, rank, m); ++k) add(f, Phase::forward);
  for (int64_t k = 0; k < rank && f < m; ++k) add(f, Phase::forward), add(b, Phase::backward);
  while (f < m) add(f, Phase::forward), add(b, Phase::backward), add(w, Phase::weight);
  while (b < m) add(b, Phase::backward), add(w, Phase::weight);
  while (w < m) add(w, Phase::weight);
  return out;
}

}  // namespace

std::vector<Slot> schedule_rank(Schedule s, int64_t pp, int64_t vpp, int64_t r, int64_t m) {
  return s == Schedule::gpipe   ? gpipe_rank(vpp, m)
         : s == Schedule::zb_h1 ? zb_h1_rank(pp, r, m)
         : s == Schedule::zb_v  ? zb_v_rank(pp, r, m)
                                : one_f_one_b_rank(s, pp, vpp, r, m);
}

std::vector<std::vector<Slot>> make_schedule(Schedule s, int64_t pp, int64_t vpp, int64_t m) {
  std::vector<std::vector<Slot>> out(pp);
  for (int64_t r = 0; r < pp; ++r) out[r] = schedule_rank(s, pp, vpp, r, m);
  return out;
}

int64_t peak_in_flight(const std::vector<Slot>& slots) {
  const bool split = std::any_of(slots.begin(), slots.end(), [](const Slot& x) { return x.phase == Phase::weight; });
  const Phase frees = split ? Phase::weight : Phase::backward;
  int64_t now = 0, peak = 0;
  for (const Slot& x : slots) {
    now += x.phase == Phase::forward ? 1 : x.phase == frees ? -1 : 0;
    peak = std::max(peak, now);
  }
  return peak;
}

std::vector<Slot> zb_v_rank(int64_t pp, int64_t rank, int64_t m) {
  const int64_t padded = std::max(2 * pp - 1, m);  // PyTorch's n_micro
  std::vector<Slot> out;
  out.reserve(6 * m);
  int32_t f[2] = {0, 0}, b[2] = {0, 0}, w[2] = {0, 0};
  auto add = [&](int32_t c, Phase ph) {
    int32_t& k = ph == Phase::forward ? f[c] : ph == Phase::backward ? b[c] : w[c];
    if (k < m) out.push_back({k, c, ph});
    ++k;
  };
  auto triple = [&](int32_t c) { add(c, Phase::forward), add(c, Phase::backward), add(c, Phase::weight); };
  for (int64_t k = 0; k < 2 * (pp - rank) - 1; ++k) add(0, Phase::forward);
  for (int64_t k = 0; k < rank; ++k) add(1, Phase::forward), add(0, Phase::forward);
  for (int64_t k = 0; k < pp - rank; ++k) triple(1);
  while (f[1] < f[0] || f[0] < padded) {
    if (f[0] < padded) add(0, Phase::forward);
    add(0, Phase::backward), add(0, Phase::weight);
    triple(1);
  }
  for (int64_t k = 0; k < rank; ++k) add(0, Phase::backward), add(1, Phase::backward);
  for (int64_t k = 0; k < pp - rank; ++k) add(0, Phase::backward), add(0, Phase::weight);
  while (w[1] < b[1]) add(1, Phase::weight);
  while (w[0] < b[0]) add(0, Phase::weight);
  return out;
}

StageChunk slot_destination(int64_t s, int64_t c, Phase ph, int64_t pp, int64_t vpp) {
  if (ph == Phase::weight) return {};
  const int64_t virtual_stage = c * pp + s + (ph == Phase::forward ? 1 : -1);
  if (virtual_stage < 0 || virtual_stage >= pp * vpp) return {};
  return {static_cast<int32_t>(virtual_stage % pp), static_cast<int32_t>(virtual_stage / pp)};
}

StageChunk slot_source(int64_t s, int64_t c, Phase ph, int64_t pp, int64_t vpp) {
  // The input of a forward comes from the previous virtual stage's forward, of a backward
  // from the next one's backward: the destination of the opposite direction. A weight slot
  // reads what its own backward left.
  if (ph == Phase::weight) return {};
  return slot_destination(s, c, ph == Phase::forward ? Phase::backward : Phase::forward, pp, vpp);
}

int64_t virtual_stage(Schedule s, int64_t stage, int64_t chunk, int64_t pp) {
  return s == Schedule::zb_v ? zb_v_virtual_stage(stage, chunk, pp) : chunk * pp + stage;
}

StageChunk stage_chunk(Schedule s, int64_t vs, int64_t pp) {
  if (s == Schedule::zb_v)
    return vs < pp ? StageChunk{static_cast<int32_t>(vs), 0} : StageChunk{static_cast<int32_t>(2 * pp - 1 - vs), 1};
  return {static_cast<int32_t>(vs % pp), static_cast<int32_t>(vs / pp)};
}

StageChunk slot_destination(Schedule s, int64_t stage, int64_t c, Phase ph, int64_t pp, int64_t vpp) {
  if (s != Schedule::zb_v) return slot_destination(stage, c, ph, pp, vpp);
  if (ph == Phase::weight) return {};
  const int64_t vs = virtual_stage(s, stage, c, pp) + (ph == Phase::forward ? 1 : -1);
  if (vs < 0 || vs >= 2 * pp) return {};
  return stage_chunk(s, vs, pp);
}

StageChunk slot_source(Schedule s, int64_t stage, int64_t c, Phase ph, int64_t pp, int64_t vpp) {
  if (ph == Phase::weight) return {};
  return slot_destination(s, stage, c, ph == Phase::forward ? Phase::backward : Phase::forward, pp, vpp);
}

Expected<TableProgram> compile_tables(const std::vector<std::vector<Slot>>& tables, Schedule s, int64_t vpp,
                                      int64_t m) {
  const int64_t pp = static_cast<int64_t>(tables.size()), chunks = pp * vpp;
  // The step that ran (phase, virtual stage, micro-batch); -1: not run yet.
  std::vector<int32_t> ran(static_cast<size_t>(3 * chunks * m), -1);
  auto at = [&](Phase ph, int64_t vs, int64_t mb) -> int32_t& {
    return ran[static_cast<size_t>((static_cast<int64_t>(ph) * chunks + vs) * m + mb)];
  };
  TableProgram out;
  out.ranks = pp;
  std::vector<size_t> next(static_cast<size_t>(pp), 0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int64_t r = 0; r < pp; ++r) {
      const auto& t = tables[static_cast<size_t>(r)];
      for (size_t& k = next[static_cast<size_t>(r)]; k < t.size(); ++k, moved = true) {
        const Slot& x = t[k];
        const int64_t vs = virtual_stage(s, r, x.chunk, pp);
        const StageChunk src = slot_source(s, r, x.chunk, x.phase, pp, vpp);
        int32_t input = -1;  // a forward of the model's first chunk waits for nothing
        if (x.phase == Phase::weight) input = at(Phase::backward, vs, x.micro_batch);
        else if (src.stage >= 0) input = at(x.phase, virtual_stage(s, src.stage, src.chunk, pp), x.micro_batch);
        else if (x.phase == Phase::backward) input = at(Phase::forward, vs, x.micro_batch);
        const bool waits = x.phase == Phase::weight || src.stage >= 0 || x.phase == Phase::backward;
        if (waits && input < 0) break;
        at(x.phase, vs, x.micro_batch) = static_cast<int32_t>(out.steps.size());
        out.steps.push_back({static_cast<int32_t>(r), input, x.phase, x.micro_batch == m - 1});
      }
    }
  }
  for (int64_t r = 0; r < pp; ++r)
    if (next[static_cast<size_t>(r)] < tables[static_cast<size_t>(r)].size())
      return make_error("schedule", "the tables wait on each other (stage " + std::to_string(r) + " never finishes)");
  return out;
}

double play_with_dp_s(const TableProgram& program, const std::vector<ChunkPassSeconds>& per_stage,
                      const std::vector<DpBeside>& dp, double p2p_s) {
  std::vector<double> end(program.steps.size()), free_s(static_cast<size_t>(program.ranks), 0.0);
  std::vector<double> queue_s(static_cast<size_t>(program.ranks), 0.0);
  for (size_t i = 0; i < program.steps.size(); ++i) {
    const TableProgram::Step& x = program.steps[i];
    const size_t in = static_cast<size_t>(x.input);
    const double ready =
        x.input < 0 ? 0 : end[in] + (p2p_s > 0 && program.steps[in].rank != x.rank ? p2p_s : 0.0);
    const ChunkPassSeconds& c = per_stage[static_cast<size_t>(x.rank)];
    double& f = free_s[static_cast<size_t>(x.rank)];
    const double start = std::max(f, ready);
    const double dur = x.phase == Phase::forward ? c.f : x.phase == Phase::backward ? c.b : c.w;
    f = start + dur;
    end[i] = f;
    if (x.phase != Phase::weight || dp.empty()) continue;
    const DpBeside& d = dp[static_cast<size_t>(x.rank)];
    const double job = d.per_w_s + (x.last_micro_batch ? d.last_s : 0.0);
    if (job <= 0 || d.pieces < 1) continue;
    double& q = queue_s[static_cast<size_t>(x.rank)];
    q = std::max({q + job, start + dur / d.pieces + job, f + job / d.pieces});
  }
  double out = 0;
  for (size_t r = 0; r < free_s.size(); ++r) out = std::max({out, free_s[r], queue_s[r]});
  return out;
}

double play_s(const TableProgram& program, const std::vector<ChunkPassSeconds>& per_stage) {
  return play_with_dp_s(program, per_stage, {});
}

Expected<double> table_makespan_s(const std::vector<std::vector<Slot>>& tables, Schedule s, int64_t vpp, int64_t m,
                                  const std::vector<ChunkPassSeconds>& per_stage) {
  auto program = compile_tables(tables, s, vpp, m);
  if (!program) return program.error();
  return play_s(*program, per_stage);
}

namespace {
constexpr size_t kPlayedBytes = size_t{16} << 20;  // of keys kept: 16 MiB
}  // namespace

Expected<double> TableMakespans::makespan_s(Schedule s, int64_t pp, int64_t vpp, int64_t m,
                                            const std::vector<ChunkPassSeconds>& per_stage) {
  return makespan_s(s, pp, vpp, m, per_stage, {});
}

Expected<double> TableMakespans::makespan_s(Schedule s, int64_t pp, int64_t vpp, int64_t m,
                                            const std::vector<ChunkPassSeconds>& per_stage,
                                            const std::vector<DpBeside>& dp, double p2p_s) {
  // pp stages' passes and pp (or no) dp streams: the lengths make the bytes unambiguous.
  if (static_cast<int64_t>(per_stage.size()) != pp || (!dp.empty() && static_cast<int64_t>(dp.size()) != pp))
    return make_error("schedule", "the tables need one entry per stage (" + std::to_string(pp) + ")");
  const std::array<int64_t, 5> head{static_cast<int64_t>(s), pp, vpp, m, static_cast<int64_t>(dp.size())};
  std::string key(reinterpret_cast<const char*>(head.data()), sizeof head);
  key.append(reinterpret_cast<const char*>(per_stage.data()), per_stage.size() * sizeof(ChunkPassSeconds));
  key.append(reinterpret_cast<const char*>(dp.data()), dp.size() * sizeof(DpBeside));
  key.append(reinterpret_cast<const char*>(&p2p_s), sizeof p2p_s);
  if (auto hit = played_.find(key); hit != played_.end()) return hit->second;
  const std::array<int64_t, 4> which{static_cast<int64_t>(s), pp, vpp, m};
  auto program = programs_.find(which);
  if (program == programs_.end())
    program = programs_.emplace(which, compile_tables(make_schedule(s, pp, vpp, m), s, vpp, m)).first;
  if (!program->second) return program->second.error();
  const double t = play_with_dp_s(*program->second, per_stage, dp, p2p_s);
  if (played_bytes_ > kPlayedBytes) played_.clear(), played_bytes_ = 0;  // bounded; a dropped one is played again
  played_bytes_ += key.size();
  played_.emplace(std::move(key), t);
  return t;
}

}  // namespace loom
