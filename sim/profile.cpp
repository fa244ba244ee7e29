#include "sim/profile.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "sim/json_reader.hpp"
#include "sim/validate.hpp"

namespace loom {

namespace {

// A member that must be a non-empty array of objects; each element read by `each`.
template <class F>
void read_profile_array(ObjectReader& r, const nlohmann::json& j, const std::string& key, bool required, F each) {
  if (!j.is_object() || !j.contains(key)) {
    if (required) r.fail(key, "is required (an array)");
    return;
  }
  r.skip(key);
  const auto& a = j.at(key);
  if (!a.is_array() || a.empty()) {
    r.fail(key, "must be a non-empty array");
    return;
  }
  for (size_t i = 0; i < a.size() && !r.failed(); ++i) {
    ObjectReader er(r, key + "/" + std::to_string(i), a[i]);
    each(er);
    er.reject_unknown_keys();
  }
}

// Bounds of a measurement: a GEMM or attention dimension, and one kernel's time.
constexpr int64_t kMaxDim = int64_t{1} << 40;
constexpr double kMaxSeconds = 1e6;

// The lookups need each point once: two GEMMs of one shape (and kind) would make the nearest
// one ambiguous; two attention points of one (seq, head_dim, bh) or bandwidth points of one size
// divide by zero when interpolating. Attention and bandwidth tables are sorted (as calibrate
// writes them), so a reader sees the curve in order.
void check_tables(ObjectReader& r, const HardwareProfile& p) {
  auto unique_gemms = [&r](const std::vector<ProfileGemm>& v, const std::string& key) {
    std::set<std::tuple<std::string, int64_t, int64_t, int64_t, bool>> seen;
    for (size_t i = 0; i < v.size() && !r.failed(); ++i)
      if (!seen.insert({v[i].kind, v[i].m, v[i].n, v[i].k, v[i].accumulate_fp32}).second)
        r.fail(key + "/" + std::to_string(i), "the same GEMM shape" + std::string(v[i].kind.empty() ? "" : " and kind") +
                                                  " (and accumulate_fp32) appears twice");
  };
  unique_gemms(p.gemm, "gemm");
  unique_gemms(p.gemm_variants, "gemm_variants");
  unique_gemms(p.gemm_fp8, "gemm_fp8");
  // Each model describes its own table's operands: bf16 (2 bytes) and FP8 (1 byte).
  for (auto [key, model, bytes] : {std::tuple{"gemm_model", &p.gemm_model, 2.0}, {"gemm_model_fp8", &p.gemm_model_fp8, 1.0}})
    if (!r.failed() && model->valid() && model->in_bytes != bytes)
      r.fail(std::string(key) + "/in_bytes", "must be " + std::to_string(static_cast<int>(bytes)) + " (got " +
                                                 nlohmann::json(model->in_bytes).dump() + ")");
  for (size_t i = 1; i < p.attention.size() && !r.failed(); ++i) {
    const auto& a = p.attention[i - 1];
    const auto& b = p.attention[i];
    if (!(std::tie(a.seq, a.head_dim, a.bh) < std::tie(b.seq, b.head_dim, b.bh)))
      r.fail("attention/" + std::to_string(i), "must be sorted by (seq, head_dim, bh), each point once");
  }
  for (size_t i = 1; i < p.memory_bound.size() && !r.failed(); ++i)
    if (!(p.memory_bound[i - 1].bytes < p.memory_bound[i].bytes))
      r.fail("memory_bound/" + std::to_string(i), "must be sorted by bytes, each size once");
  auto key = [](const ProfileKindBandwidth& b) { return std::tuple{static_cast<int>(b.kind), b.backward, b.bytes}; };
  for (size_t i = 1; i < p.memory_by_kind.size() && !r.failed(); ++i)
    if (!(key(p.memory_by_kind[i - 1]) < key(p.memory_by_kind[i])))
      r.fail(
          "memory_by_kind/" + std::to_string(i),
          "must be sorted by (kind in sim/mem_kind.hpp's order, pass forward before backward, bytes), each point once");
}

double lerp_log(double x, double x0, double y0, double x1, double y1) {
  if (x1 == x0) return y0;
  const double t = (std::log(x) - std::log(x0)) / (std::log(x1) - std::log(x0));
  return y0 + std::clamp(t, 0.0, 1.0) * (y1 - y0);
}

// Attention time at (bh, seq, d) from the points of the nearest measured seq (and head size).
double attention_lookup(const std::vector<ProfileAttention>& pts, double bh, double seq, double d, bool fwd) {
  if (pts.empty()) return 0;
  double best = std::numeric_limits<double>::infinity();
  int64_t s0 = 0, d0 = 0;
  for (const auto& p : pts) {
    const double dist = std::abs(std::log(seq / p.seq)) + std::abs(std::log(d / p.head_dim));
    if (dist < best) best = dist, s0 = p.seq, d0 = p.head_dim;
  }
  std::vector<std::pair<double, double>> row;  // (bh, seconds)
  for (const auto& p : pts)
    if (p.seq == s0 && p.head_dim == d0) row.emplace_back(static_cast<double>(p.bh), fwd ? p.fwd_s : p.bwd_s);
  std::sort(row.begin(), row.end());
  double t;
  if (bh <= row.front().first) t = row.front().second * bh / row.front().first;
  else if (bh >= row.back().first) t = row.back().second * bh / row.back().first;
  else {
    size_t i = 1;
    while (row[i].first < bh) ++i;
    const auto [x0, y0] = row[i - 1];
    const auto [x1, y1] = row[i];
    t = y0 + (bh - x0) / (x1 - x0) * (y1 - y0);
  }
  const double rs = seq / static_cast<double>(s0);
  return t * rs * rs * d / static_cast<double>(d0);
}

}  // namespace

static const ProfileGemm* exact_row(const std::vector<ProfileGemm>& rows, double M, double N, double K, double out_bytes) {
  const bool acc = out_bytes == 8;
  if (!acc && out_bytes != 2) return nullptr;
  for (const auto& g : rows)
    if (g.m == M && g.n == N && g.k == K && g.accumulate_fp32 == acc) return &g;
  return nullptr;
}

// A GEMM's time from one table and its model: the exact row, the model, or the nearest row's
// FLOP/s (distance |ln M/M'| + |ln N/N'| + |ln K/K'|).
static double table_gemm_s(const std::vector<ProfileGemm>& rows, const GemmModel& model, double M, double N, double K,
                           double out_bytes) {
  if (const ProfileGemm* g = exact_row(rows, M, N, K, out_bytes)) return g->seconds;
  if (model.valid()) return model.seconds(M, N, K, out_bytes);
  const ProfileGemm* nearest = nullptr;
  double best = std::numeric_limits<double>::infinity();
  for (const auto& g : rows) {
    const double dist = std::abs(std::log(M / g.m)) + std::abs(std::log(N / g.n)) + std::abs(std::log(K / g.k));
    if (dist < best) best = dist, nearest = &g;
  }
  if (!nearest) return 0;
  return nearest->seconds * (M * N * K) / (static_cast<double>(nearest->m) * nearest->n * nearest->k);
}

static std::vector<GemmSample> samples_of(const std::vector<ProfileGemm>& rows, double in_bytes) {
  std::vector<GemmSample> v;
  v.reserve(rows.size());
  for (const auto& g : rows)
    v.push_back({static_cast<double>(g.m), static_cast<double>(g.n), static_cast<double>(g.k),
                 g.accumulate_fp32 ? 8.0 : 2.0, g.seconds, in_bytes});
  return v;
}

bool HardwareProfile::measured(double M, double N, double K, double out_bytes) const {
  return exact_row(gemm, M, N, K, out_bytes) != nullptr;
}

double HardwareProfile::gemm_s(double M, double N, double K, double out_bytes) const {
  return table_gemm_s(gemm, gemm_model, M, N, K, out_bytes);
}

std::vector<GemmSample> HardwareProfile::gemm_samples() const { return samples_of(gemm, 2); }

double HardwareProfile::fp8_gemm_s(double M, double N, double K, double out_bytes) const {
  return table_gemm_s(gemm_fp8, gemm_model_fp8, M, N, K, out_bytes);
}

std::vector<GemmSample> HardwareProfile::fp8_gemm_samples() const { return samples_of(gemm_fp8, 1); }

void read_gemm_model(ObjectReader& r, GemmModel& g) {
  auto& c = g.c;
  r.number("mainloop_efficiency", c.mainloop_efficiency, 0, true, 1);
  r.number("tile_overhead_s", c.tile_overhead_s, 0, false, limits::kTimeS);
  r.number("memory_efficiency", c.memory_efficiency, 0, true, 1);
  r.number("launch_s", c.launch_s, 0, false, limits::kTimeS);
  r.number("peak_flops", g.hw.peak_flops, 0, true, limits::kRate);
  r.integer("sm_count", g.hw.sm_count, 1, 100000);
  r.number("hbm_bytes_per_s", g.hw.hbm_bytes_per_s, 0, true, limits::kRate);
  r.opt_number("in_bytes", g.in_bytes, 0, true, 8);
  r.integer("samples", g.samples, 1, 1000000);
  r.number("fit_mape", g.fit_mape, 0, false, 100);
  r.number("fit_worst", g.fit_worst, 0, false, 1000);
  r.string("source", g.source);
}

nlohmann::json to_json(const GemmModel& g) {
  nlohmann::json j = {{"mainloop_efficiency", g.c.mainloop_efficiency},
          {"tile_overhead_s", g.c.tile_overhead_s},
          {"memory_efficiency", g.c.memory_efficiency},
          {"launch_s", g.c.launch_s},
          {"peak_flops", g.hw.peak_flops},
          {"sm_count", g.hw.sm_count},
          {"hbm_bytes_per_s", g.hw.hbm_bytes_per_s},
          {"samples", g.samples},
          {"fit_mape", g.fit_mape},
          {"fit_worst", g.fit_worst},
          {"source", g.source}};
  if (g.in_bytes != 2) j["in_bytes"] = g.in_bytes;  // bf16 models leave it out
  return j;
}

double HardwareProfile::attention_fwd_s(double bh, double seq, double d) const {
  return attention_lookup(attention, bh, seq, d, true);
}
double HardwareProfile::attention_bwd_s(double bh, double seq, double d) const {
  return attention_lookup(attention, bh, seq, d, false);
}

namespace {

// Bytes per second at `bytes` on a curve of points sorted by bytes (check_tables): linear in
// ln(bytes) between neighbours, clamped at the ends; 0 for no points.
template <class It>
double curve_bandwidth(It first, It last, double bytes) {
  if (first == last) return 0;
  if (bytes <= first->bytes) return first->bytes_per_s;
  if (bytes >= std::prev(last)->bytes) return std::prev(last)->bytes_per_s;
  It hi = first;
  while (hi->bytes < bytes) ++hi;
  const auto lo = std::prev(hi);
  return lerp_log(bytes, lo->bytes, lo->bytes_per_s, hi->bytes, hi->bytes_per_s);
}

}  // namespace

double HardwareProfile::bandwidth(double bytes) const {
  return curve_bandwidth(memory_bound.begin(), memory_bound.end(), bytes);
}

double HardwareProfile::kind_bandwidth(MemKind kind, bool backward, double bytes) const {
  for (bool pass : {backward, false}) {
    auto in_curve = [&](const ProfileKindBandwidth& b) { return b.kind == kind && b.backward == pass; };
    const auto first = std::find_if(memory_by_kind.begin(), memory_by_kind.end(), in_curve);
    const auto last = std::find_if_not(first, memory_by_kind.end(), in_curve);
    if (first != last) return curve_bandwidth(first, last, bytes);
  }
  return 0;
}

bool HardwareProfile::has_kind(MemKind kind) const {
  return std::any_of(memory_by_kind.begin(), memory_by_kind.end(), [&](const auto& b) { return b.kind == kind; });
}

double HardwareProfile::memory_s(double bytes) const {
  const double bw = bandwidth(bytes);
  return bw > 0 ? bytes / bw : 0;
}

double HardwareProfile::optimizer_s(double params) const {
  if (optimizer.params <= 0) return 0;
  return (optimizer.adamw_s + optimizer.grad_norm_s) * params / static_cast<double>(optimizer.params);
}

// "memory_by_kind": optional; each point's kind one of sim/mem_kind.hpp's but the plain
// elementwise sum (that is memory_bound), its pass forward or backward.
static void read_memory_by_kind(ObjectReader& r, const nlohmann::json& j, HardwareProfile& p) {
  read_profile_array(r, j, "memory_by_kind", false, [&p](ObjectReader& e) {
    ProfileKindBandwidth b;
    std::string kind, pass;
    e.string("kind", kind);
    e.string("pass", pass);
    if (e.failed()) return;
    const auto k = mem_kind_from_name(kind);
    if (!k || *k == MemKind::elementwise) {
      std::string names;
      for (const MemKindName& x : kMemKinds)
        if (x.kind != MemKind::elementwise) names += std::string(names.empty() ? "" : ", ") + x.name;
      e.fail("kind", "must be one of " + names + " (the plain elementwise sum is memory_bound) (got \"" + kind + "\")");
      return;
    }
    if (pass != "forward" && pass != "backward") {
      e.fail("pass", "must be forward or backward (got \"" + pass + "\")");
      return;
    }
    b.kind = *k;
    b.backward = pass == "backward";
    e.number("bytes", b.bytes, 1, false, static_cast<double>(limits::kBytes));
    e.number("bytes_per_s", b.bytes_per_s, 1, false, limits::kRate);
    p.memory_by_kind.push_back(b);
  });
}

Expected<HardwareProfile> profile_from_json(const nlohmann::json& j, const std::string& where) {
  HardwareProfile p;
  ObjectReader r(j, where);
  std::string schema;
  r.string("schema", schema);
  if (!r.failed() && schema != kProfileSchema)
    r.fail("schema", std::string("must be \"") + kProfileSchema + "\" (got \"" + schema + "\")");
  r.string("name", p.name);
  r.string("device", p.device);
  r.string("source", p.source);
  r.number("kernel_launch_s", p.kernel_launch_s, 0, false, limits::kTimeS);
  auto gemm_entry = [](std::vector<ProfileGemm>& out, bool kind) {
    return [&out, kind](ObjectReader& e) {
      ProfileGemm g;
      if (kind) e.string("kind", g.kind);
      e.integer("m", g.m, 1, kMaxDim);
      e.integer("n", g.n, 1, kMaxDim);
      e.integer("k", g.k, 1, kMaxDim);
      e.number("seconds", g.seconds, 0, true, kMaxSeconds);
      if (!kind) e.opt_boolean("accumulate_fp32", g.accumulate_fp32);
      out.push_back(g);
    };
  };
  read_profile_array(r, j, "gemm", true, gemm_entry(p.gemm, false));
  read_profile_array(r, j, "gemm_variants", false, gemm_entry(p.gemm_variants, true));
  read_profile_array(r, j, "gemm_fp8", false, gemm_entry(p.gemm_fp8, false));
  read_profile_array(r, j, "attention", true, [&p](ObjectReader& e) {
    ProfileAttention a;
    e.integer("bh", a.bh, 1, kMaxDim);
    e.integer("seq", a.seq, 1, limits::kSeq);
    e.integer("head_dim", a.head_dim, 1, limits::kHidden);
    e.number("fwd_s", a.fwd_s, 0, true, kMaxSeconds);
    e.number("bwd_s", a.bwd_s, 0, true, kMaxSeconds);
    p.attention.push_back(a);
  });
  read_profile_array(r, j, "memory_bound", true, [&p](ObjectReader& e) {
    ProfileBandwidth b;
    e.number("bytes", b.bytes, 1, false, static_cast<double>(limits::kBytes));
    e.number("bytes_per_s", b.bytes_per_s, 1, false, limits::kRate);
    p.memory_bound.push_back(b);
  });
  read_memory_by_kind(r, j, p);
  if (auto* o = r.object("optimizer")) {
    ObjectReader orr(r, "optimizer", *o);
    orr.integer("params", p.optimizer.params, 1, limits::kParams);
    orr.number("adamw_s", p.optimizer.adamw_s, 0, true, kMaxSeconds);
    orr.number("grad_norm_s", p.optimizer.grad_norm_s, 0, false, kMaxSeconds);
    orr.number("bytes_per_param", p.optimizer.bytes_per_param, 0, true, 1024);
    orr.reject_unknown_keys();
  }
  for (auto [key, model] : {std::pair{"gemm_model", &p.gemm_model}, {"gemm_model_fp8", &p.gemm_model_fp8}})
    if (r.has(key))
      if (auto* gm = r.object(key)) {
        ObjectReader gr(r, key, *gm);
        read_gemm_model(gr, *model);
        gr.reject_unknown_keys();
      }
  if (auto* m = r.object("memory")) {
    ObjectReader mr(r, "memory", *m);
    auto& pm = p.memory;
    mr.integer("cuda_context_bytes", pm.cuda_context_bytes, 0, limits::kBytes);
    mr.integer("cublaslt_handle_bytes", pm.cublaslt_handle_bytes, 0, limits::kBytes);
    mr.integer("kernel_modules_bytes", pm.kernel_modules_bytes, 0, limits::kBytes);
    mr.integer("workspace_bytes", pm.workspace_bytes, 0, limits::kBytes);
    mr.integer("malloc_granularity_bytes", pm.malloc_granularity_bytes, 0, limits::kBytes);
    mr.reject_unknown_keys();
  }
  r.reject_unknown_keys();
  check_tables(r, p);
  if (r.failed()) return *r.error();
  return p;
}

nlohmann::json to_json(const HardwareProfile& p) {
  auto gemms = [](const std::vector<ProfileGemm>& v, bool kind) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& g : v) {
      nlohmann::json e;
      if (kind) e["kind"] = g.kind;
      e["m"] = g.m;
      e["n"] = g.n;
      e["k"] = g.k;
      e["seconds"] = g.seconds;
      if (g.accumulate_fp32) e["accumulate_fp32"] = true;
      a.push_back(e);
    }
    return a;
  };
  nlohmann::json att = nlohmann::json::array();
  for (const auto& a : p.attention)
    att.push_back({{"bh", a.bh}, {"seq", a.seq}, {"head_dim", a.head_dim}, {"fwd_s", a.fwd_s}, {"bwd_s", a.bwd_s}});
  nlohmann::json bw = nlohmann::json::array();
  for (const auto& b : p.memory_bound) bw.push_back({{"bytes", b.bytes}, {"bytes_per_s", b.bytes_per_s}});
  nlohmann::json j = {{"schema", kProfileSchema},
                      {"name", p.name},
                      {"device", p.device},
                      {"source", p.source},
                      {"kernel_launch_s", p.kernel_launch_s},
                      {"gemm", gemms(p.gemm, false)}};
  if (!p.gemm_variants.empty()) j["gemm_variants"] = gemms(p.gemm_variants, true);
  if (p.gemm_model.valid()) j["gemm_model"] = to_json(p.gemm_model);
  if (!p.gemm_fp8.empty()) j["gemm_fp8"] = gemms(p.gemm_fp8, false);
  if (p.gemm_model_fp8.valid()) j["gemm_model_fp8"] = to_json(p.gemm_model_fp8);
  j["attention"] = att;
  j["memory_bound"] = bw;
  if (!p.memory_by_kind.empty()) {
    nlohmann::json kinds = nlohmann::json::array();
    for (const auto& b : p.memory_by_kind)
      kinds.push_back({{"kind", mem_kind_name(b.kind)},
                       {"pass", b.backward ? "backward" : "forward"},
                       {"bytes", b.bytes},
                       {"bytes_per_s", b.bytes_per_s}});
    j["memory_by_kind"] = kinds;
  }
  j["optimizer"] = {{"params", p.optimizer.params},
                    {"adamw_s", p.optimizer.adamw_s},
                    {"grad_norm_s", p.optimizer.grad_norm_s},
                    {"bytes_per_param", p.optimizer.bytes_per_param}};
  j["memory"] = {{"cuda_context_bytes", p.memory.cuda_context_bytes},
                 {"cublaslt_handle_bytes", p.memory.cublaslt_handle_bytes},
                 {"kernel_modules_bytes", p.memory.kernel_modules_bytes},
                 {"workspace_bytes", p.memory.workspace_bytes},
                 {"malloc_granularity_bytes", p.memory.malloc_granularity_bytes}};
  return j;
}

Expected<std::shared_ptr<const HardwareProfile>> load_profile(const std::string& path,
                                                              const std::string& relative_to) {
  namespace fs = std::filesystem;
  std::vector<fs::path> tries{fs::path(path)};
  if (fs::path(path).is_relative()) {
    if (!relative_to.empty()) tries.push_back(fs::path(relative_to) / path);
#ifdef LOOM_SOURCE_DIR
    tries.push_back(fs::path(LOOM_SOURCE_DIR) / path);
#endif
  }
  std::error_code ec;
  fs::path found;
  for (const auto& t : tries)
    if (fs::is_regular_file(t, ec)) {
      found = t;
      break;
    }
  if (found.empty()) return Error{path + ": no such profile file (tried from the working directory" +
                                  std::string(relative_to.empty() ? "" : ", beside the cluster file") +
                                  " and the repository root)"};
  // Profiles are read once per process (a planner search loads the same cluster many times).
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const HardwareProfile>> cache;
  const std::string key = fs::weakly_canonical(found, ec).string();
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  auto j = read_json_file(found.string());
  if (!j) return j.error();
  auto p = profile_from_json(*j, found.string());
  if (!p) return p.error();
  auto sp = std::make_shared<const HardwareProfile>(std::move(*p));
  cache.emplace(key, sp);
  return sp;
}

}  // namespace loom
