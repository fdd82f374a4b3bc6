// The CPU row kernel behind kernels::ce_kl_rows (row_losses.h): cross entropy and full-vocabulary
// KL of a block of float32 logit rows in two reads forward and one read + one write backward.
// Compiled with -mavx2 -mfma (ce_kl_avx2.cpp includes nothing with inline functions of external
// linkage, so no AVX2 code can stand in for another file's); call only when avx2_available()
// (features.h).
#pragma once

#include <cstdint>

namespace lf::kernels::cpu {

// Per row r of [r0, r1): s, t: [rows, V] row-major (t may be null: CE only); labels[r] < 0: no CE.
// Writes ce[r], kl[r] (τ² · KL(softmax(t/τ) ‖ softmax(s/τ)); kl may be null when t is) and the
// row's stats[r * 3 + {0,1,2}] = log-sum-exp of s, of s/τ and of t/τ, which the backward reads.
void ce_kl_forward_avx2(const float* s, const float* t, const int64_t* labels, int64_t V, int64_t r0, int64_t r1,
                        float temperature, float* ce, float* kl, float* stats);

// grad[r] = g_ce[r] · (softmax(s) − onehot(label)) + g_kl[r] · τ · (softmax(s/τ) − softmax(t/τ)).
// g_ce or g_kl may be null (that term's gradient is zero).
void ce_kl_backward_avx2(const float* s, const float* t, const int64_t* labels, int64_t V, int64_t r0, int64_t r1,
                         float temperature, const float* stats, const float* g_ce, const float* g_kl, float* grad);

}  // namespace lf::kernels::cpu
