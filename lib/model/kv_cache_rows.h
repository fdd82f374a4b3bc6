// Rows joining and leaving a KV cache between decoding steps (continuous batching, `serve`).
// Every row of a cache is right-aligned: its newest token sits in the last filled column and its
// tokens are contiguous, with masked (never attended) columns only on its left. So a column's
// distance to the newest one equals the position distance for every real token, which keeps the
// sliding-window rule (cache-index distance, model/transformer.cpp) exact for every row.
#pragma once

#include <cstdint>
#include <vector>

#include "model/transformer.h"

namespace lf {

// Appends the rows of `rows` (another cache of the same model) after `cache`'s rows. The shorter of
// the two is left-padded with masked zero columns up to the longer's length.
void append_cache_rows(KVCache& cache, const KVCache& rows);

// Keeps rows `keep` (indices into the cache's rows, in the order given) and drops the leading columns
// that no kept row attends to. An empty `keep` clears the cache.
void keep_cache_rows(KVCache& cache, const std::vector<int64_t>& keep);

// Rows held by a cache (0 when it holds none yet).
int64_t cache_rows(const KVCache& cache);

}  // namespace lf
