// A caching allocator for large CPU tensors.
//
// A training step on the CPU allocates the same large buffers every step (logit chunks [rows, V],
// their softmax and gradients, activations). glibc serves blocks of 32 MiB and more with a fresh
// mmap each time, so every step pays for faulting in and zeroing those pages again: on the demo's
// 14M-parameter student with a 16k vocabulary that was a third of the KL step. This allocator keeps
// freed blocks of 1 MiB and more (up to a cap) and hands them out again to requests of the same
// size or up to a quarter smaller; smaller blocks go to c10's allocator, whose heap already reuses them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lf {

struct CpuCacheStats {
  size_t cached_bytes = 0;    // freed, kept for reuse
  size_t live_bytes = 0;      // handed out, not yet freed (large blocks only)
  uint64_t hits = 0, misses = 0;
};

// Makes the caching allocator LibTorch's CPU allocator (tensors allocated before keep their own
// deleter, so it may be installed at any time). Keeps at most `max_cached_bytes` of freed blocks;
// 0 picks min(4 GiB, physical memory / 8). Idempotent; the cap of the first call holds.
void install_caching_cpu_allocator(size_t max_cached_bytes = 0);

CpuCacheStats cpu_cache_stats();

// Returns every cached block to the system.
void release_cpu_cache();

}  // namespace lf
