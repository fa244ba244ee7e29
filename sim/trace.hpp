// A simulated step as a Chrome trace event JSON document (open in https://ui.perfetto.dev or
// chrome://tracing): one process per rank (pid = global rank), one thread per stream, complete
// events ("ph": "X") with ts and dur in microseconds, names from sim/trace_names.hpp.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/simulator.hpp"

namespace loom {

// tp 0 of every stage of dp replica 0, in stage order: the ranks `loom simulate` draws by default.
std::vector<int64_t> default_trace_ranks(const RankGrid& grid);

// "0-7,64,130" (ranks or inclusive ranges, comma separated), each below `world`, sorted, unique.
Expected<std::vector<int64_t>> parse_rank_list(const std::string& list, int64_t world, const std::string& where);

// The events trace_json writes for these ranks (metadata included), counted without writing
// them, so a caller can say how large the file will be before building it.
int64_t trace_event_count(const SimResult& r, const ParallelConfig& p, const RankGrid& grid,
                          const std::vector<int64_t>& ranks);
// `r` must have been simulated with keep_tasks. Each rank draws its stage's timeline (all dp
// replicas and tp ranks of a stage run the same tasks; simulator.hpp). `progress`, when set, is
// called after each rank with (ranks done, ranks).
nlohmann::json trace_json(const SimResult& r, const ParallelConfig& p, const RankGrid& grid,
                          const std::vector<int64_t>& ranks,
                          const std::function<void(int64_t, int64_t)>& progress = {});

// The metadata events that name a rank's process and its stream threads.
nlohmann::json trace_rank_metadata(int64_t rank, const Coords& c);
// One complete event ("ph": "X"), times in seconds from the step's start.
nlohmann::json trace_complete_event(const std::string& name, trace_names::Stream stream, double start_s, double dur_s,
                                    int64_t pid, nlohmann::json args);

// The event's name as the executors' measured traces will name it.
std::string task_name(const SimTask& t, const ParallelConfig& p, bool receiver = false);

}  // namespace loom
