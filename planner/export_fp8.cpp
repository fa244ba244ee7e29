#include "planner/export_fp8.hpp"

#include "sim/fp8.hpp"

namespace loom {

void megatron_fp8(const TrainSpec& t, std::vector<std::pair<std::string, std::string>>& a) {
  if (!t.fp8) return;
  a.push_back({"--fp8-format", "hybrid"});
  a.push_back({"--fp8-amax-history-len", std::to_string(kFp8AmaxHistory)});
  a.push_back({"--fp8-amax-compute-algo", "max"});
}

std::string torchtitan_fp8(const TrainSpec& t, std::string& converters, std::vector<std::string>& no) {
  if (!t.fp8) return "";
  converters = "converters = [\"quantize.linear.float8\"]\n";
  no.push_back("fp8: torchtitan's Float8 scales each tensor dynamically (an amax pass per cast), loom prices Transformer "
               "Engine's delayed scaling; torchtitan needs [compile] enable = true for its casts to fuse");
  return "[quantize.linear.float8]\nrecipe_name = \"tensorwise\"\nfilter_fqns = [\"output\"]\n\n";
}

void deepspeed_fp8(const TrainSpec& t, std::vector<std::string>& no) {
  if (t.fp8)
    no.push_back("fp8: not expressible in the DeepSpeed config (FP8 GEMMs need Transformer Engine layers in the model "
                 "code); emitted bf16");
}

}  // namespace loom
