// The DLF α-grid solve (method.md §4) for one row at a time, in plain C++ on raw float/double
// pointers: the CPU path of dlf.h. No LibTorch headers, so the file can be compiled with its own
// vectorisation flags.
//
// Per row and expert t, with Δ = z_t − z_S, it needs A(α_g) = logsumexp(z_L + α_g·Δ) and
// E_{P̃_g}[Δ] for every grid point. The grid is uniform (α_g = α_0 + g·h) in practice, so
//   exp(z_L + α_{g+1}Δ − N_{g+1}) = exp(z_L + α_gΔ − N_g) · exp(hΔ − max hΔ),  N_{g+1} = N_g + max hΔ,
// and one exponential per element (the ratio) serves every grid point of a segment; each segment
// starts from exact exponentials against the true maximum. A segment is at most as long as keeps
// the drift N_g − max(z_L + α_gΔ) and the growth of entries that underflowed at its start within
// a budget (50 nats in float, 600 in double), so every value dropped is below e^-37 of the row's
// largest term. Non-uniform grids take one exact exponential per element and grid point.
#pragma once

#include <cstdint>
#include <vector>

namespace lf::kernels::rows {

struct DlfGrid {
  const double* alpha = nullptr;
  int64_t size = 0;
  bool uniform = false;  // alpha[g] = alpha[0] + g·step for every g (to 1e-6·|step|)
  double step = 0.0;
};
DlfGrid describe_grid(const double* alpha, int64_t size);

// What the solve writes, for N rows, m experts and G grid points (row-major, contiguous).
template <class T>
struct DlfRowsOutput {
  T* kl_forward;     // [N, m, G] KL(P̃‖P)
  T* kl_reverse;     // [N, m, G] KL(P‖P̃)
  T* small_forward;  // [N, m] KL(Q_u‖Q)
  T* small_reverse;  // [N, m] KL(Q‖Q_u)
  T* objectives;     // [N, m, G] J
  int64_t* expert;   // [N] the argmin over (expert, grid index): first expert, then smallest index on ties
  T* alpha;          // [N] its α
  T* objective;      // [N] its J
  T* fused;          // [N, V] z_L + α·(z_expert − z_S), −inf where masked; nullptr: not wanted
};

// z_large, z_small and experts[u] are contiguous [N, V] logits. Entries that are −inf (or NaN) in
// any model are left out of every distribution; a J that is NaN never wins. Rows are spread over
// `threads` OpenMP threads (LibTorch's runtime), with V-sized scratch buffers per thread.
void dlf_solve_rows(const float* z_large, const float* z_small, const float* const* experts, int64_t rows,
                    int64_t experts_count, int64_t vocab, const DlfGrid& grid, const DlfRowsOutput<float>& out,
                    int threads);
void dlf_solve_rows(const double* z_large, const double* z_small, const double* const* experts, int64_t rows,
                    int64_t experts_count, int64_t vocab, const DlfGrid& grid, const DlfRowsOutput<double>& out,
                    int threads);

// The exponential the float path vectorises: |relative error| < 4e-7 for x in [-87, 88], 0 below
// -87 (and for −inf). Exposed for its test.
float exp_vectorizable(float x);

}  // namespace lf::kernels::rows
