// The logit hot paths behind one narrow interface: everything the losses need from a block of
// logit rows [N, V] goes through these functions. CUDA tensors (float32/float16/bfloat16, k ≤ 128)
// take the fused kernels of lib/kernels/cuda (one read of each row forward, one read and one write
// backward); everything else takes the LibTorch implementation, which is also the kernels' test
// oracle. Statistics are computed in float32 whatever the logits' dtype (double stays double).
#pragma once

#include <ATen/core/Tensor.h>

namespace lf::kernels {

// automatic: the fused CUDA kernels where they apply, LibTorch otherwise; aten: always LibTorch
// (the reference the benchmarks and tests compare against).
enum class Backend { automatic, aten };

// True when this build has the CUDA kernels and `logits` can take them.
bool fused_kernels_apply(const at::Tensor& logits, int64_t k, Backend backend = Backend::automatic);

struct TopK {
  at::Tensor probs;  // [N, k] softmax(logits / temperature) top-k values, sorted descending (differentiable)
  at::Tensor ids;    // [N, k] int64 vocabulary ids of those values
};

// Top-k probabilities of softmax(logits / temperature), k clamped to V.
TopK softmax_topk(const at::Tensor& logits, int64_t k, double temperature, Backend backend = Backend::automatic);

// Full log-softmax of logits / temperature in float32 [N, V] (differentiable).
at::Tensor log_softmax(const at::Tensor& logits, double temperature);

// Per-row cross entropy against labels [N] (float32 [N], differentiable).
at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels);

// The statistics a logits cache stores per row: top-k (probs, ids), log-sum-exp of logits/τ and the
// tail mass 1 − Σ top-k. Not differentiable (teachers).
struct RowStats {
  at::Tensor probs, ids, lse, tail;
};
RowStats softmax_topk_stats(const at::Tensor& logits, int64_t k, double temperature,
                            Backend backend = Backend::automatic);

// Cross entropy against `labels` (at temperature 1; label −100 gives 0) and the top-k of
// softmax(logits / temperature) from one read of the logits, so the SFT term and the graph term
// share it. Differentiable in the logits through `ce` and `probs`; on the fused path the backward
// is one pass that writes the logits' gradient in their dtype.
struct CeTopK {
  at::Tensor ce;     // [N] float32
  at::Tensor probs;  // [N, k] float32, sorted descending
  at::Tensor ids;    // [N, k] int64
};
CeTopK ce_and_softmax_topk(const at::Tensor& logits, const at::Tensor& labels, int64_t k, double temperature,
                           Backend backend = Backend::automatic);


}  // namespace lf::kernels
