#include "executor/run_checks.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace loom::exec {

namespace fs = std::filesystem;

namespace {
std::string os_error_text() { return std::strerror(errno); }
}  // namespace

const std::vector<std::string>& save_fault_points() {
  static const std::vector<std::string> points = {"file-written", "agreed", "index-written", "published", "cleaned"};
  return points;
}

Status check_output_file(const std::string& path, const std::string& flag) {
  std::error_code ec;
  const fs::path p = fs::absolute(path, ec);
  if (ec || p.filename().empty()) return make_error(flag, path + " names no file");
  const fs::path dir = p.parent_path();
  if (!fs::exists(dir, ec)) return make_error(flag, "folder " + dir.string() + " does not exist");
  if (!fs::is_directory(dir, ec)) return make_error(flag, dir.string() + " is not a folder");
  // The file is written beside itself and renamed over: the folder must take new entries.
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return make_error(flag, "folder " + dir.string() + " is not writable (" + os_error_text() + ")");
  if (fs::is_directory(p, ec)) return make_error(flag, path + " is a folder, not a file");
  if (fs::exists(p, ec) && !fs::is_regular_file(p, ec))
    return make_error(flag, path + " exists and is not a regular file (loom replaces it by a rename)");
  return ok_status();
}

Status check_output_folder(const std::string& path, const std::string& flag) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  if (ec || path.empty()) return make_error(flag, "names no folder");
  if (fs::exists(p, ec)) {
    if (!fs::is_directory(p, ec)) return make_error(flag, path + " is a file, not a folder");
    if (::access(p.c_str(), W_OK | X_OK) != 0)
      return make_error(flag, "folder " + p.string() + " is not writable (" + os_error_text() + ")");
    return ok_status();
  }
  // It will be created: the nearest folder that exists must take new entries.
  fs::path up = p.parent_path();
  while (!up.empty() && !fs::exists(up, ec) && up != up.parent_path()) up = up.parent_path();
  if (!fs::is_directory(up, ec)) return make_error(flag, up.string() + " is not a folder: " + path + " cannot be created");
  if (::access(up.c_str(), W_OK | X_OK) != 0)
    return make_error(flag, "folder " + up.string() + " is not writable (" + os_error_text() + "): " + path + " cannot be created");
  return ok_status();
}

Status check_step_count(int64_t steps, const Plan& plan) {
  if (int64_t n = 0; __builtin_mul_overflow(steps, plan.train.global_batch, &n) ||
                     __builtin_mul_overflow(n, plan.train.seq + 1, &n))
    return make_error("--steps", "too many for this plan's global batch and sequence: token positions would "
                                 "overflow int64 (got " + std::to_string(steps) + ")");
  return ok_status();
}

Status check_emulation(int64_t emulate_rank, const Plan& plan, bool writes_model) {
  const int64_t world = plan.parallel.gpus();
  if (emulate_rank >= world)
    return make_error("--emulate-rank", "must be below the plan's " + std::to_string(world) + " ranks (dp " +
                                            std::to_string(plan.parallel.dp) + " x tp " + std::to_string(plan.parallel.tp) +
                                            " x pp " + std::to_string(plan.parallel.pp) + ")");
  if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE"); n != nullptr && std::atoi(n) > 1)
    return make_error("--emulate-rank", "runs one process: start it without mpirun");
  if (writes_model)
    return make_error("--emulate-rank", "trains no real model: --save, --resume and --weights-out do not apply");
  return ok_status();
}

}  // namespace loom::exec
