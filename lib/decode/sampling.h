// Next-token choice from fused logits: greedy at temperature 0, else temperature, top-k and top-p
// (nucleus) sampling. Randomness is a pure function of (seed, row key, step), so a prompt gets the
// same tokens whatever batch it is decoded in and on whatever device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "decode/config.h"

namespace lf {

// logits [B, V] (any device); row_keys[b] identifies row b's prompt (its index in the input).
// Returns [B] int64 token ids on the CPU.
at::Tensor sample_tokens(const at::Tensor& logits, const SamplingConfig& sampling, const std::vector<int64_t>& row_keys,
                         int64_t step);

// The first maximum of each row of logits [B, V] (argmax's answer, a NaN counting as the maximum),
// [B] int64 on the CPU. On the CPU argmax's last-dimension reduction runs scalar (1.3 ms for
// 16 × 49,152 logits, measured); a vectorized max and a scan for its first index take a tenth.
at::Tensor greedy_tokens(const at::Tensor& logits);

// The uniform number in [0, 1) that row `key` draws at `step` (splitmix64 of the three).
double sampling_uniform(int64_t seed, int64_t key, int64_t step);

}  // namespace lf
