// The adapter branch of a LoRA linear layer, s · B A dropout(x), as one autograd function.
//
// Why not the plain composition: autograd would keep, per adapted layer, the dropped input (a copy of
// x in the adapter's dtype) and its mask, and draw the mask with LibTorch's per-element Bernoulli.
// On SmolLM2-135M (seven adapted layers in each of 30 layers) that was 0.6 GB more peak memory and
// a quarter more time per step than no dropout (`python bench/lora_train.py`). Here the mask is a
// counter-based hash of (seed, index), so the backward regenerates it: the function keeps x itself
// (one tensor for q, k and v, one for gate and up) and A x [.., r], nothing of size [.., in] more.
//
// The seed of each call is drawn from LibTorch's default CPU generator, whatever the device: the
// trainer's checkpoints hold that generator's state, and checkpointed layers replay it, so the same
// masks come back on a resume and in a recomputation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/transformer.h"

namespace lf {

// x · keep / (1 − p) over x's elements in row-major order, keep_i = (the top 24 bits of a 32-bit hash
// of (seed, i)) ≥ round(p · 2^24). Any device and floating dtype; on the CPU one vectorised pass.
at::Tensor seeded_dropout(const at::Tensor& x, double p, uint64_t seed);
// The keep mask of seeded_dropout as a bool tensor shaped like `like`, computed with LibTorch integer
// ops (what other devices use; the tests check the CPU pass against it).
at::Tensor seeded_keep_mask(const at::Tensor& like, double p, uint64_t seed);

// s · B A dropout(x) for `adapter` (dropout only when `training` and p > 0). In the adapter's dtype, or
// under autocast in the autocast dtype; under grad mode differentiable in x, A and B.
at::Tensor lora_branch(const at::Tensor& x, const LoraAdapter& adapter, bool training);

}  // namespace lf
