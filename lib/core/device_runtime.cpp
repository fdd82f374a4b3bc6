#include "core/device_runtime.h"

#include <ATen/autocast_mode.h>
#include <sys/resource.h>

#include <fstream>
#include <string>

#ifdef LOGITFUSE_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace lf {

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

}  // namespace lf
