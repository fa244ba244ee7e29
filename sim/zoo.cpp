#include "sim/zoo.hpp"

#include <filesystem>

#include "sim/json_reader.hpp"
#include "sim/spec_json.hpp"

namespace loom {

namespace {

const ZooEntry* find(const std::vector<ZooEntry>& zoo, const std::string& name) {
  for (const auto& e : zoo)
    if (e.name == name) return &e;
  return nullptr;
}

std::string names(const std::vector<ZooEntry>& zoo) {
  std::string out;
  for (const auto& e : zoo) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

// The document and the name its errors use: "zoo:gpt3-175b" or the path.
Expected<std::pair<nlohmann::json, std::string>> resolve(const std::vector<ZooEntry>& zoo,
                                                          const std::string& name_or_path,
                                                          const std::string& flag, const char* what) {
  if (const ZooEntry* e = find(zoo, name_or_path)) {
    std::string where = "zoo:" + name_or_path;
    auto j = parse_json_text(std::string(e->json), where);
    if (!j) return j.error();
    return std::pair{std::move(*j), where};
  }
  std::error_code ec;
  if (!std::filesystem::exists(name_or_path, ec))
    return make_error(flag, "\"" + name_or_path + "\" is neither a zoo " + what + " (" + names(zoo) +
                                ") nor an existing file");
  auto j = read_json_file(name_or_path);
  if (!j) return j.error();
  return std::pair{std::move(*j), name_or_path};
}

}  // namespace

Expected<ModelSpec> load_model(const std::string& name_or_path, const std::string& flag,
                               std::vector<std::string>* ignored_keys) {
  auto doc = resolve(model_zoo(), name_or_path, flag, "model");
  if (!doc) return doc.error();
  return model_from_json(doc->first, doc->second, ignored_keys);
}

Expected<ClusterSpec> load_cluster(const std::string& name_or_path, const std::string& flag) {
  auto doc = resolve(cluster_zoo(), name_or_path, flag, "cluster");
  if (!doc) return doc.error();
  return cluster_from_json(doc->first, doc->second);
}

}  // namespace loom
