// Runs the built `loom` binary and captures its exit code, stdout and stderr.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

struct LoomRun {
  int code = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline LoomRun run_loom(const std::string& args) {
  static int counter = 0;
  auto dir = std::filesystem::temp_directory_path() / ("loom_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string out = (dir / ("out" + std::to_string(counter))).string();
  const std::string err = (dir / ("err" + std::to_string(counter++))).string();
  const std::string cmd = std::string(LOOM_BIN) + " " + args + " >" + out + " 2>" + err;
  int status = std::system(cmd.c_str());
  LoomRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Writes `text` to a fresh temporary file and returns its path.
inline std::string temp_file(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / ("loom_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}
