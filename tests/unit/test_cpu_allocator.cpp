// The caching CPU allocator (memory/cpu_allocator.h): large blocks come back to the next request of
// their size class, small ones are not cached, and the cache empties on request.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include "memory/cpu_allocator.h"

TEST_CASE("cpu allocator: a freed large block is handed to the next request of its size", "[core][allocator]") {
  lf::install_caching_cpu_allocator();
  lf::release_cpu_cache();
  const lf::CpuCacheStats start = lf::cpu_cache_stats();
  void* first = nullptr;
  {
    at::Tensor a = at::ones({1 << 20});  // 4 MiB
    first = a.data_ptr();
    CHECK(lf::cpu_cache_stats().live_bytes >= start.live_bytes + (size_t{4} << 20));
  }
  CHECK(lf::cpu_cache_stats().cached_bytes == start.cached_bytes + (size_t{4} << 20));
  // A slightly smaller request (within a quarter) reuses it; its contents are whatever was there.
  at::Tensor b = at::empty({(1 << 20) - 1000});
  CHECK(b.data_ptr() == first);
  CHECK(lf::cpu_cache_stats().hits == start.hits + 1);
  b.fill_(2.0f);
  CHECK(b.sum().item<double>() == 2.0 * b.numel());
  b.reset();
  // A request more than a quarter smaller does not take it.
  {
    at::Tensor c = at::empty({1 << 19});
    CHECK(c.data_ptr() != first);
  }
  // Small tensors are not cached; releasing empties the cache.
  { at::Tensor small = at::ones({100}); }
  CHECK(lf::cpu_cache_stats().cached_bytes > 0);
  lf::release_cpu_cache();
  CHECK(lf::cpu_cache_stats().cached_bytes == 0);
  // Tensors made before and after keep working (each frees through its own deleter).
  at::Tensor x = at::randn({3000, 300});
  at::Tensor y = x.matmul(x.t());
  CHECK(y.size(0) == 3000);
}
