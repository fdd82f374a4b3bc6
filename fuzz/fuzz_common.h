// Shared by the fuzz targets: what counts as an expected outcome, a scratch folder for parsers that
// take a path, and splitting one input into several files.
//
// A parser may refuse its input with an exit-2 error (lf::InputError, lf::NotAvailable): that is the
// promised behaviour, a one-line error. Anything else that escapes (another exception type, which
// would exit 1 with an unhelpful message), a sanitizer report, a hang or running out of memory is a
// finding: the exception goes on to libFuzzer, which reports it as a crash and saves the input.
#pragma once

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace lf::fuzz {

// Runs `body`; an exit-2 error is the expected way to refuse bad input. Returns whether it passed.
template <typename F>
bool expect_input_error_or_ok(F&& body) {
  try {
    body();
    return true;
  } catch (const lf::Error& e) {
    if (e.exit_code() != lf::kExitInput) throw;  // a RuntimeFailure for bad input is a finding
    // LOGITFUSE_FUZZ_VERBOSE=1 shows why an input was refused (to check that seeds get through).
    static const bool verbose = std::getenv("LOGITFUSE_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
    return false;
  }
}

// A folder of this process's own (parsers that take a path read files written here), on tmpfs when
// there is one. Created once, kept for the process's life.
inline const std::string& scratch_dir() {
  // Never destroyed: the exit handler below runs after static destructors would have run.
  static const std::string& dir = *new std::string([] {
    namespace fs = std::filesystem;
    const char* base = std::getenv("LOGITFUSE_FUZZ_TMP");
    fs::path root = base ? fs::path(base) : fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = root / ("logitfuse-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    spdlog::set_level(spdlog::level::off);  // parsers' warnings would drown libFuzzer's output
    return d.string();
  }());
  // Removed at exit (libFuzzer exits through exit() when it stops on its own).
  static const bool cleanup = [] {
    return std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }) == 0;
  }();
  (void)cleanup;
  return dir;
}

inline std::string write_scratch(const std::string& name, const std::string& bytes) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

inline void remove_scratch(const std::string& name) { std::filesystem::remove(scratch_dir() + "/" + name); }

// One input as several files: the parts between NUL bytes ("a\0b" -> {"a", "b"}); at most `max`
// parts (the last keeps any further NULs).
inline std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t max) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0 && parts.size() < max) {
      parts.emplace_back();
      continue;
    }
    parts.back().push_back(static_cast<char>(data[i]));
  }
  return parts;
}

}  // namespace lf::fuzz
