#include "executor/units.hpp"

#include <string>
#include <utility>

#include "sim/plan.hpp"
#include "sim/schedule.hpp"

namespace loom::exec {

namespace {

void set_offset(UnitOffsets& o, const std::string& name, int64_t off) {
  static const std::pair<const char*, int64_t UnitOffsets::*> table[] = {
      {"tok_emb.weight", &UnitOffsets::wte},      {"pos_emb.weight", &UnitOffsets::wpe},
      {"norm1.weight", &UnitOffsets::norm1_w},    {"norm1.bias", &UnitOffsets::norm1_b},
      {"attn.q.weight", &UnitOffsets::q_w},       {"attn.q.bias", &UnitOffsets::q_b},
      {"attn.k.weight", &UnitOffsets::k_w},       {"attn.k.bias", &UnitOffsets::k_b},
      {"attn.v.weight", &UnitOffsets::v_w},       {"attn.v.bias", &UnitOffsets::v_b},
      {"attn.o.weight", &UnitOffsets::o_w},       {"attn.o.bias", &UnitOffsets::o_b},
      {"norm2.weight", &UnitOffsets::norm2_w},    {"norm2.bias", &UnitOffsets::norm2_b},
      {"mlp.fc.weight", &UnitOffsets::fc_w},      {"mlp.fc.bias", &UnitOffsets::fc_b},
      {"mlp.gate.weight", &UnitOffsets::fc_w},    {"mlp.up.weight", &UnitOffsets::up_w},
      {"mlp.proj.weight", &UnitOffsets::proj_w},  {"mlp.proj.bias", &UnitOffsets::proj_b},
      {"mlp.down.weight", &UnitOffsets::proj_w},  {"norm_f.weight", &UnitOffsets::normf_w},
      {"norm_f.bias", &UnitOffsets::normf_b},     {"lm_head.weight", &UnitOffsets::head},
      {"mlp.router.weight", &UnitOffsets::router_w},
      {"mlp.experts.gate.weight", &UnitOffsets::efc_w}, {"mlp.experts.fc.weight", &UnitOffsets::efc_w},
      {"mlp.experts.up.weight", &UnitOffsets::eup_w},
      {"mlp.experts.down.weight", &UnitOffsets::eproj_w}, {"mlp.experts.proj.weight", &UnitOffsets::eproj_w},
      {"mlp.shared.gate.weight", &UnitOffsets::sfc_w},  {"mlp.shared.fc.weight", &UnitOffsets::sfc_w},
      {"mlp.shared.up.weight", &UnitOffsets::sup_w},
      {"mlp.shared.down.weight", &UnitOffsets::sproj_w}, {"mlp.shared.proj.weight", &UnitOffsets::sproj_w}};
  for (const auto& [suffix, field] : table) {
    const std::string s(suffix);
    if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
        (name.size() == s.size() || name[name.size() - s.size() - 1] == '.')) {
      o.*field = off;
      return;
    }
  }
}

std::pair<UnitKind, int64_t> unit_of(const cpu::TensorInfo& t) {
  if (t.layer >= 0) return {UnitKind::layer, t.layer};
  if (t.name.rfind("tok_emb", 0) == 0 || t.name.rfind("pos_emb", 0) == 0) return {UnitKind::embed, -1};
  return {UnitKind::out, -1};
}

TensorSlice make_slice(const cpu::TensorInfo& t, int64_t offset, const LayoutSpec& spec) {
  const int64_t tp = spec.tp;
  TensorSlice s;
  s.name = t.name;
  s.offset = offset;
  s.split = t.tp_split_dim;
  s.numel = s.split >= 0 ? t.numel / tp : t.numel;
  s.replicated = s.split < 0;
  s.decay = t.weight_decay;
  s.full_offset = t.offset;
  s.rows = t.shape[0];
  s.cols = t.numel / t.shape[0];
  if (t.experts > 0) {  // (experts, rows, cols): experts / ep of them, each split over etp
    s.experts = t.experts;
    s.rows = t.shape[1];
    s.cols = t.shape[2];
    s.numel = t.numel / spec.ep / spec.etp;
  }
  return s;
}

// Appends the unit of (kind, layer) to `out`: its tensors in the model's order, then its place
// in the rank's buffers and its ZeRO shard.
void add_unit(UnitLayout& out, const std::vector<cpu::TensorInfo>& tensors, const LayoutSpec& spec, UnitKind kind,
              int64_t layer, int chunk) {
  Unit u;
  u.kind = kind;
  u.layer = layer;
  u.chunk = chunk;
  for (const auto& t : tensors) {
    if (unit_of(t) != std::pair<UnitKind, int64_t>{kind, layer}) continue;
    TensorSlice s = make_slice(t, u.size, spec);
    set_offset(u.o, t.name, s.offset);
    u.size += s.numel;
    u.tensors.push_back(std::move(s));
  }
  u.offset = out.total;
  out.total += u.size;
  u.shard = spec.zero == 0 ? u.size : (u.size + spec.dp - 1) / spec.dp;
  u.shard_offset = out.total_shard;
  out.total_shard += u.shard;
  out.max_unit = std::max(out.max_unit, u.size);
  out.chunk_units[static_cast<size_t>(chunk)].push_back(static_cast<int>(out.units.size()));
  out.units.push_back(std::move(u));
}

}  // namespace

Group make_group(const RankGrid& grid, Dim d, int rank) {
  Group g;
  g.kind = d == Dim::tp ? GroupKind::tp : d == Dim::dp ? GroupKind::dp : GroupKind::pp;
  for (int64_t r : grid.group(d, rank)) {
    if (r == rank) g.index = static_cast<int>(g.ranks.size());
    g.ranks.push_back(static_cast<int>(r));
  }
  return g;
}

UnitLayout build_layout(const std::vector<cpu::TensorInfo>& tensors, const LayoutSpec& spec) {
  ParallelConfig p;
  p.pp = spec.pp, p.vpp = spec.vpp, p.schedule = spec.schedule, p.stage_layers = spec.stage_layers;
  const auto place = layer_placement(p, spec.layers);
  const bool first = spec.stage == 0, last = spec.stage == head_stage(spec.schedule, spec.pp);
  UnitLayout out;
  out.chunk_units.assign(static_cast<size_t>(spec.vpp), {});
  for (int c = 0; c < spec.vpp; ++c) {
    if (first && c == 0) add_unit(out, tensors, spec, UnitKind::embed, -1, c);
    for (const auto& lp : place)
      if (lp.stage == spec.stage && lp.chunk == c) add_unit(out, tensors, spec, UnitKind::layer, lp.layer, c);
    if (last && c == spec.vpp - 1) add_unit(out, tensors, spec, UnitKind::out, -1, c);
  }
  return out;
}

}  // namespace loom::exec
