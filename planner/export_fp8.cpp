#include "planner/export_fp8.hpp"

#include "sim/fp8.hpp"

namespace loom {

void megatron_fp8(const TrainSpec& t, std::vector<std::pair<std::string, std::string>>& a) {
  if (!t.fp8) return;
  a.push_back({"--fp8-format", "hybrid"});
  if (t.fp8_param_gather) a.push_back({"--fp8-param-gather", ""});
  if (t.fp8_recipe == Fp8Recipe::tensorwise) {  // current scaling: no amax history
    a.push_back({"--fp8-recipe", "tensorwise"});
    return;
  }
  a.push_back({"--fp8-amax-history-len", std::to_string(kFp8AmaxHistory)});
  a.push_back({"--fp8-amax-compute-algo", "max"});
}

std::string torchtitan_fp8(const TrainSpec& t, std::string& converters, std::vector<std::string>& no) {
  if (!t.fp8) return "";
  converters = "converters = [\"quantize.linear.float8\"]\n";
  if (t.fp8_recipe == Fp8Recipe::delayed)
    no.push_back("fp8: torchtitan's Float8 scales each tensor from its own amax (an amax pass per cast, the plan's "
                 "--fp8-recipe tensorwise); this plan is priced with Transformer Engine's delayed scaling");
  no.push_back("fp8: torchtitan needs [compile] enable = true for its Float8 casts to fuse");
  return "[quantize.linear.float8]\nrecipe_name = \"tensorwise\"\nfilter_fqns = [\"output\"]\n\n";
}

void deepspeed_fp8(const TrainSpec& t, std::vector<std::string>& no) {
  if (t.fp8)
    no.push_back("fp8: not expressible in the DeepSpeed config (FP8 GEMMs need Transformer Engine layers in the model "
                 "code); emitted bf16");
}

}  // namespace loom
