// The memory plan of decoding (generate, eval): what one process will hold, from every model's
// config.json before anything is loaded (docs/scaling.md).
#pragma once

#include <cstdint>
#include <string>

#include "decode/config.h"
#include "model/memory_footprint.h"

namespace lf {

// The weights of every model the fusion strategy runs, in its dtype, their KV caches for a batch of
// `prompt_tokens` + max_new_tokens, and the float32 logit rows the fusion keeps. One process;
// `limit` bytes (0: unknown).
MemoryPlan plan_decoding_memory(const DecodingConfig& config, int64_t prompt_tokens, double limit,
                                const std::string& limit_source);

}  // namespace lf
