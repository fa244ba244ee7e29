// Uneven pipeline stages: how a model's layers are split over pp stages when the split is not
// layers / pp each (ParallelConfig::stage_layers), the rules a split must keep, the candidate
// splits the planner tries, and the engines' spellings of a split (Megatron-LM's first/last
// stage layer counts, torchtitan's first/last "less layers").
//
// A split gives stage s (all of its vpp chunks) stage_layers[s] layers; each chunk of stage s
// holds stage_layers[s] / vpp of them, and model chunk c = k pp + s (stage s's k-th chunk)
// holds the layers after those of chunks 0 .. c - 1 (Megatron-core's interleaved order).
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
// pp entries, each >= 1 and a multiple of vpp, summing to the model's layers.
Status check_stage_layers(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name);

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
// last halves of the rest. At most five, in a fixed order; {} alone when nothing else fits (so
// validate_config names what is wrong).
std::vector<std::vector<int64_t>> stage_split_candidates(int64_t layers, int64_t pp, int64_t vpp);

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
