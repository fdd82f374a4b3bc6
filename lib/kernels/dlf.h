// The Dynamic Logit Fusion α solve (method.md §4), behind the same narrow "logit hot path" interface
// as logit_stats.h: CUDA tensors take the fused kernel of lib/kernels/cuda (each row of every input
// read once), CPU tensors the vectorised row kernel of dlf_rows.h (chained exponentials over the
// grid); Backend::aten takes the LibTorch implementation, which is also the kernels' test oracle. Both leave out vocabulary entries that are −inf in any of the models (a mask).
//
// Per row, with Δ_t = z_t − z_S and A(α) = logsumexp(z_L + αΔ_t):
//   KL(P̃_α‖P) = α·E_{P̃_α}[Δ_t] − A(α) + A(0)      KL(P‖P̃_α) = −α·E_P[Δ_t] + A(α) − A(0)
//   J(t, α)   = Σ_u (KL(P̃_α‖P) − KL(Q_u‖Q))² + (KL(P‖P̃_α) − KL(Q‖Q_u))²
// where P̃_α is the fusion with expert t at weight α and every other expert at 0.
// Statistics are computed in float32, or in double when the logits are double.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "kernels/logit_stats.h"

namespace lf::kernels {

struct DlfSolve {
  at::Tensor expert;     // [N] int64: the active expert of each row (argmin over experts and grid)
  at::Tensor alpha;      // [N] its α (compute dtype)
  at::Tensor objective;  // [N] J at that (expert, α)
  at::Tensor fused;      // [N, V] z_L + α·(z_expert − z_S) (compute dtype)
  at::Tensor all_objectives;  // [N, m, G] J for every expert and grid point (for tests and traces)
  at::Tensor kl_forward, kl_reverse;              // [N, m, G] KL(P̃_α‖P), KL(P‖P̃_α) per expert and α
  at::Tensor small_kl_forward, small_kl_reverse;  // [N, m] KL(Q_u‖Q), KL(Q‖Q_u)
};

// The outputs of a solve of N rows, m experts and G grid values, allocated (not filled) with
// `options`; `expert` is int64, `fused` [N, V] only when wanted. Every backend fills these.
DlfSolve allocate_dlf_solve(int64_t N, int64_t m, int64_t G, int64_t V, const at::TensorOptions& options, bool fused);

struct DlfOptions {
  // Rows the LibTorch path (Backend::aten) processes together. Its peak scratch memory is about
  // (m + 6)·row_block·V values of the compute dtype besides inputs and output, whatever G is (never
  // [N, G, V]); 0 = automatic: as many rows as fit 2^20 values (4 MiB per buffer in float32).
  int64_t row_block = 0;
  Backend backend = Backend::automatic;  // aten forces the LibTorch path (benchmarks, tests)
  bool fused = true;                     // also compute the fused logits
  // CUDA only: on a uniform grid, the kernel with chained exponentials (the CPU row kernel's method).
  // Off by default: it was written without a GPU at hand; `bench kernels` and the [cuda] tests run
  // it beside the default kernel so a device run can show it correct and faster before it becomes
  // the default.
  bool cuda_chained = false;
};

// z_large, z_small and every expert are [N, V] logits over one shared vocabulary (any float dtype,
// one device); `grid` holds the α values (at least one). Ties go to the first expert, then the
// smallest grid index.
DlfSolve dlf_solve(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                   const std::vector<double>& grid, const DlfOptions& options = {});

// method.md §4's multi-expert options, applied to a finished solve of any backend (they read only
// its KLs, so CPU and CUDA serve all of them); sets expert, alpha, objective and fused anew (so the
// solve itself can skip its fused logits, DlfOptions::fused = false):
//   sum      the paper's J summed over every expert u (the solve as it is; nothing to do)
//   active   J with only the candidate expert's own terms: (KL(P̃_α‖P) − KL(Q_t‖Q))² + (KL(P‖P̃_α) − KL(Q‖Q_t))²
//   closest  the expert whose next-token distribution is closest to the large model's (smallest
//            KL(P‖Q_u)), then α by its own terms; an expert lost on the text disagrees with P
//   route    one expert per sequence, chosen at its first generated token (where the prompt alone
//            says which task it is) as the expert that gives the large model's likeliest token
//            the highest probability, and kept for the rest of it; α by that expert's terms
// Ties go to the first expert, then the smallest α. `route` holds each row's expert for `route`
// ([rows] int64): undefined on the first step, when it is chosen and stored; required for `route`.
void apply_multi_expert_criterion(DlfSolve& solve, const std::string& criterion, const at::Tensor& z_large,
                                  const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                                  const std::vector<double>& grid, at::Tensor* route = nullptr);

// The closed-form KLs for one Δ and every grid value: KL(P̃_α‖P) and KL(P‖P̃_α), each [N, G].
struct DlfKls {
  at::Tensor forward, reverse;
};
DlfKls dlf_closed_form_kls(const at::Tensor& z_large, const at::Tensor& delta, const std::vector<double>& grid);

// The brute-force reference: for every expert and α, materialise P̃_α with a softmax and take both
// KLs directly. Same result as dlf_solve; used by the tests and as the naive baseline of
// `logitfuse bench dlf`. Scratch memory: a few [N, V] tensors per α.
DlfSolve dlf_solve_reference(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                             const std::vector<double>& grid);

// The grid min, min+step, ..., up to max (inclusive, with a tolerance of 1e-9·step for rounding).
std::vector<double> alpha_grid(double min, double max, double step);

}  // namespace lf::kernels
