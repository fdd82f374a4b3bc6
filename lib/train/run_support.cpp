#include "train/run_support.h"

#include <fstream>
#include <string>

#include <ATen/autocast_mode.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

#ifdef LOGITFUSE_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "core/error.h"

namespace lf {

namespace {
std::atomic<int> g_stop_signal{0};
void on_signal(int signal) { g_stop_signal.store(signal); }
}  // namespace

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int s : {SIGINT, SIGTERM, SIGUSR1}) sigaction(s, &action, nullptr);
}

int stop_requested() { return g_stop_signal.load(); }
void clear_stop_request() { g_stop_signal.store(0); }

AutocastGuard::AutocastGuard(c10::DeviceType device, bool enabled) : device_(device), enabled_(enabled) {
  if (!enabled_) return;
  previous_enabled_ = at::autocast::is_autocast_enabled(device_);
  previous_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, previous_enabled_);
  at::autocast::set_autocast_dtype(device_, previous_dtype_);
}

double peak_memory_bytes(const c10::Device& device) {
#ifdef LOGITFUSE_HAVE_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak);
  }
#endif
  // VmHWM is this process's own high-water mark. getrusage's ru_maxrss is not: Linux carries the
  // parent's peak across fork and exec, so a run started by a large process (a test harness holding
  // models) would report the parent's memory.
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024.0;  // "VmHWM:   1234 kB"
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;
}

MetricsLog::MetricsLog(const std::string& path, int64_t total_steps, int64_t first_step)
    : total_(total_steps), first_(first_step), terminal_(isatty(STDOUT_FILENO) == 1), start_(std::chrono::steady_clock::now()) {
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) throw RuntimeFailure(path + ": cannot open for appending");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const std::string& json_line) {
  std::fputs(json_line.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

void MetricsLog::progress(int64_t step, double loss, double lr) {
  if (!terminal_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(step - first_);
  const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : 0.0;
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
  std::string bar(filled, '=');
  bar.resize(width, ' ');
  std::printf("\r[%s] %lld/%lld loss %.4f lr %.2e ETA %02d:%02d ", bar.c_str(), static_cast<long long>(step),
              static_cast<long long>(total_), loss, lr, static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  std::fflush(stdout);
}

void MetricsLog::finish_progress() {
  if (terminal_) std::printf("\n");
}

}  // namespace lf
