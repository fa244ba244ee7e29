#include "sim/json_reader.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace loom {

Expected<nlohmann::json> parse_json_text(const std::string& text, const std::string& where) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, number overflow (out_of_range)
    // e.byte is the position; the message text after "parse error" names the rule.
    std::string what = e.what();
    auto at = what.find("parse error");
    return make_error(where, "malformed JSON: " + (at == std::string::npos ? what.substr(what.find(']') + 2) : what.substr(at)));
  }
}

Expected<std::string> read_text_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return make_error(path, "no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path, "cannot be opened for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Expected<nlohmann::json> read_json_file(const std::string& path) {
  auto text = read_text_file(path);
  if (!text) return text.error();
  return parse_json_text(*text, path);
}

Status write_text_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return make_error(path, "cannot be opened for writing");
    out << text;
    if (!out.flush()) return make_error(path, "write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error(path, "rename failed: " + ec.message());
  return ok_status();
}

ObjectReader::ObjectReader(const nlohmann::json& j, std::string where, std::string pointer)
    : j_(j), where_(std::move(where)), pointer_(std::move(pointer)), error_(&own_error_) {
  if (!j_.is_object()) fail_here("must be a JSON object");
}

ObjectReader::ObjectReader(ObjectReader& parent, const std::string& key, const nlohmann::json& j)
    : j_(j), where_(parent.where_), pointer_(parent.child_pointer(key)), error_(parent.error_) {
  if (!j_.is_object()) fail_here("must be a JSON object");
}

void ObjectReader::fail(const std::string& key, const std::string& rule) {
  if (!failed()) *error_ = Error{where_ + ": " + child_pointer(key) + ": " + rule};
}

void ObjectReader::fail_here(const std::string& rule) {
  if (!failed()) *error_ = Error{where_ + ": " + (pointer_.empty() ? "/" : pointer_) + ": " + rule};
}

bool ObjectReader::has(const std::string& key) const {
  return j_.is_object() && j_.contains(key);
}

const nlohmann::json* ObjectReader::member(const std::string& key, bool required) {
  if (failed() || !j_.is_object()) return nullptr;
  read_.insert(key);
  auto it = j_.find(key);
  if (it == j_.end()) {
    if (required) fail(key, "required field is missing");
    return nullptr;
  }
  return &*it;
}

static bool is_integral_number(const nlohmann::json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18;
}

static void read_integer(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                         int64_t& out, int64_t min) {
  if (!v) return;
  if (!is_integral_number(*v)) return r.fail(key, "must be an integer");
  int64_t x = v->is_number_float() ? static_cast<int64_t>(v->get<double>()) : v->get<int64_t>();
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    return r.fail(key, "is too large");
  if (x < min) return r.fail(key, "must be >= " + std::to_string(min) + " (got " + std::to_string(x) + ")");
  out = x;
}

static std::string format_number(double d) {
  std::ostringstream ss;
  ss << d;
  return ss.str();
}

static void read_number(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                        double& out, double min, bool min_exclusive) {
  if (!v) return;
  if (!v->is_number()) return r.fail(key, "must be a number");
  double x = v->get<double>();
  if (!std::isfinite(x)) return r.fail(key, "must be finite");
  if (min_exclusive ? !(x > min) : !(x >= min))
    return r.fail(key, std::string("must be ") + (min_exclusive ? "> " : ">= ") + format_number(min) +
                           " (got " + format_number(x) + ")");
  out = x;
}

void ObjectReader::integer(const std::string& key, int64_t& out, int64_t min) {
  read_integer(*this, member(key, true), key, out, min);
}
void ObjectReader::opt_integer(const std::string& key, int64_t& out, int64_t min) {
  read_integer(*this, member(key, false), key, out, min);
}
void ObjectReader::number(const std::string& key, double& out, double min, bool min_exclusive) {
  read_number(*this, member(key, true), key, out, min, min_exclusive);
}
void ObjectReader::opt_number(const std::string& key, double& out, double min, bool min_exclusive) {
  read_number(*this, member(key, false), key, out, min, min_exclusive);
}

static void read_bool(ObjectReader& r, const nlohmann::json* v, const std::string& key, bool& out) {
  if (!v) return;
  if (!v->is_boolean()) return r.fail(key, "must be true or false");
  out = v->get<bool>();
}
void ObjectReader::boolean(const std::string& key, bool& out) { read_bool(*this, member(key, true), key, out); }
void ObjectReader::opt_boolean(const std::string& key, bool& out) { read_bool(*this, member(key, false), key, out); }

static void read_string(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                        std::string& out, bool allow_empty) {
  if (!v) return;
  if (!v->is_string()) return r.fail(key, "must be a string");
  auto s = v->get<std::string>();
  if (s.empty() && !allow_empty) return r.fail(key, "must not be empty");
  out = s;
}
void ObjectReader::string(const std::string& key, std::string& out, bool allow_empty) {
  read_string(*this, member(key, true), key, out, allow_empty);
}
void ObjectReader::opt_string(const std::string& key, std::string& out) {
  read_string(*this, member(key, false), key, out, true);
}

static void read_choice(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                        const std::vector<std::string>& names, int& out) {
  if (!v) return;
  std::string all;
  for (auto& n : names) all += (all.empty() ? "" : ", ") + n;
  if (!v->is_string()) return r.fail(key, "must be one of " + all);
  auto s = v->get<std::string>();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == s) {
      out = static_cast<int>(i);
      return;
    }
  r.fail(key, "must be one of " + all + " (got \"" + s + "\")");
}
void ObjectReader::choice(const std::string& key, const std::vector<std::string>& names, int& out) {
  read_choice(*this, member(key, true), key, names, out);
}
void ObjectReader::opt_choice(const std::string& key, const std::vector<std::string>& names, int& out) {
  read_choice(*this, member(key, false), key, names, out);
}

const nlohmann::json* ObjectReader::object(const std::string& key) {
  auto v = member(key, true);
  if (v && !v->is_object()) {
    fail(key, "must be a JSON object");
    return nullptr;
  }
  return v;
}

const nlohmann::json* ObjectReader::opt_object(const std::string& key) {
  auto v = member(key, false);
  if (v && !v->is_object()) {
    fail(key, "must be a JSON object");
    return nullptr;
  }
  return v;
}

std::vector<std::string> ObjectReader::unread_keys() const {
  std::vector<std::string> out;
  if (!j_.is_object()) return out;
  for (auto it = j_.begin(); it != j_.end(); ++it)
    if (!read_.count(it.key())) out.push_back(it.key());
  return out;
}

void ObjectReader::reject_unknown_keys() {
  auto unknown = unread_keys();
  if (!unknown.empty()) fail(unknown.front(), "unknown field");
}

}  // namespace loom
