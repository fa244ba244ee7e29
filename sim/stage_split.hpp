// Uneven pipeline stages: how a model's layers are split over pp stages when the split is not
// layers / pp each (ParallelConfig::stage_layers), the rules a split must keep, the candidate
// splits the planner tries, and the engines' spellings of a split (Megatron-LM's first/last
// stage layer counts, torchtitan's first/last "less layers").
//
// A split gives stage s (all of its vpp chunks) stage_layers[s] layers; each chunk of stage s
// holds stage_layers[s] / vpp of them (chunk_layers_at in sim/specs.hpp: the first and last
// stage's may leave their model-end chunk short), and model chunk c = k pp + s (stage s's k-th
// chunk) holds the layers after those of chunks 0 .. c - 1 (Megatron-core's interleaved order).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sim/expected.hpp"
#include "sim/json_reader.hpp"
#include "sim/specs.hpp"
#include "sim/validate.hpp"

namespace loom {

// The rules of p.stage_layers (empty: the even split, checked by validate_config itself):
// pp entries, each >= 1, summing to the model's layers; each a multiple of vpp, but the first
// and the last, whose model-end chunk may hold fewer than the stage's others and at least one
// (chunk_rest_fits).
Status check_stage_layers(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name);
// Whether `layers` fit vpp chunks of ceil(layers / vpp) each with one chunk holding the rest, at
// least one layer.
bool chunk_rest_fits(int64_t layers, int64_t vpp);

// Reads the optional "stage_layers" member of the object `j` that `r` reads (absent: left
// empty): an array of counts, each an integer in [1, limits::kLayers].
void read_stage_layers(ObjectReader& r, const nlohmann::json& j, std::vector<int64_t>& out);

// "8,8,7": the split as the --stage-layers flag spells it.
std::string stage_layers_text(const std::vector<int64_t>& stage_layers);
// Parses "8,8,7" (decimal integers >= 1 separated by commas); errors name `where`.
Expected<std::vector<int64_t>> parse_stage_layers(const std::string& text, const std::string& where);

// The splits the planner tries for pp stages of vpp chunks: the even split ({}), when pp x vpp
// divides the layers, and Megatron-LM's convention of given first and last stage counts with
// the middle stages splitting the rest evenly, the first and last holding no more than a middle
// one (they carry the embedding and the loss head): for middle counts c = ceil(L / pp) and the
// next multiple of vpp above it, the first stage c and the last the rest, or the first and the
// last halves of the rest (each a multiple of vpp, or with a short model-end chunk:
// chunk_rest_fits); then Megatron-LM's embedding and loss counted as layers (both, then the
// loss, then the embedding: megatron_account_split). At most eight, in a fixed order; {} alone
// when nothing else fits (so validate_config names what is wrong).
std::vector<std::vector<int64_t>> stage_split_candidates(int64_t layers, int64_t pp, int64_t vpp);

// Megatron-LM's --account-for-embedding-in-pipeline-split and --account-for-loss-in-pipeline-split
// (megatron/core/transformer/transformer_block.py, get_num_layers_to_build): the embedding and
// the loss count as a layer each, layers + embedding + loss split evenly over pp ranks (and each
// rank's evenly over its vpp chunks, Megatron refusing what does not divide), then the first
// chunk of stage 0 gives one up for the embedding and the last chunk of the last stage one for
// the loss. megatron_account_split: the split the flags build ({} when even; an error where
// Megatron-LM refuses); megatron_account_for: the flags that build `stage_layers`, if any do.
struct AccountFor {
  bool embedding = false, loss = false;
};
Expected<std::vector<int64_t>> megatron_account_split(int64_t layers, int64_t pp, int64_t vpp, AccountFor a,
                                                      const std::string& where);
std::optional<AccountFor> megatron_account_for(const std::vector<int64_t>& stage_layers, int64_t layers, int64_t vpp);

// Megatron-LM's --decoder-first-pipeline-num-layers and --decoder-last-pipeline-num-layers for
// a split (0: not given, the stage takes the even share), when its middle stages hold equal
// counts, as Megatron-core requires; nullopt when the split cannot be written so.
struct FirstLastLayers {
  int64_t first = 0, last = 0;
};
std::optional<FirstLastLayers> megatron_first_last(const std::vector<int64_t>& stage_layers);
// The split Megatron-core builds from them (get_num_layers_to_build): the first and last
// stages the given counts (0: not given), the others (layers - given) / (stages left) each
// ({} when that is the even split). An error when the rest does not divide evenly, as
// Megatron-LM refuses it.
Expected<std::vector<int64_t>> megatron_split(int64_t layers, int64_t pp, int64_t first, int64_t last,
                                              const std::string& where);

// torchtitan's split of `layers` over `stages` stages (generate_llm_fqn_per_model_part): the
// embedding counts as first_less layers and the norm and output as last_less, the
// layers + first_less + last_less "effective" layers are spread evenly with the remainder on
// the first stages, then the first stage gives up first_less and the last last_less. An error
// where torchtitan asserts (a weight above the even share).
Expected<std::vector<int64_t>> torchtitan_split(int64_t layers, int64_t stages, int64_t first_less, int64_t last_less,
                                                const std::string& where);

}  // namespace loom
