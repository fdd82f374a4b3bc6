// Compiled with -mavx2 -mfma -ffp-contract=off (CMakeLists.txt): the tail's arithmetic must be the
// vector body's, operation for operation, so the compiler may not fuse a product and a sum on its own.
// Only C headers and intrinsics here (see ce_kl_avx2.cpp).
#include "kernels/cpu/adamw_avx2.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>

namespace lf::kernels::cpu {

void adamw_avx2(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  const __m256 decay = _mm256_set1_ps(s.decay), w1 = _mm256_set1_ps(s.one_minus_beta1),
               beta2 = _mm256_set1_ps(s.beta2), w2 = _mm256_set1_ps(s.one_minus_beta2),
               sqrt_bias2 = _mm256_set1_ps(s.sqrt_bias2), eps = _mm256_set1_ps(s.eps),
               step = _mm256_set1_ps(s.step_size), scale = _mm256_set1_ps(s.grad_scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), scale);
    __m256 mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    mi = _mm256_fmadd_ps(w1, _mm256_sub_ps(gi, mi), mi);
    vi = _mm256_fmadd_ps(w2, _mm256_mul_ps(gi, gi), _mm256_mul_ps(vi, beta2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), sqrt_bias2), eps);
    _mm256_storeu_ps(p + i, _mm256_fmadd_ps(step, _mm256_div_ps(mi, denom), pi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  for (; i < n; ++i) {
    const float gi = g[i] * s.grad_scale;
    const float pi = p[i] * s.decay;
    const float mi = fmaf(s.one_minus_beta1, gi - m[i], m[i]);
    const float vi = fmaf(s.one_minus_beta2, gi * gi, v[i] * s.beta2);
    const float denom = sqrtf(vi) / s.sqrt_bias2 + s.eps;
    p[i] = fmaf(s.step_size, mi / denom, pi);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace lf::kernels::cpu

#else  // not built for AVX2 (another architecture): the callers take the LibTorch path

namespace lf::kernels::cpu {
void adamw_avx2(float*, const float*, float*, float*, int64_t, const AdamWScalars&) {}
}  // namespace lf::kernels::cpu

#endif
