#include "memory/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

namespace lf {

namespace {

constexpr size_t kMinCached = size_t{1} << 20;  // below this, glibc's heap already reuses blocks
constexpr size_t kGranule = size_t{64} << 10;   // large requests are rounded up to this

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(size_t max_cached) : max_cached_(max_cached) {}

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n < kMinCached) {
      void* p = c10::alloc_cpu(n);
      return {p, p, &c10::free_cpu, cpu};
    }
    const size_t size = (n + kGranule - 1) / kGranule * kGranule;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Best fit among the cached blocks no more than a quarter larger than asked for: a step's
      // shapes repeat, so this is nearly always the block the same tensor had last step.
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4) {
        void* p = it->second;
        live_[p] = it->first;
        live_bytes_ += it->first;
        cached_bytes_ -= it->first;
        free_.erase(it);
        ++hits_;
        return {p, p, &release, cpu};
      }
      ++misses_;
    }
    void* p = c10::alloc_cpu(size);
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = size;
    live_bytes_ += size;
    return {p, p, &release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  void give_back(void* p) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) {  // a small block handed out through raw_allocate
      lock.unlock();
      c10::free_cpu(p);
      return;
    }
    const size_t size = it->second;
    live_.erase(it);
    live_bytes_ -= size;
    if (size > max_cached_) {
      lock.unlock();
      c10::free_cpu(p);
      return;
    }
    // Over the cap: the largest cached blocks go first (they are the likeliest leftovers of a
    // shape that is not coming back).
    std::vector<void*> drop;
    while (cached_bytes_ + size > max_cached_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_bytes_ -= last->first;
      drop.push_back(last->second);
      free_.erase(last);
    }
    free_.emplace(size, p);
    cached_bytes_ += size;
    lock.unlock();
    for (void* q : drop) c10::free_cpu(q);
  }

  void release_all() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (auto& [size, p] : blocks) c10::free_cpu(p);
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, live_bytes_, hits_, misses_};
  }

 private:
  static void release(void* p);

  const size_t max_cached_;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;       // size -> cached block
  std::unordered_map<void*, size_t> live_;  // large blocks handed out
  size_t cached_bytes_ = 0, live_bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may be freed during static destruction, after a static object's destructor.
CachingCpuAllocator* instance = nullptr;
std::once_flag installed;

void CachingCpuAllocator::release(void* p) { instance->give_back(p); }

size_t default_cap() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const size_t physical = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  return std::min(size_t{4} << 30, std::max(size_t{256} << 20, physical / 8));
}

}  // namespace

void install_caching_cpu_allocator(size_t max_cached_bytes) {
  std::call_once(installed, [&] {
    instance = new CachingCpuAllocator(max_cached_bytes ? max_cached_bytes : default_cap());
    // Priority above the default allocator's 0, so LibTorch's CPU tensors come from here.
    c10::SetCPUAllocator(instance, /*priority=*/1);
  });
}

CpuCacheStats cpu_cache_stats() { return instance ? instance->stats() : CpuCacheStats{}; }

void release_cpu_cache() {
  if (instance) instance->release_all();
}

}  // namespace lf
