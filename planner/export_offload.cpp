#include "planner/export_offload.hpp"

#include "sim/offload.hpp"

namespace loom {

void megatron_offload(const ParallelConfig& p, std::vector<std::pair<std::string, std::string>>& args,
                      std::vector<std::string>& no) {
  if (p.offload == Offload::optimizer || p.offload == Offload::optimizer_params) {
    args.push_back({"--optimizer-cpu-offload", ""});
    args.push_back({"--optimizer-offload-fraction", "1.0"});
    args.push_back({"--use-precision-aware-optimizer", ""});
  }
  if (p.offload == Offload::optimizer_params)
    no.push_back("offload optimizer+params: Megatron-LM offloads only the optimizer (--optimizer-cpu-offload); "
                 "weights and gradients stay on the GPU");
  if (p.offload == Offload::activations)
    no.push_back("offload activations: no Megatron-LM argument checked for activation offload; not emitted");
}

std::string torchtitan_offload(const ParallelConfig& p, std::vector<std::string>& no) {
  if (p.offload == Offload::optimizer_params) return "enable_cpu_offload = true\n";
  if (p.offload == Offload::optimizer)
    no.push_back("offload optimizer: torchtitan's enable_cpu_offload moves parameters and gradients too "
                 "(optimizer+params); not emitted");
  if (p.offload == Offload::activations)
    no.push_back("offload activations: torchtitan v0.2.2 has no activation offload; not emitted");
  return "";
}

void deepspeed_offload(const ParallelConfig& p, int stage, nlohmann::ordered_json& zero,
                       std::vector<std::string>& no) {
  const nlohmann::ordered_json cpu = {{"device", "cpu"}, {"pin_memory", true}};
  if (p.offload == Offload::optimizer || p.offload == Offload::optimizer_params) {
    if (stage >= 1) zero["offload_optimizer"] = cpu;
    else no.push_back("offload optimizer with zero 0: DeepSpeed offloads the optimizer under ZeRO 1-3 only; not emitted");
  }
  if (p.offload == Offload::optimizer_params) {
    if (stage == 3) zero["offload_param"] = cpu;
    else no.push_back("offload params with zero " + std::to_string(stage) + ": DeepSpeed's offload_param needs stage 3; "
                      "not emitted");
  }
  if (p.offload == Offload::activations)
    no.push_back("offload activations: DeepSpeed's activation_checkpointing.cpu_checkpointing offloads recompute "
                 "checkpoints, not every layer's activations; not emitted");
}

}  // namespace loom
