// A step result as JSON: one writer and one strict reader for every program that describes a
// training step in the Estimate vocabulary (sim/estimate.hpp), so a prediction, a simulated
// step and a measured one are the same document and `loom compare` diffs them field by field.
//
// The document: "source" ("predicted" by the cost model, "simulated" by the event simulator,
// "measured" by `loom execute --report`); the configuration (model, cluster, params, gpus, dp,
// tp, pp, zero, micro_batch, micro_batches, global_batch, seq, vpp, recompute, sp, schedule,
// order, dtype, grad_dtype); step_time_s, simulated_step_time_s (null: not simulated),
// tokens_per_s, tflops_per_gpu, mfu; flops.model and flops.hardware; memory_bytes.{weights,
// grads, optimizer, activations, logits, comm_buffers, workspace, runtime, other, peak} of the
// largest stage (peak_stage); capacity_bytes, usable_bytes; comm_bytes.{tp, dp, pp};
// time_s.{compute, tp_comm, dp_comm, pp_comm, bubble, optimizer}; dp_alternatives_s; stages[]
// (stage, layers, params, in_flight, memory_bytes, flops, comm_bytes, micro_batch_time_s.{forward,
// backward, recompute, tp_comm}, tp_grad_sync_s, dp_comm_exposed_s, optimizer_s); fits, reason.
// A measured document adds device, step_times_s, losses, ranks[] (one row per rank) and the other
// Measurement fields at the top level and time_s.other; a simulated one adds
// analytical_step_time_s, tasks, edges, contention_s and simulated_stages[] (stage, time_s,
// end_s, peak_in_flight).
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "sim/estimate.hpp"
#include "sim/expected.hpp"

namespace loom {

class ObjectReader;

// The version of the JSON documents loom writes ("schema_version" at the top of every --json
// document, plan.json and a step result): raised when a field changes meaning or goes away.
// Readers refuse any other version in one line; a document without the field was written
// before it existed and is read as version 1.
inline constexpr int64_t kJsonSchemaVersion = 1;

// Reads "schema_version" of the object `r` reads (`j`): absent or kJsonSchemaVersion, else r fails.
void read_schema_version(ObjectReader& r, const nlohmann::json& j);

const std::vector<std::string>& step_source_names();  // predicted, simulated, measured
std::string to_string(StepSource s);

nlohmann::json estimate_to_json(const Estimate& e);

// Reads a step result strictly: unknown keys, wrong types, NaN, negative sizes and parts that
// do not add up to their total are one line "<where>: <json pointer>: <rule>". `pointer` is
// where the document sits inside `where` ("/prediction" inside a plan file). A document
// without "source" was written before it existed: measured when it has "device" (loom execute
// wrote one), predicted otherwise. For every document the writer produces,
// estimate_to_json(estimate_from_json(j)) == j.
Expected<Estimate> estimate_from_json(const nlohmann::json& j, const std::string& where,
                                      const std::string& pointer = "");

// The first configuration field where two step results differ, as
// "/parallel/tp differs (plan 2, report 4)" with each side named by its label; none when they
// describe the same job (model, parallel layout, schedule, global batch, sequence, dtypes).
std::optional<std::string> configuration_difference(const Estimate& a, const std::string& a_label,
                                                    const Estimate& b, const std::string& b_label);

}  // namespace loom
