// A checkpoint on disk, in one place: the trainer hands it the buffers a rank owns and calls
// save_checkpoint / load_checkpoint on every rank.
//
// `--save D` after step k writes
//   D/step-<k>-<nonce>/rank-<r>.ckpt   one file per rank: weights, AdamW m, AdamW v it owns
//   D/checkpoint.json                  the index: which folder, step, world size, fingerprint
// Every rank writes and fsyncs its file in a new folder that nothing names yet. Once every rank
// has done so (the ranks agree, so none publishes half a checkpoint), rank 0 writes the index to
// a temporary name, fsyncs it and renames it over checkpoint.json: one atomic rename publishes
// the new checkpoint, and until then the index names the previous, complete one. A save that
// dies at any point leaves the last published checkpoint intact; the next save removes the
// folders no index names.
//
// A rank file: the 8 bytes "LOOMCKP2", a header of 7 little-endian 64-bit integers (step, world,
// rank, plan fingerprint, then the element counts of weights, m and v), the fp32 payload in that
// order, and an FNV-1a 64 checksum of everything before it. Resume checks the index field by field,
// then each rank its own file: size, checksum, then every header field against the plan; every
// error names the file and the field.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "executor/comm.hpp"
#include "executor/run_checks.hpp"
#include "sim/expected.hpp"
#include "sim/plan.hpp"

namespace loom::exec {

// FNV-1a, 64-bit (Fowler, Noll, Vo; IETF draft-eastlake-fnv, section 2): for each byte,
// hash = (hash XOR byte) * 1099511628211, starting from 14695981039346656037. Chain calls by
// passing the previous result as `hash`. fnv1a64("a", 1) == 0xaf63dc4c8601ec8c.
inline constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ULL;
inline constexpr uint64_t kFnv1a64Prime = 0x100000001b3ULL;
uint64_t fnv1a64(const void* data, size_t bytes, uint64_t hash = kFnv1a64Offset);

// The plan a checkpoint belongs to: FNV-1a 64 of the canonical JSON (sorted keys, no spaces) of
// the plan's model, train and parallel parts. The cluster, the prediction and the model's
// description (source, published parameter count) are left out: the same training state resumes
// on another cluster description.
uint64_t plan_fingerprint(const Plan& plan);
std::string hex64(uint64_t x);  // 16 lowercase hex digits

struct CheckpointIndex {
  int64_t step = 0;
  int64_t world = 1;
  std::string dir;          // the folder under the checkpoint folder that holds the rank files
  uint64_t fingerprint = 0;
};
nlohmann::json index_to_json(const CheckpointIndex& index);
// Strict: every field present with its type and range, no other keys. `where` names the file.
Expected<CheckpointIndex> index_from_json(const nlohmann::json& j, const std::string& where);

std::string index_path(const std::string& folder);            // folder/checkpoint.json
std::string rank_file(const std::string& dir, int64_t rank);  // dir/rank-00000.ckpt

// What one rank saves and restores, in file order (weights, AdamW m, AdamW v).
struct Section {
  float* data = nullptr;
  int64_t count = 0;
};
struct RankHeader {
  int64_t step = 0, world = 1, rank = 0;
  uint64_t fingerprint = 0;
};
int64_t rank_file_bytes(const std::vector<Section>& sections);

// SaveFault, save_fault_points: a rank killing itself part-way through a save (run_checks.hpp).

// One rank file, written and fsynced (the caller renames nothing: the folder is unpublished).
Status write_rank_file(const std::string& path, const RankHeader& header, const std::vector<Section>& sections,
                       const SaveFault& fault = {});
// Reads a rank file into `sections` after checking its size, checksum and header against `want`.
Status read_rank_file(const std::string& path, const RankHeader& want, const std::vector<Section>& sections);

// Collective: every rank calls it with its own status; every rank gets the same result, the
// first failing rank's error (lowest rank), or ok. Only when the collective itself fails (a peer
// died or stalled) do the ranks not agree: then `lost` is set and the error is the comm's.
Status agree(Comm& comm, const Status& mine, bool& lost);

// Collective: the save described above. Every rank returns the same status unless `lost`.
Status save_checkpoint(Comm& comm, const std::string& folder, const RankHeader& header,
                       const std::vector<Section>& sections, bool& lost, const SaveFault& fault = {});
// Collective: reads the index and this rank's file into `sections`; returns the step. Every rank
// returns the same result unless `lost` (a refusal names the file and the field).
Expected<int64_t> load_checkpoint(Comm& comm, const std::string& folder, uint64_t fingerprint,
                                  const std::vector<Section>& sections, bool& lost);

// check_output_file, check_output_folder: what --save and the other outputs must be (run_checks.hpp).

}  // namespace loom::exec
