// Numeric flags that mean what a person reads. CLI11 converts integers with strtoll in base 0,
// so "010" would be octal eight, "0x10" sixteen, and a value beyond int64 is clamped to 2^63 - 1
// without a word; floats go through strtold, which takes "nan", "inf" and hex floats. These
// validators run on the text before that conversion (attach them with ->transform(), since
// Integer rewrites the text without its leading zeros):
//   Integer(min, max): decimal digits with an optional sign, within [min, max]; "010" is ten.
//   Number(min, max):  a finite decimal number ("1.5", "2e-3") within [min, max] (or (min, max]
//                      with MinExclusive); nan, inf and hex are refused.
// A refusal is CLI11's ValidationError: "--flag: <rule> (got <text>)", one line, exit 2.
#pragma once
#include <CLI/CLI.hpp>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

#include "sim/validate.hpp"

namespace loom::cli {

namespace flag_detail {

inline std::string got(const std::string& text) { return " (got " + text + ")"; }

inline std::string format_number(double d) {
  std::ostringstream ss;
  ss << d;
  return ss.str();
}

// Decimal syntax: [+-] digits [. digits] [(e|E) [+-] digits], at least one mantissa digit.
inline bool is_decimal_number(const std::string& s) {
  size_t i = 0, digits = 0;
  auto run = [&] {
    size_t n = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++n;
    return n;
  };
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  digits += run();
  if (i < s.size() && s[i] == '.') ++i, digits += run();
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (run() == 0) return false;
  }
  return i == s.size();
}

}  // namespace flag_detail

inline CLI::Validator Integer(int64_t min, int64_t max) {
  auto check = [min, max](std::string& text) -> std::string {
    const std::string range = "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
    size_t start = (!text.empty() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
    if (start == text.size() || text.find_first_not_of("0123456789", start) != std::string::npos)
      return "must be " + range + " in decimal digits" + flag_detail::got(text);
    const bool negative = text[0] == '-';
    while (start + 1 < text.size() && text[start] == '0') ++start;  // "010" is ten, not octal eight
    std::string digits = (negative ? "-" : "") + text.substr(start);
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec == std::errc::result_out_of_range || end != digits.data() + digits.size())
      return std::string("must be ") + (negative ? ">= " + std::to_string(min) : "<= " + std::to_string(max)) +
             flag_detail::got(text);
    if (v < min) return "must be >= " + std::to_string(min) + flag_detail::got(text);
    if (v > max) return "must be <= " + std::to_string(max) + flag_detail::got(text);
    text = std::to_string(v);
    return {};
  };
  return CLI::Validator(check, "INT in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
}

enum class Bound { inclusive, exclusive };

inline CLI::Validator Number(double min, double max, Bound min_bound = Bound::inclusive) {
  auto check = [min, max, min_bound](std::string& text) -> std::string {
    using flag_detail::format_number;
    if (!flag_detail::is_decimal_number(text))
      return "must be a finite decimal number" + flag_detail::got(text);
    errno = 0;
    const double v = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(v) || errno == ERANGE)
      return "must be a finite number of ordinary size" + flag_detail::got(text);
    const bool low = min_bound == Bound::exclusive ? !(v > min) : !(v >= min);
    if (low) return std::string("must be ") + (min_bound == Bound::exclusive ? "> " : ">= ") + format_number(min) +
                    flag_detail::got(text);
    if (v > max) return "must be <= " + format_number(max) + flag_detail::got(text);
    return {};
  };
  return CLI::Validator(check, "NUMBER");
}

}  // namespace loom::cli
