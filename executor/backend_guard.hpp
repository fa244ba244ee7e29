// The one place a loadable module's entry (executor/backend_entry.h) catches what would otherwise
// cross into `loom` as a C++ exception: the same line and exit code as `loom`'s own main for an
// exception no library function turned into an Error value, which is a bug.
#pragma once
#include <cstdio>
#include <exception>
#include <new>

namespace loom::exec {

inline constexpr int kBackendInternalError = 3;  // planner/cli/main.cpp's internal error code

template <class F>
int guarded_entry(const char* what, F&& f) {
  const char* why = "an exception of unknown type";
  try {
    return f();
  } catch (const std::bad_alloc&) {
    why = "out of memory (std::bad_alloc)";  // no formatting: it might itself need memory
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom: internal error: %s: %s (this is a bug; please report it)\n", what, e.what());
    return kBackendInternalError;
  } catch (...) {
  }
  std::fprintf(stderr, "loom: internal error: %s: %s (this is a bug; please report it)\n", what, why);
  return kBackendInternalError;
}

}  // namespace loom::exec
