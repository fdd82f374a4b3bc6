// The logit hot paths behind one narrow interface: everything the losses need from a block of
// logit rows [N, V] goes through these functions. This is the LibTorch implementation (CPU and
// CUDA through ATen, differentiable through autograd); fused CUDA kernels replace the bodies later
// without the losses or the trainer changing. Statistics are computed in float32 whatever the
// logits' dtype, one block of rows at a time.
#pragma once

#include <ATen/core/Tensor.h>

namespace lf::kernels {

struct TopK {
  at::Tensor probs;  // [N, k] softmax(logits / temperature) top-k values, sorted descending (differentiable)
  at::Tensor ids;    // [N, k] int64 vocabulary ids of those values
};

// Top-k probabilities of softmax(logits / temperature), k clamped to V.
TopK softmax_topk(const at::Tensor& logits, int64_t k, double temperature);

// Full log-softmax of logits / temperature in float32 [N, V] (differentiable).
at::Tensor log_softmax(const at::Tensor& logits, double temperature);

// Per-row cross entropy against labels [N] (float32 [N], differentiable).
at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels);

// The statistics a logits cache stores per row: top-k (probs, ids), log-sum-exp of logits/τ and the
// tail mass 1 − Σ top-k. Not differentiable (teachers).
struct RowStats {
  at::Tensor probs, ids, lse, tail;
};
RowStats softmax_topk_stats(const at::Tensor& logits, int64_t k, double temperature);


}  // namespace lf::kernels
