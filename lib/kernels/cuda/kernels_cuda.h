// Host entry points of the CUDA kernels behind lib/kernels (compiled only when LibTorch has CUDA and
// nvcc exists: LOGITFUSE_HAVE_CUDA). Callers are logit_stats.cpp and dlf.cpp, which dispatch on the
// tensor's device and keep the ATen implementations as the CPU path and as the tests' oracle.
// Every launch runs on the current stream, synchronises nothing and allocates only its outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "kernels/dlf.h"

namespace lf::kernels::cuda {

// Largest k the top-k kernels hold (4 slots per warp lane); larger k stays on the ATen path.
constexpr int64_t kMaxTopK = 128;
// Most experts and α values one DLF launch takes (larger grids run in several launches).
constexpr int64_t kMaxDlfExperts = 16;
constexpr int64_t kMaxDlfGridPerLaunch = 32;

// True when `logits` can take the fused path: a CUDA tensor of float, half or bfloat16.
bool supports(const at::Tensor& logits);

// One pass over each row of logits [N, V]: the top-k of softmax(logits / τ) (values descending, ties
// to the smaller id), log-sum-exp of logits / τ, the tail mass, and, when `labels` [N] is defined,
// log-sum-exp of the raw logits and the cross entropy against the label (0 for label −100).
struct TopKStats {
  at::Tensor probs;  // [N, k] float32
  at::Tensor ids;    // [N, k] int64
  at::Tensor lse;    // [N] float32, of logits / τ
  at::Tensor tail;   // [N] float32
  at::Tensor lse1;   // [N] float32, of logits (only with labels)
  at::Tensor ce;     // [N] float32 (only with labels)
};
TopKStats topk_stats_forward(const at::Tensor& logits, const at::Tensor& labels, int64_t k, double temperature);

// d loss / d logits [N, V] in the logits' dtype, in one pass over each row, from the upstream
// gradients of the top-k probabilities [N, k] and of the CE [N] (either may be undefined).
at::Tensor topk_stats_backward(const at::Tensor& logits, const at::Tensor& labels, const TopKStats& saved,
                               const at::Tensor& grad_probs, const at::Tensor& grad_ce, double temperature);

// The DLF α-grid solve of method.md §4 (see dlf.h), reading each row of every input once; the
// statistics are float32 whatever the logits' dtype.
// True when the fused solve takes these inputs: supports(z_large), 1 to 16 experts, 1 to 256 grid
// values, at most 65535 rows.
bool dlf_supports(const at::Tensor& z_large, size_t experts, size_t grid_size);
// chained: on a uniform grid, the kernel with chained exponentials (DlfOptions::cuda_chained).
kernels::DlfSolve dlf_solve(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                            const std::vector<double>& grid, bool want_fused, bool chained = false);

}  // namespace lf::kernels::cuda
