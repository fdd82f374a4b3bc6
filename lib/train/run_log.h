// The run log: metrics.jsonl (one JSON object per line, appended and flushed) plus a one-line
// progress bar with ETA when stdout is a terminal.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace lf {

class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t total_steps, int64_t first_step);
  ~MetricsLog();
  void write(const std::string& json_line);
  void progress(int64_t step, double loss, double lr);
  void finish_progress();

 private:
  std::FILE* file_ = nullptr;
  int64_t total_, first_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace lf
