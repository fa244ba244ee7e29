// Pipeline schedules as plain data and pure functions: for each pipeline rank, the ordered list of
// (micro-batch, chunk, phase) slots its compute stream runs in one training step. The event
// simulator, the CPU executor and the CUDA executor all walk these tables, so a schedule is
// defined once. Orders follow Megatron-LM (megatron/core/pipeline_parallel/schedules.py):
//   gpipe:       every forward (chunk-major, then micro-batch), then every backward reversed.
//   1f1b:        forward_backward_pipelining_without_interleaving: warm-up of
//                min(pp - rank - 1, m) forwards, then one forward + one backward in steady
//                state, then the remaining backwards.
//   interleaved: forward_backward_pipelining_with_interleaving: m*v virtual micro-batches
//                visited in groups of pp per chunk; warm-up of
//                min((pp - rank - 1) * 2 + (v - 1) * pp, m * v) forwards, then 1F1B.
//   zb-h1:       Qi et al. 2023, "Zero Bubble Pipeline Parallelism" (arXiv 2401.10241),
//                Sec. 3.1, in the order of its reference implementation (sail-sg's
//                ZeroBubbleH1Pipeline): each backward is split into B (input gradient, sent
//                on to the previous stage) and W (weight gradient). Rank r runs 1F1B's warm-up
//                of min(pp - r - 1, m) forwards, then r pairs of F, B whose W waits, then
//                F, B, W triples, then B, W pairs, then the r waiting W's; W's run in
//                micro-batch order. A rank holds 1F1B's min(pp - r, m) forwards awaiting
//                their B and up to r more awaiting their W, min(pp, m) in all: every rank
//                holds what 1F1B's first one does, so the largest over ranks is 1F1B's (the
//                paper's "same peak memory"). The last ranks' deferred W's fill what is
//                1F1B's cool-down bubble on the first ones: bubble (pp - 1)(F + B - W), not
//                (pp - 1)(F + B + W).
//   zb-v:        Qi et al. 2024, "Pipeline Parallelism with Controllable Memory" (arXiv
//                2405.15362), the V-shaped zero-bubble schedule: zb_v_rank below (vpp = 2).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom {

// weight: the weight-gradient half of a split backward (zb-h1 only); its backward slot then
// computes the input gradient alone.
enum class Phase : uint8_t { forward, backward, weight };

struct Slot {
  int32_t micro_batch = 0;  // 0 .. m-1
  int32_t chunk = 0;        // model chunk (virtual stage) on this rank, 0 .. v-1
  Phase phase = Phase::forward;
  bool operator==(const Slot&) const = default;
};

// One table per pipeline rank, [rank][k]: every (micro-batch, chunk) appears once as a
// forward and once as a backward, the forward first (zb-h1: and once as a weight slot, after
// its backward). vpp must be 1 unless the schedule is interleaved (gpipe accepts any vpp:
// every chunk's forwards, then every backward) or zb-v (vpp = 2: zb_v_rank's tables).
std::vector<std::vector<Slot>> make_schedule(Schedule s, int64_t pp, int64_t vpp, int64_t micro_batches);
// Rank `rank`'s table alone (make_schedule(...)[rank]).
std::vector<Slot> schedule_rank(Schedule s, int64_t pp, int64_t vpp, int64_t rank, int64_t micro_batches);

// Forward slots of the interleaved schedule's virtual micro-batch k (Megatron-LM's
// get_model_chunk_id / get_microbatch_id_in_model_chunk, in groups of pp micro-batches).
Slot interleaved_slot(int64_t k, int64_t pp, int64_t vpp, int64_t micro_batches, Phase phase);

// Warm-up forwards of `rank` before its first backward (Megatron-LM's num_warmup_microbatches).
int64_t warmup_slots(Schedule s, int64_t pp, int64_t vpp, int64_t rank, int64_t micro_batches);

// A model chunk on a pipeline rank: virtual stage chunk x pp + stage of the model's pp x vpp
// (zb-v: the V, zb_v_virtual_stage).
struct StageChunk {
  int32_t stage = -1, chunk = -1;  // -1: none (the model's end)
  bool operator==(const StageChunk&) const = default;
};
// The virtual stage (0 .. pp vpp - 1, the model's order) of chunk `chunk` of stage `stage`, and
// back: round robin (chunk x pp + stage), or under zb-v the V.
int64_t virtual_stage(Schedule s, int64_t stage, int64_t chunk, int64_t pp);
StageChunk stage_chunk(Schedule s, int64_t virtual_stage, int64_t pp);
// The stage holding the output layer and loss: the last, or under zb-v the first (the V's end).
inline int64_t head_stage(Schedule s, int64_t pp) { return s == Schedule::zb_v ? 0 : pp - 1; }
// Where the output of slot (stage, chunk, phase) goes: forward to the next stage (after the
// last stage, chunk c + 1 of stage 0), gradients to the previous one (before stage 0, chunk
// c - 1 of the last stage); none at the model's ends, nor for a weight slot (its gradient
// stays on the rank). The simulator's sends and the
// executor's pipeline transfers both follow it.
StageChunk slot_destination(int64_t stage, int64_t chunk, Phase phase, int64_t pp, int64_t vpp);
// Where the input of slot (stage, chunk, phase) comes from: the slot whose destination it is.
StageChunk slot_source(int64_t stage, int64_t chunk, Phase phase, int64_t pp, int64_t vpp);
// The same for any schedule: under zb-v along the V, so the last stage's chunk 0 feeds its own
// chunk 1 (a destination on the same stage: no message, the rank keeps the tensor).
StageChunk slot_destination(Schedule s, int64_t stage, int64_t chunk, Phase phase, int64_t pp, int64_t vpp);
StageChunk slot_source(Schedule s, int64_t stage, int64_t chunk, Phase phase, int64_t pp, int64_t vpp);

// Whether the schedule splits each backward into B and W slots.
inline bool splits_backward(Schedule s) { return s == Schedule::zb_h1 || s == Schedule::zb_v; }

// The most (micro-batch, chunk) activations a rank holds at once when it runs `slots` in
// order: +1 at each forward, -1 at the slot that ends its backward: its W where the table has
// W's (the stash keeps what W reads, B's output gradients written over what only B read),
// else its B. Equals in_flight_chunks() of the cost model.
int64_t peak_in_flight(const std::vector<Slot>& slots);


// ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory", the V-shaped zero-bubble
// schedule; in the order of PyTorch's ScheduleZBVZeroBubble, torch/distributed/pipelining):
// two chunks per rank placed as a V, rank r holding virtual stages r (chunk 0) and
// 2 pp - 1 - r (chunk 1), so the last rank passes its chunk 0's output to its own chunk 1 and
// the first rank holds both ends of the model. Rank r runs 2(pp - r) - 1 chunk-0 forwards,
// r pairs of chunk-1 and chunk-0 forwards, pp - r chunk-1 F, B, W triples, then both chunks'
// F, B, W in turn, then the remaining B's and W's. Built for at least 2 pp - 1 micro-batches;
// with fewer, the slots of the missing ones are dropped (as PyTorch does). Each chunk's B's and
// W's run in micro-batch order. make_schedule(Schedule::zb_v, pp, 2, m) returns these tables.
std::vector<Slot> zb_v_rank(int64_t pp, int64_t rank, int64_t micro_batches);
// The virtual stage of (stage, chunk) in ZB-V's V placement.
inline int64_t zb_v_virtual_stage(int64_t stage, int64_t chunk, int64_t pp) {
  return chunk == 0 ? stage : 2 * pp - 1 - stage;
}

// The makespan of `tables` when every slot of stage i takes f[i], b[i] or w[i] (forward, backward
// or its B, weight) and transfers are free: a slot starts when its rank is done with the one
// before and its input (slot_source; a B of the model's last chunk: its own forward; a W: its
// B) is ready. The cost model prices zb-v's bubble with it (cost_model.cpp). Error: the tables
// wait on each other (a deadlock).
struct ChunkPassSeconds {
  double f = 0, b = 0, w = 0;
};
Expected<double> table_makespan_s(const std::vector<std::vector<Slot>>& tables, Schedule s, int64_t vpp,
                                  int64_t micro_batches, const std::vector<ChunkPassSeconds>& per_stage);

// table_makespan_s in two halves, so that tables played many times are walked once: the slots
// in an order where each comes after the slot it waits for (its input, as above) and after its
// rank's previous slot, each with that input; then the play, one pass over the steps:
// end = max(the rank's previous end, the input's end) + the slot's time: the arithmetic of
// playing the tables slot by slot, so the same bits (tests/test_schedule_play.cpp keeps that
// play as the reference and compares).
struct TableProgram {
  struct Step {
    int32_t rank = 0;
    int32_t input = -1;  // the step whose end it waits for; -1: none (the model's first forward)
    Phase phase = Phase::forward;
    bool last_micro_batch = false;  // the slot's micro-batch is the step's last
  };
  std::vector<Step> steps;
  int64_t ranks = 0;
};
Expected<TableProgram> compile_tables(const std::vector<std::vector<Slot>>& tables, Schedule s, int64_t vpp,
                                      int64_t micro_batches);
double play_s(const TableProgram& program, const std::vector<ChunkPassSeconds>& per_stage);

// A rank's gradient reductions on its own data-parallel stream beside the tables (ZeRO 0-2 on a
// ring, in zb-h1 and zb-v, whose W passes yield the gradients): after each W a job of
// `per_w_s` (ZeRO-2: every micro-batch's gradients of the chunk), or after the W of the last
// micro-batch a job of `last_s` (ZeRO 0/1: the chunk's gradients once per step), each in
// `pieces` equal buckets, bucket q of a W ready (q + 1) / pieces of the way through it (the
// event simulator's add_buckets), served in order. A job of c after a W from t0 to t1 then ends
// at max(the queue's previous end + c, t0 + w / pieces + c, t1 + c / pieces).
struct DpBeside {
  double per_w_s = 0, last_s = 0, pieces = 1;  // pieces >= 1 (a stream with fewer takes no job)
};
// The makespan with those streams: the latest of every rank's compute and reduction ends. No
// reduction (all zero) gives play_s's result. `p2p_s` > 0: a slot whose input comes from another
// rank starts no earlier than p2p_s after that input ends (the pipeline transfer, on a stream of
// its own beside the sender's compute, as the event simulator sends).
double play_with_dp_s(const TableProgram& program, const std::vector<ChunkPassSeconds>& per_stage,
                      const std::vector<DpBeside>& dp, double p2p_s = 0);

// Played schedule tables for a search (zb-v's bubble, an uneven split's interleaved bubble):
// table_makespan_s(make_schedule(s, pp, vpp, m), ...) with each (s, pp, vpp, m)'s tables compiled
// once and each played result kept by its exact inputs (those and the bits of every stage's F,
// B, W), so a stage-time pattern seen again (candidates differing only in ZeRO stage or gradient
// dtype have the same passes) is not played again. The same bits out as table_makespan_s. Not
// shared between threads: each search thread holds its own.
class TableMakespans {
 public:
  Expected<double> makespan_s(Schedule s, int64_t pp, int64_t vpp, int64_t micro_batches,
                              const std::vector<ChunkPassSeconds>& per_stage);
  // The same with each rank's gradient reductions beside the tables, and transfers between
  // ranks taking p2p_s (play_with_dp_s).
  Expected<double> makespan_s(Schedule s, int64_t pp, int64_t vpp, int64_t micro_batches,
                              const std::vector<ChunkPassSeconds>& per_stage, const std::vector<DpBeside>& dp,
                              double p2p_s = 0);

 private:
  std::map<std::array<int64_t, 4>, Expected<TableProgram>> programs_;  // (schedule, pp, vpp, m)
  std::unordered_map<std::string, double> played_;  // key: those, per_stage and dp, as bytes
  size_t played_bytes_ = 0;
};

}  // namespace loom
