#include "sim/stage_split.hpp"

#include <algorithm>
#include <charconv>

namespace loom {

namespace {
std::string split_str(int64_t v) { return std::to_string(v); }
int64_t split_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t m) { return split_ceil_div(a, m) * m; }
}  // namespace

// Megatron-LM's account-for flags in the order the planner offers and export prefers them: both,
// the loss alone, the embedding alone.
constexpr AccountFor kAccountForOrder[] = {{true, true}, {false, true}, {true, false}};

bool chunk_rest_fits(int64_t layers, int64_t vpp) {
  return layers % vpp == 0 || layers - (vpp - 1) * split_ceil_div(layers, vpp) >= 1;
}

Status check_stage_layers(const ModelSpec& m, const ParallelConfig& p, const FieldNamer& name) {
  const auto& v = p.stage_layers;
  auto fail = [&](const std::string& rule) -> Status { return Error{name("stage_layers") + ": " + rule}; };
  if (static_cast<int64_t>(v.size()) != p.pp)
    return fail("must give one layer count per pipeline stage, pp = " + split_str(p.pp) + " (got " + split_str(static_cast<int64_t>(v.size())) +
                " entries: " + stage_layers_text(v) + ")");
  int64_t sum = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 1 || v[i] > m.layers)
      return fail("each stage must hold 1 to " + split_str(m.layers) + " layers (got " + split_str(v[i]) + " on stage " + split_str(static_cast<int64_t>(i)) + ")");
    // The short model-end chunk is the interleaved schedule's (zb-v places its chunks as a V).
    const bool end = (i == 0 || i + 1 == v.size()) && p.schedule == Schedule::interleaved;
    if (v[i] % p.vpp != 0 && (!end || !chunk_rest_fits(v[i], p.vpp)))
      return fail("each stage's layers must be a multiple of vpp " + split_str(p.vpp) +
                  ", equal per chunk, but the first and last stage's, whose first (last) chunk may hold fewer than the "
                  "others and at least 1 (got " + split_str(v[i]) + " on stage " + split_str(static_cast<int64_t>(i)) + ")");
    sum += v[i];
  }
  if (sum != m.layers) return fail("must sum to the model's " + split_str(m.layers) + " layers (got " + split_str(sum) + ")");
  return ok_status();
}

void read_stage_layers(ObjectReader& r, const nlohmann::json& j, std::vector<int64_t>& out) {
  if (r.failed() || !r.has("stage_layers")) return;
  r.skip("stage_layers");
  const nlohmann::json& v = j.at("stage_layers");
  if (!v.is_array() || v.empty() || static_cast<int64_t>(v.size()) > limits::kGpus)
    return r.fail("stage_layers", "must be an array of 1 to " + std::to_string(limits::kGpus) + " layer counts");
  for (const auto& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 1 || x.get<int64_t>() > limits::kLayers)
      return r.fail("stage_layers", "each entry must be an integer in [1, " + std::to_string(limits::kLayers) +
                                        "] (got " + x.dump() + ")");
    out.push_back(x.get<int64_t>());
  }
}

std::string stage_layers_text(const std::vector<int64_t>& v) {
  std::string out;
  for (int64_t x : v) {
    if (!out.empty()) out += ',';
    out += split_str(x);
  }
  return out;
}

Expected<std::vector<int64_t>> parse_stage_layers(const std::string& text, const std::string& where) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || v < 1 || v > limits::kLayers)
      return make_error(where, "must be layer counts per stage, integers in [1, " + split_str(limits::kLayers) +
                                   "] separated by commas (got \"" + text + "\")");
    if (static_cast<int64_t>(out.size()) >= limits::kGpus)
      return make_error(where, "must have at most " + split_str(limits::kGpus) + " entries");
    out.push_back(v);
    if (end == text.size()) return out;
    start = end + 1;
  }
}

std::vector<std::vector<int64_t>> stage_split_candidates(int64_t L, int64_t pp, int64_t vpp) {
  std::vector<std::vector<int64_t>> out;
  if (L % (pp * vpp) == 0) out.push_back({});
  if (pp < 2) return out.empty() ? std::vector<std::vector<int64_t>>{{}} : out;
  auto even = [&](const std::vector<int64_t>& v) {
    return std::all_of(v.begin(), v.end(), [&](int64_t x) { return x * pp == L; });
  };
  auto add = [&](std::vector<int64_t> v) {
    // The equal split is {} where pp x vpp divides the layers; otherwise only a short first or
    // last chunk lets it run, and it is offered as such.
    if ((even(v) && L % (pp * vpp) == 0) || std::find(out.begin(), out.end(), v) != out.end()) return;
    out.push_back(std::move(v));
  };
  auto offer = [&](int64_t c, int64_t first, int64_t last) {
    if (first < vpp || last < vpp || first > c || last > c || !chunk_rest_fits(first, vpp) ||
        !chunk_rest_fits(last, vpp))
      return;
    std::vector<int64_t> v(static_cast<size_t>(pp), c);
    v.front() = first, v.back() = last;
    add(std::move(v));
  };
  const int64_t c0 = round_up(split_ceil_div(L, pp), vpp);
  for (int64_t c : {c0, c0 + vpp}) {
    if (pp == 2) {  // two stages: c is the first stage's count, the last takes the rest
      offer(L, c, L - c);
      continue;
    }
    const int64_t rest = L - (pp - 2) * c;  // what the first and last stage share
    offer(c, c, rest - c);
    const int64_t half = round_up(split_ceil_div(rest, 2), vpp);
    offer(c, half, rest - half);
    if (half != split_ceil_div(rest, 2)) offer(c, split_ceil_div(rest, 2), rest - split_ceil_div(rest, 2));
  }
  for (const AccountFor a : kAccountForOrder) {
    auto v = megatron_account_split(L, pp, vpp, a, "");
    if (v && !v->empty()) add(std::move(*v));
  }
  if (out.empty()) out.push_back({});
  return out;
}

Expected<std::vector<int64_t>> megatron_account_split(int64_t layers, int64_t pp, int64_t vpp, AccountFor a,
                                                      const std::string& where) {
  const int64_t total = layers + a.embedding + a.loss;
  if (!a.embedding && !a.loss) return std::vector<int64_t>{};
  if (pp < 2 || total % pp != 0 || (total / pp) % vpp != 0)
    return make_error(where, "with the embedding and the loss counted as layers, " + split_str(layers) + " + " +
                                 split_str(a.embedding + a.loss) + " layers must split evenly over pp " + split_str(pp) +
                                 " stages of vpp " + split_str(vpp) + " chunks");
  const int64_t c = total / pp;
  if (c / vpp < 2) return make_error(where, "the first or last chunk would hold no layer (" + split_str(c / vpp) + " per chunk)");
  std::vector<int64_t> v(static_cast<size_t>(pp), c);
  v.front() -= a.embedding;
  v.back() -= a.loss;
  return v;
}

std::optional<AccountFor> megatron_account_for(const std::vector<int64_t>& v, int64_t layers, int64_t vpp) {
  const int64_t pp = static_cast<int64_t>(v.size());
  for (const AccountFor a : kAccountForOrder) {
    auto s = megatron_account_split(layers, pp, vpp, a, "");
    if (s && *s == v) return a;
  }
  return std::nullopt;
}

std::optional<FirstLastLayers> megatron_first_last(const std::vector<int64_t>& v) {
  if (v.size() < 2) return FirstLastLayers{};
  if (v.size() == 2) return v[0] == v[1] ? FirstLastLayers{} : FirstLastLayers{v[0], v[1]};
  const int64_t c = v[1];
  for (size_t i = 1; i + 1 < v.size(); ++i)
    if (v[i] != c) return std::nullopt;
  return FirstLastLayers{v.front() == c ? 0 : v.front(), v.back() == c ? 0 : v.back()};
}

Expected<std::vector<int64_t>> megatron_split(int64_t layers, int64_t pp, int64_t first, int64_t last,
                                              const std::string& where) {
  const int64_t given = (first > 0) + (last > 0), left = layers - first - last, stages = pp - given;
  if (pp < 2 || given == 0) return std::vector<int64_t>{};
  if (left < 0 || (stages == 0 && left != 0) || (stages > 0 && (left < stages || left % stages != 0)))
    return make_error(where, "the layers left by --decoder-first/last-pipeline-num-layers (" + split_str(layers) + " - " +
                                 split_str(first + last) + ") must split evenly over the other " + split_str(stages) + " stages");
  const int64_t c = stages > 0 ? left / stages : 0;
  std::vector<int64_t> v(static_cast<size_t>(pp), c);
  if (first > 0) v.front() = first;
  if (last > 0) v.back() = last;
  if (std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v.front(); })) return std::vector<int64_t>{};
  return v;
}

Expected<std::vector<int64_t>> torchtitan_split(int64_t layers, int64_t stages, int64_t a, int64_t b,
                                                const std::string& where) {
  if (stages <= 1) return std::vector<int64_t>(1, layers);
  const int64_t E = layers + a + b, base = E / stages, extra = E % stages;
  if (base < 1 || a > base || b > base)
    return make_error(where, "torchtitan needs each less-layers count <= the even share of (layers + both) / stages = " +
                                 split_str(base) + " (got " + split_str(a) + " and " + split_str(b) + ")");
  std::vector<int64_t> v;
  for (int64_t i = 0; i < stages; ++i) v.push_back(base + (i < extra ? 1 : 0) - (i == 0 ? a : i == stages - 1 ? b : 0));
  if (std::any_of(v.begin(), v.end(), [](int64_t x) { return x < 1; }))
    return make_error(where, "torchtitan would leave a stage without layers");
  return v;
}

}  // namespace loom
