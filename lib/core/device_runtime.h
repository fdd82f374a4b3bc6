// What a run needs of its device beyond tensors: bf16 autocast for a scope, and the peak memory so far.
// The one file of core that needs LibTorch (the fuzz build, which has none, leaves it out).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace lf {

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

}  // namespace lf
