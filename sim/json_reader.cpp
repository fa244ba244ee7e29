#include "sim/json_reader.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace loom {

namespace {

std::string pointer_token(const std::string& key) {  // RFC 6901: "~" -> "~0", "/" -> "~1"
  std::string out;
  for (char c : key) out += c == '~' ? std::string("~0") : c == '/' ? std::string("~1") : std::string(1, c);
  return out;
}

// A parser callback that follows where the parser is, so the first key seen twice in one
// object can be named by its JSON pointer. RFC 8259 leaves repeated names undefined and
// nlohmann::json keeps the last one silently; loom refuses them. Containers nested deeper
// than kMaxJsonDepth are dropped (returning false) and refused after the parse.
class KeyChecker {
 public:
  bool operator()(int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    const bool opens = ev == E::object_start || ev == E::array_start;
    if ((opens || ev == E::value) && !stack_.empty() && stack_.back().array) ++stack_.back().index;
    if (opens && depth >= kMaxJsonDepth) {
      if (!error_) error_ = here() + ": nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
      return false;
    }
    if (opens) stack_.push_back({ev == E::array_start, -1, {}, ""});
    if ((ev == E::object_end || ev == E::array_end) && !stack_.empty()) stack_.pop_back();
    if (ev == E::key && !stack_.empty()) {
      Frame& f = stack_.back();
      f.key = parsed.get<std::string>();
      if (!f.keys.insert(f.key).second && !error_) error_ = here() + ": duplicate key (each key may appear once)";
    }
    return true;
  }
  const std::optional<std::string>& error() const { return error_; }

 private:
  struct Frame {
    bool array = false;
    int64_t index = -1;
    std::set<std::string> keys;
    std::string key;
  };
  std::string here() const {
    std::string p;
    for (const Frame& f : stack_) p += "/" + (f.array ? std::to_string(f.index) : pointer_token(f.key));
    return p.empty() ? "/" : p;
  }
  std::vector<Frame> stack_;
  std::optional<std::string> error_;
};

}  // namespace

Expected<nlohmann::json> parse_json_text(const std::string& text, const std::string& where) {
  KeyChecker keys;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, std::ref(keys));
  } catch (const nlohmann::json::exception& e) {  // parse_error, number overflow (out_of_range)
    // e.byte is the position; the message text after "parse error" names the rule.
    std::string what = e.what();
    auto at = what.find("parse error");
    return make_error(where, "malformed JSON: " + (at == std::string::npos ? what.substr(what.find(']') + 2) : what.substr(at)));
  }
  if (keys.error()) return make_error(where, *keys.error());
  return j;
}

Expected<std::string> read_text_file(const std::string& path, int64_t max_bytes) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return make_error(path, !std::filesystem::exists(path, ec)           ? "no such file"
                            : std::filesystem::is_directory(path, ec) ? "is a directory, not a file"
                                                                      : "not a regular file (a device or a pipe)");
  // Checked before reading: a huge file is refused without reading it into memory.
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return make_error(path, "cannot be opened for reading: " + ec.message());
  if (size > static_cast<uintmax_t>(max_bytes))
    return make_error(path, "file is larger than loom reads (" + std::to_string(max_bytes >> 20) +
                                " MiB; got " + std::to_string(size) + " bytes)");
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path, "cannot be opened for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Expected<nlohmann::json> read_json_file(const std::string& path, int64_t max_bytes) {
  auto text = read_text_file(path, max_bytes);
  if (!text) return text.error();
  return parse_json_text(*text, path);
}

Status write_text_file_atomic(const std::string& path, const std::string& text) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return make_error(path, "is a directory: name a file to write");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return make_error(path, "cannot be opened for writing");
    out << text;
    if (!out.flush()) {
      out.close();
      std::filesystem::remove(tmp, ec);  // nothing left behind
      return make_error(path, "write failed");
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    return make_error(path, "rename failed: " + why);
  }
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

static std::string format_number(double d) {
  std::ostringstream ss;
  ss << d;
  return ss.str();
}

// An integer, or a float with an integral value ("1e6", "2048.0"); a value outside int64 is
// refused as larger than `max` rather than rounded.
static void read_integer(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                         int64_t& out, int64_t min, int64_t max) {
  if (!v) return;
  const std::string got = " (got ";
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    return r.fail(key, "must be <= " + std::to_string(max) + got + std::to_string(v->get<uint64_t>()) + ")");
  int64_t x = 0;
  if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float()) {
    const double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d)) return r.fail(key, "must be an integer");
    if (d >= 9.2e18) return r.fail(key, "must be <= " + std::to_string(max) + got + format_number(d) + ")");
    if (d <= -9.2e18) return r.fail(key, "must be >= " + std::to_string(min) + got + format_number(d) + ")");
    x = static_cast<int64_t>(d);
  } else {
    return r.fail(key, "must be an integer");
  }
  if (x < min) return r.fail(key, "must be >= " + std::to_string(min) + got + std::to_string(x) + ")");
  if (x > max) return r.fail(key, "must be <= " + std::to_string(max) + got + std::to_string(x) + ")");
  out = x;
}

static void read_number(ObjectReader& r, const nlohmann::json* v, const std::string& key,
                        double& out, double min, bool min_exclusive, double max) {
  if (!v) return;
  if (!v->is_number()) return r.fail(key, "must be a number");
  double x = v->get<double>();
  if (!std::isfinite(x)) return r.fail(key, "must be finite");
  if (min_exclusive ? !(x > min) : !(x >= min))
    return r.fail(key, std::string("must be ") + (min_exclusive ? "> " : ">= ") + format_number(min) +
                           " (got " + format_number(x) + ")");
  if (x > max) return r.fail(key, "must be <= " + format_number(max) + " (got " + format_number(x) + ")");
  out = x;
}

void ObjectReader::integer(const std::string& key, int64_t& out, int64_t min, int64_t max) {
  read_integer(*this, member(key, true), key, out, min, max);
}
void ObjectReader::opt_integer(const std::string& key, int64_t& out, int64_t min, int64_t max) {
  read_integer(*this, member(key, false), key, out, min, max);
}
void ObjectReader::number(const std::string& key, double& out, double min, bool min_exclusive, double max) {
  read_number(*this, member(key, true), key, out, min, min_exclusive, max);
}
void ObjectReader::opt_number(const std::string& key, double& out, double min, bool min_exclusive, double max) {
  read_number(*this, member(key, false), key, out, min, min_exclusive, max);
}

static void read_bool(ObjectReader& r, const nlohmann::json* v, const std::string& key, bool& out) {
  if (!v) return;
  if (!v->is_boolean()) return r.fail(key, "must be true or false");
  out = v->get<bool>();
}
void ObjectReader::boolean(const std::string& key, bool& out) { read_bool(*this, member(key, true), key, out); }
void ObjectReader::opt_boolean(const std::string& key, bool& out) { read_bool(*this, member(key, false), key, out); }
void ObjectReader::opt_boolean(const std::string& key, std::optional<bool>& out) {
  const nlohmann::json* v = member(key, false);
  if (!v) return;
  bool b = false;
  read_bool(*this, v, key, b);
  if (!failed()) out = b;
}

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
