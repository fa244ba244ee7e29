// `loom import ... --compare-best`: "your configuration runs at X; loom's best at Y, because
// ...". The search is `loom plan --refine 0` for the imported model, cluster, GPUs, global batch,
// sequence and dtype (nothing else pinned), so both sides are priced by the same cost model.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "planner/cli/cmd_import.hpp"
#include "planner/cli/report.hpp"
#include "planner/search.hpp"
#include "sim/offload.hpp"
#include "sim/spec_json.hpp"
#include "sim/step_result.hpp"

namespace loom::cli {

namespace {

std::string on_off(bool on) { return on ? "on" : "off"; }

// The configuration fields that differ, one row each: field, yours, loom's.
std::string differing_fields(const Estimate& a, const Estimate& b) {
  const auto& p = a.parallel;
  const auto& q = b.parallel;
  const std::vector<std::tuple<const char*, std::string, std::string>> rows{
      {"dp", std::to_string(p.dp), std::to_string(q.dp)},
      {"tp", std::to_string(p.tp), std::to_string(q.tp)},
      {"pp", std::to_string(p.pp), std::to_string(q.pp)},
      {"zero", std::to_string(p.zero), std::to_string(q.zero)},
      {"micro-batch", std::to_string(p.micro_batch), std::to_string(q.micro_batch)},
      {"schedule", to_string(p.schedule), to_string(q.schedule)},
      {"vpp", std::to_string(p.vpp), std::to_string(q.vpp)},
      {"recompute", to_string(p.recompute), to_string(q.recompute)},
      {"sp", p.sp ? "on" : "off", q.sp ? "on" : "off"},
      {"tp comm overlap", on_off(p.tp_comm_overlap), on_off(q.tp_comm_overlap)},
      {"overlap param gather", on_off(p.overlap_param_gather), on_off(q.overlap_param_gather)},
      {"overlap grad reduce", on_off(p.overlap_grad_reduce), on_off(q.overlap_grad_reduce)},
      {"order", p.order, q.order},
      {"offload", to_string(p.offload), to_string(q.offload)},
      {"grad dtype", to_string(a.train.grad_dtype), to_string(b.train.grad_dtype)},
      {"dp bucket (elements)", std::to_string(dp_bucket_bytes_for(a.train, a.parallel) / dtype_bytes(a.train.grad_dtype)),
       std::to_string(dp_bucket_bytes_for(b.train, b.parallel) / dtype_bytes(b.train.grad_dtype))}};
  std::string s;
  for (const auto& [name, x, y] : rows)
    if (x != y) s += fmt::format("  {:<26}{:>14}{:>14}\n", name, x, y);
  return s.empty() ? s : fmt::format("  {:<26}{:>14}{:>14}\n", "field", "yours", "loom's best") + s;
}

// The step's terms side by side, and the one that differs most.
std::string time_terms(const Estimate& a, const Estimate& b) {
  const std::vector<std::tuple<const char*, double, double>> rows{
      {"compute", a.time.compute_s, b.time.compute_s},
      {"tensor-parallel comm", a.time.tp_comm_s, b.time.tp_comm_s},
      {"data-parallel comm", a.time.dp_comm_s, b.time.dp_comm_s},
      {"pipeline p2p", a.time.pp_comm_s, b.time.pp_comm_s},
      {"pipeline bubble", a.time.bubble_s, b.time.bubble_s},
      {"optimizer step", a.time.optimizer_s, b.time.optimizer_s}};
  std::string s = fmt::format("  {:<26}{:>14}{:>14}{:>14}\n", "time per step (s)", "yours", "loom's best", "difference");
  size_t most = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& [name, x, y] = rows[i];
    s += fmt::format("  {:<26}{:>14.4f}{:>14.4f}{:>+14.4f}\n", name, x, y, y - x);
    if (std::abs(y - x) > std::abs(std::get<2>(rows[most]) - std::get<1>(rows[most]))) most = i;
  }
  s += fmt::format("  {:<26}{:>14.4f}{:>14.4f}{:>+14.4f}\n", "step", a.step_time_s, b.step_time_s, b.step_time_s - a.step_time_s);
  const auto& [name, x, y] = rows[most];
  return s + fmt::format("the term that differs most: {} ({:+.4f} s)\n", name, y - x);
}

std::string summary_line(const char* who, const Estimate& e) {
  return fmt::format("{} ({}) runs at {:.4f} s per step: {:.0f} tokens/s, {:.1f} TFLOP/s per GPU, MFU {:.1f}%{}\n", who,
                     describe_config(e), e.step_time_s, e.tokens_per_s, e.tflops_per_gpu, 100 * e.mfu,
                     e.fits ? "" : ", DOES NOT FIT: " + e.reason);
}

std::string comparison_text(const Estimate& yours, const std::optional<Estimate>& best) {
  std::string s = summary_line("your configuration", yours);
  if (!best) return s + "loom's best: no configuration loom searched fits memory\n";
  const Estimate& b = *best;
  const std::string fields = differing_fields(yours, b);
  if (fields.empty()) return s + "loom's best is your configuration\n";
  s += summary_line("loom's best", b);
  if (!yours.fits) s += "yours does not fit memory; loom's best does\n";
  else if (b.step_time_s < yours.step_time_s)
    s += fmt::format("loom's best is {:.2f}x faster, because:\n", yours.step_time_s / b.step_time_s);
  else
    s += "loom's best is no faster (it ranks first by the search's tie-break order), and differs in:\n";
  return s + fields + time_terms(yours, b);
}

}  // namespace

Expected<BestComparison> compare_with_best(const Plan& imported) {
  auto space = make_search_space(imported.model, imported.cluster, imported.train, SearchPins{});
  if (!space) return space.error();
  SearchOptions so;
  so.top_k = 1;
  so.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const SearchResult r = search(imported.model, imported.cluster, *space, so);
  std::optional<Estimate> best;
  if (!r.top.empty()) best = r.top[0];
  BestComparison out;
  out.text = "compared with `loom plan` (the cost model's ranking, --refine 0) for the same model, cluster, GPUs, batch and "
             "dtype:\n" + comparison_text(imported.prediction, best);
  const double speedup = best && best->step_time_s > 0 ? imported.prediction.step_time_s / best->step_time_s : 0;
  out.json = {{"schema_version", kJsonSchemaVersion},
              {"imported", estimate_to_json(imported.prediction)},
              {"best", best ? estimate_to_json(*best) : nlohmann::json(nullptr)},
              {"speedup", best ? nlohmann::json(speedup) : nlohmann::json(nullptr)}};
  return out;
}

}  // namespace loom::cli
