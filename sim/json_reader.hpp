// Strict reading of one JSON object: unknown keys are errors (as in Calculon's schema), so a
// misspelt field is refused instead of silently taking its default.
// Every accessor records the first broken rule as "<where>: <json-pointer>: <rule>" and
// later calls become no-ops, so a loader reads top to bottom and checks `error()` once.
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "sim/expected.hpp"

namespace loom {

// The largest input file loom reads: model, cluster, plan, profile, report and checkpoint
// index files are a few KiB, so 16 MiB is far above any real one, and the parsed document
// (about ten times the text) stays small. A larger file is refused before it is read.
inline constexpr int64_t kMaxJsonFileBytes = int64_t{16} << 20;
// Chrome traces (`loom compare` of a predicted and a measured trace) hold one event per op
// and rank, so they get a larger bound.
inline constexpr int64_t kMaxTraceFileBytes = int64_t{256} << 20;
// Objects and arrays nested deeper than this are refused (loom's deepest schema nests 4).
inline constexpr int kMaxJsonDepth = 64;

// Parses text as JSON; an error names `where` and the parser's position. A key that appears
// twice in one object is refused (nlohmann::json would keep the last one silently), and so
// is nesting deeper than kMaxJsonDepth.
Expected<nlohmann::json> parse_json_text(const std::string& text, const std::string& where);
// Reads a whole file and parses it; a file larger than `max_bytes` is refused unread.
Expected<nlohmann::json> read_json_file(const std::string& path, int64_t max_bytes = kMaxJsonFileBytes);
Expected<std::string> read_text_file(const std::string& path, int64_t max_bytes = kMaxJsonFileBytes);
// Writes through a temporary file and a rename, so a crash never leaves half a file.
Status write_text_file_atomic(const std::string& path, const std::string& text);

class ObjectReader {
 public:
  static constexpr double kNoMax = 1.7976931348623157e308;  // DBL_MAX: finite is the only bound
  // `where` names the file or flag; `pointer` is the JSON pointer of this object ("" = root).
  // A reader must be an object; if `j` is not, the first access records that.
  ObjectReader(const nlohmann::json& j, std::string where, std::string pointer = "");
  // A reader for member `key` of `parent`, sharing the parent's error slot.
  ObjectReader(ObjectReader& parent, const std::string& key, const nlohmann::json& j);

  bool failed() const { return error_->has_value(); }
  const std::optional<Error>& error() const { return *error_; }
  void fail(const std::string& key, const std::string& rule);
  void fail_here(const std::string& rule);

  // Required members. `min` is the smallest allowed value (sizes: 1), `max` the largest
  // (sizes: a bound no real model or cluster reaches, so the arithmetic cannot wrap around).
  void integer(const std::string& key, int64_t& out, int64_t min = 1, int64_t max = INT64_MAX);
  void number(const std::string& key, double& out, double min, bool min_exclusive, double max = kNoMax);
  void boolean(const std::string& key, bool& out);
  void string(const std::string& key, std::string& out, bool allow_empty = false);
  // One of `names`; out gets its index.
  void choice(const std::string& key, const std::vector<std::string>& names, int& out);
  // Optional members: nothing happens when the key is absent.
  void opt_integer(const std::string& key, int64_t& out, int64_t min = 1, int64_t max = INT64_MAX);
  void opt_number(const std::string& key, double& out, double min, bool min_exclusive, double max = kNoMax);
  void opt_boolean(const std::string& key, bool& out);
  void opt_boolean(const std::string& key, std::optional<bool>& out);  // absent: left unset
  void opt_string(const std::string& key, std::string& out);
  void opt_choice(const std::string& key, const std::vector<std::string>& names, int& out);
  bool has(const std::string& key) const;
  // Marks a key as used without reading it (a Hugging Face null, say).
  void skip(const std::string& key) { read_.insert(key); }
  // A nested object; returns nullptr (and records the error) if absent or not an object.
  const nlohmann::json* object(const std::string& key);
  const nlohmann::json* opt_object(const std::string& key);
  std::string child_pointer(const std::string& key) const { return pointer_ + "/" + key; }
  const std::string& where() const { return where_; }
  // Members never read: unknown keys. reject_unknown_keys() makes the first one an error;
  // unread_keys() lists them (Hugging Face configs: listed once on stderr, not errors).
  std::vector<std::string> unread_keys() const;
  void reject_unknown_keys();

 private:
  const nlohmann::json* member(const std::string& key, bool required);
  const nlohmann::json& j_;
  std::string where_;
  std::string pointer_;
  std::set<std::string> read_;
  std::optional<Error> own_error_;
  std::optional<Error>* error_;
};

}  // namespace loom
