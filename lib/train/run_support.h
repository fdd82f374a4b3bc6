// Small pieces the trainer uses: stop signals (SIGINT, SIGTERM, SIGUSR1 for SLURM preemption),
// mixed precision, memory accounting, and the metrics log with its progress display.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace lf {

// Exit status of a run stopped by a signal after writing a checkpoint ("resume me later").
constexpr int kExitPreempted = 75;

void install_stop_handlers();
// The signal number that asked the run to stop, or 0.
int stop_requested();
void clear_stop_request();

// bf16 autocast on the device for the guard's lifetime (no-op when disabled).
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_, previous_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::ScalarType::BFloat16;
};

// Peak memory so far: the CUDA caching allocator's peak on a GPU, the process's peak RSS on CPU.
double peak_memory_bytes(const c10::Device& device);

// metrics.jsonl (one JSON object per line, appended and flushed) plus a one-line progress bar with
// ETA when stdout is a terminal.
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
