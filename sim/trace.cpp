#include "sim/trace.hpp"

#include <algorithm>
#include <set>

namespace loom {

namespace tn = trace_names;

std::vector<int64_t> default_trace_ranks(const RankGrid& grid) {
  std::vector<int64_t> out;
  for (int64_t s = 0; s < grid.size(Dim::pp); ++s) out.push_back(grid.rank(Coords{0, 0, s}));
  return out;
}

Expected<std::vector<int64_t>> parse_rank_list(const std::string& list, int64_t world, const std::string& where) {
  std::set<int64_t> out;
  size_t pos = 0;
  auto bad = [&](const std::string& part) {
    return make_error(where, "must be ranks or ranges like 0-7,64 below " + std::to_string(world) + " (got \"" +
                                 part + "\")");
  };
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string part = list.substr(pos, comma - pos);
    const size_t dash = part.find('-');
    try {
      size_t used = 0;
      const int64_t lo = std::stoll(part.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? part.size() : dash)) return bad(part);
      int64_t hi = lo;
      if (dash != std::string::npos) {
        const std::string rest = part.substr(dash + 1);
        hi = std::stoll(rest, &used);
        if (used != rest.size()) return bad(part);
      }
      if (lo < 0 || hi < lo || hi >= world) return bad(part);
      for (int64_t r = lo; r <= hi; ++r) out.insert(r);
    } catch (const std::exception&) {
      return bad(part);
    }
    pos = comma + 1;
  }
  return std::vector<int64_t>(out.begin(), out.end());
}

std::string task_name(const SimTask& t, const ParallelConfig& p, bool receiver) {
  const bool fwd = t.phase == Phase::forward;
  switch (t.kind) {
    case TaskKind::forward: return tn::forward(t.micro_batch, t.chunk);
    case TaskKind::backward: return tn::backward(t.micro_batch, t.chunk);
    case TaskKind::recompute: return tn::recompute(t.micro_batch, t.chunk);
    case TaskKind::weight: return tn::weight(t.micro_batch, t.chunk);
    case TaskKind::optimizer: return tn::kOptimizer;
    case TaskKind::tp: return p.sp ? tn::kTpSequenceParallel : tn::kTpAllReduce;
    case TaskKind::dp_grad: return tn::dp_bucket(p.zero == 0 ? "allreduce" : "reduce_scatter", t.bucket);
    case TaskKind::dp_gather_params: return tn::kDpGatherParams;
    case TaskKind::dp_gather: return tn::dp_gather(fwd, t.micro_batch, t.chunk);
    case TaskKind::dp_push_pull: return tn::kDpPushPull;
    case TaskKind::pp_send: return receiver ? tn::pp_recv(fwd, t.micro_batch) : tn::pp_send(fwd, t.micro_batch);
    case TaskKind::host_copy:
      if (t.micro_batch < 0) return fwd ? tn::kHostWeights : tn::kHostGradients;
      return tn::host_copy(fwd, t.micro_batch, t.chunk);
    case TaskKind::host_optimizer: return tn::kCpuOptimizer;
    case TaskKind::ep: return tn::kEpAllToAll;
    case TaskKind::edp_grad: return tn::kEdpGradients;
    case TaskKind::cp: return p.cp_comm == CpComm::all_gather ? tn::kCpAllGather : tn::kCpRing;
  }
  return "?";
}

namespace {

nlohmann::json event(const SimTask& t, const ParallelConfig& p, int64_t pid, bool receiver) {
  nlohmann::json args = nlohmann::json::object();
  if (t.micro_batch >= 0) args["micro_batch"] = t.micro_batch;
  if (t.chunk >= 0) args["chunk"] = t.chunk;
  if (t.layers > 0) args["layers"] = t.layers;
  if (t.bytes > 0) args["bytes"] = t.bytes;
  if (t.kind == TaskKind::pp_send) args[receiver ? "from_stage" : "to_stage"] = receiver ? t.stage : t.peer_stage;
  const tn::Stream stream = receiver ? tn::pp_recv_stream(t.phase == Phase::forward) : t.stream;
  return trace_complete_event(task_name(t, p, receiver), stream, t.start_s, t.dur_s, pid, std::move(args));
}

nlohmann::json metadata(const char* what, int64_t pid, int tid, nlohmann::json args) {
  return {{"name", what}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", std::move(args)}};
}

}  // namespace

nlohmann::json trace_complete_event(const std::string& name, tn::Stream stream, double start_s, double dur_s,
                                    int64_t pid, nlohmann::json args) {
  return {{"name", name},        {"ph", "X"},   {"ts", start_s * 1e6},
          {"dur", dur_s * 1e6},  {"pid", pid},  {"tid", tn::tid(stream)},
          {"cat", tn::stream_name(stream)}, {"args", std::move(args)}};
}

nlohmann::json trace_rank_metadata(int64_t rank, const Coords& c) {
  nlohmann::json events = nlohmann::json::array();
  events.push_back(metadata("process_name", rank, 0, {{"name", tn::process_name(rank, c.dp, c.pp, c.tp)}}));
  events.push_back(metadata("process_sort_index", rank, 0, {{"sort_index", rank}}));
  for (int s = 0; s < tn::kStreams; ++s) {
    events.push_back(metadata("thread_name", rank, s, {{"name", tn::stream_name(static_cast<tn::Stream>(s))}}));
    events.push_back(metadata("thread_sort_index", rank, s, {{"sort_index", s}}));
  }
  return events;
}

int64_t trace_event_count(const SimResult& r, const ParallelConfig& p, const RankGrid& grid,
                          const std::vector<int64_t>& ranks) {
  std::vector<int64_t> per_stage(p.pp, 0);
  for (const SimTask& t : r.tasks) {
    if (t.dur_s <= 0) continue;
    ++per_stage[t.stage];
    if (t.kind == TaskKind::pp_send) ++per_stage[t.peer_stage];
  }
  const int64_t metadata = 2 + 2 * tn::kStreams;
  int64_t n = 0;
  for (int64_t rank : ranks) n += metadata + per_stage[grid.coords(rank).pp];
  return n;
}

nlohmann::json trace_json(const SimResult& r, const ParallelConfig& p, const RankGrid& grid,
                          const std::vector<int64_t>& ranks, const std::function<void(int64_t, int64_t)>& progress) {
  std::vector<std::vector<const SimTask*>> own(p.pp), incoming(p.pp);
  for (const SimTask& t : r.tasks) {
    if (t.dur_s <= 0) continue;
    own[t.stage].push_back(&t);
    if (t.kind == TaskKind::pp_send) incoming[t.peer_stage].push_back(&t);
  }
  nlohmann::json events = nlohmann::json::array();
  int64_t drawn = 0;
  for (int64_t rank : ranks) {
    const Coords c = grid.coords(rank);
    for (auto& m : trace_rank_metadata(rank, c)) events.push_back(std::move(m));
    for (const SimTask* t : own[c.pp]) events.push_back(event(*t, p, rank, false));
    for (const SimTask* t : incoming[c.pp]) events.push_back(event(*t, p, rank, true));
    if (progress) progress(++drawn, static_cast<int64_t>(ranks.size()));
  }
  return {{"traceEvents", std::move(events)},
          {"displayTimeUnit", "ms"},
          {"otherData",
           {{"generator", "loom simulate"},
            {"step_time_s", r.step_time_s},
            {"tasks", r.task_count},
            {"dp", p.dp},
            {"tp", p.tp},
            {"pp", p.pp},
            {"vpp", p.vpp}}}};
}

}  // namespace loom
