// The rules a configuration must meet before it can be priced or run. Each broken rule is
// one line naming the field (through `name`, which maps "tp" to "--tp" for flags or to
// "plan.json: /parallel/tp" for files) and the rule, as Megatron's argument checks do.
#pragma once
#include <functional>
#include <string>

#include "sim/expected.hpp"
#include "sim/specs.hpp"

namespace loom {

using FieldNamer = std::function<std::string(const std::string& field)>;

// Sets cluster.gpus and cluster.nodes for `gpus` GPUs (nodes = ceil(gpus / gpus_per_node);
// more than one node must be whole nodes).
Status size_cluster(ClusterSpec& cluster, int64_t gpus, const std::string& where);

Status validate_config(const ModelSpec& m, const ClusterSpec& c, const TrainSpec& t,
                       const ParallelConfig& p, const FieldNamer& name);

}  // namespace loom
