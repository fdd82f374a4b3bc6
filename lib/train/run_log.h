// The run log: metrics.jsonl (one JSON object per line, appended and flushed) plus a one-line
// progress bar with ETA when stdout is a terminal, and the same lines as TensorBoard scalars.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "config/recipe.h"
#include "dist/communicator.h"
#include "io/tensorboard.h"

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

// metrics.jsonl and TensorBoard, written by rank 0 alone (a no-op on the other ranks).
class RunLog {
 public:
  RunLog(const Recipe& recipe, const Communicator& comm, int64_t total_steps, int64_t first_step);
  void write(const nlohmann::json& line);  // every number of the line also a TensorBoard scalar
  void progress(int64_t step, double loss, double lr);
  void finish_progress();

 private:
  std::optional<MetricsLog> metrics_;
  std::optional<TensorBoardWriter> tensorboard_;
};

}  // namespace lf
