// Errors as values: every library function that can fail returns Expected<T> (or Status);
// only main() turns an Error into an exit code (2 for bad input, one line on stderr).
#pragma once
#include <string>
#include <utility>
#include <variant>

namespace loom {

// One line for the user: where (file, flag or JSON pointer) and which rule was broken.
struct Error {
  std::string message;
};

template <class T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}          // NOLINT: implicit on purpose
  Expected(Error error) : v_(std::move(error)) {}      // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  const T& value() const& { return std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// For functions with nothing to return but a possible error.
struct Ok {};
using Status = Expected<Ok>;
inline Status ok_status() { return Ok{}; }

inline Error make_error(std::string where, std::string rule) {
  return Error{std::move(where) + ": " + std::move(rule)};
}

}  // namespace loom
