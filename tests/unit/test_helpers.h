// Helpers shared by the unit tests: temporary directories and files that clean up after themselves.
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/error.h"

namespace lf::test {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("logitfuse-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string file(const std::string& name, const std::string& content) const {
    const auto p = path / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// The one-line message (hint included) of the lf::Error that `f` throws; "" if it throws none.
template <class F>
std::string error_text(F&& f) {
  try {
    f();
  } catch (const lf::Error& e) {
    return e.one_line();
  }
  return "";
}

}  // namespace lf::test
