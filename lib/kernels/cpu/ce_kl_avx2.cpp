// Compiled with -mavx2 -mfma (CMakeLists.txt). Only C headers and intrinsics here: a C++ header's
// inline function compiled with AVX2 could be the copy the linker keeps for every other file.
#include "kernels/cpu/ce_kl_avx2.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>
#include <sleef.h>

namespace lf::kernels::cpu {

namespace {

inline __m256 vexp(__m256 x) { return Sleef_expf8_u10avx2(x); }

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

inline float hmax(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_max_ps(lo, hi);
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_max_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// Max of a row and whether it holds a NaN (max_ps drops NaNs, which must reach the loss).
inline float row_max(const float* x, int64_t V, bool& nan) {
  __m256 m = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    m = _mm256_max_ps(m, v);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float r = hmax(m);
  nan = nan || _mm256_movemask_ps(bad) != 0;
  for (; i < V; ++i) {
    if (x[i] != x[i]) nan = true;
    if (x[i] > r) r = x[i];
  }
  return r;
}

}  // namespace

void ce_kl_forward_avx2(const float* s, const float* t, const int64_t* labels, int64_t V, int64_t r0, int64_t r1,
                        float temperature, float* ce, float* kl, float* stats) {
  const float inv_t = 1.0f / temperature;
  const bool tempered = temperature != 1.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* sr = s + r * V;
    const float* tr = t ? t + r * V : nullptr;
    bool nan = false;
    const float ms = row_max(sr, V, nan);
    const float mt = tr ? row_max(tr, V, nan) : 0.0f;
    // One read of both rows: Σ exp(s − ms), Σ exp((s − ms)/τ), Σ exp((t − mt)/τ) and
    // Σ exp((t − mt)/τ)·(t − s)/τ, from which KL = W/Za − lse(t/τ) + lse(s/τ).
    __m256 zs = _mm256_setzero_ps(), zb = _mm256_setzero_ps(), za = _mm256_setzero_ps(), w = _mm256_setzero_ps();
    const __m256 vms = _mm256_set1_ps(ms), vmt = _mm256_set1_ps(mt), vinv = _mm256_set1_ps(inv_t);
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) {
      const __m256 sv = _mm256_loadu_ps(sr + i);
      const __m256 ds = _mm256_sub_ps(sv, vms);
      const __m256 es = vexp(ds);
      zs = _mm256_add_ps(zs, es);
      if (tempered) zb = _mm256_add_ps(zb, vexp(_mm256_mul_ps(ds, vinv)));
      if (tr) {
        const __m256 tv = _mm256_loadu_ps(tr + i);
        const __m256 et = vexp(_mm256_mul_ps(_mm256_sub_ps(tv, vmt), vinv));
        za = _mm256_add_ps(za, et);
        // 0 where the teacher has no mass, even against an infinite log ratio.
        const __m256 term = _mm256_mul_ps(et, _mm256_mul_ps(_mm256_sub_ps(tv, sv), vinv));
        w = _mm256_add_ps(w, _mm256_and_ps(term, _mm256_cmp_ps(et, zero, _CMP_GT_OQ)));
      }
    }
    float Zs = hsum(zs), Zb = hsum(zb), Za = hsum(za), W = hsum(w);
    for (; i < V; ++i) {
      const float ds = sr[i] - ms;
      Zs += expf(ds);
      if (tempered) Zb += expf(ds * inv_t);
      if (tr) {
        const float et = expf((tr[i] - mt) * inv_t);
        Za += et;
        if (et > 0) W += et * (tr[i] - sr[i]) * inv_t;
      }
    }
    const float lse_s = ms + logf(Zs);
    const float lse_b = tempered ? ms * inv_t + logf(Zb) : lse_s;
    const float lse_a = tr ? mt * inv_t + logf(Za) : 0.0f;
    stats[r * 3 + 0] = lse_s;
    stats[r * 3 + 1] = lse_b;
    stats[r * 3 + 2] = lse_a;
    const int64_t label = labels ? labels[r] : -1;
    ce[r] = nan ? NAN : label >= 0 ? lse_s - sr[label] : 0.0f;
    if (kl) kl[r] = nan ? NAN : temperature * temperature * (W / Za - lse_a + lse_b);
  }
}

void ce_kl_backward_avx2(const float* s, const float* t, const int64_t* labels, int64_t V, int64_t r0, int64_t r1,
                         float temperature, const float* stats, const float* g_ce, const float* g_kl, float* grad) {
  const float inv_t = 1.0f / temperature;
  const bool tempered = temperature != 1.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* sr = s + r * V;
    const float* tr = t ? t + r * V : nullptr;
    float* gr = grad + r * V;
    const int64_t label = labels ? labels[r] : -1;
    const float gc = g_ce && label >= 0 ? g_ce[r] : 0.0f;  // an ignored row's CE is 0, so is its gradient
    const float gk = g_kl && tr ? g_kl[r] * temperature : 0.0f;
    const float lse_s = stats[r * 3 + 0], lse_b = stats[r * 3 + 1], lse_a = stats[r * 3 + 2];
    const __m256 vls = _mm256_set1_ps(lse_s), vlb = _mm256_set1_ps(lse_b), vla = _mm256_set1_ps(lse_a);
    const __m256 vinv = _mm256_set1_ps(inv_t), vgc = _mm256_set1_ps(gc), vgk = _mm256_set1_ps(gk);
    const __m256 vsum = _mm256_set1_ps(gc + gk);
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) {
      const __m256 sv = _mm256_loadu_ps(sr + i);
      const __m256 q = vexp(_mm256_sub_ps(sv, vls));
      __m256 g;
      if (!tempered) {
        g = _mm256_mul_ps(vsum, q);  // (g_ce + g_kl·τ)·q at τ = 1
      } else {
        const __m256 qb = vexp(_mm256_sub_ps(_mm256_mul_ps(sv, vinv), vlb));
        g = _mm256_fmadd_ps(vgc, q, _mm256_mul_ps(vgk, qb));
      }
      if (tr) {
        const __m256 p = vexp(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(tr + i), vinv), vla));
        g = _mm256_fnmadd_ps(vgk, p, g);
      }
      _mm256_storeu_ps(gr + i, g);
    }
    for (; i < V; ++i) {
      const float q = expf(sr[i] - lse_s);
      float g = tempered ? gc * q + gk * expf(sr[i] * inv_t - lse_b) : (gc + gk) * q;
      if (tr) g -= gk * expf(tr[i] * inv_t - lse_a);
      gr[i] = g;
    }
    if (label >= 0) gr[label] -= gc;
  }
}

}  // namespace lf::kernels::cpu

#else  // not built for AVX2 (another architecture): the callers take the LibTorch path

namespace lf::kernels::cpu {
void ce_kl_forward_avx2(const float*, const float*, const int64_t*, int64_t, int64_t, int64_t, float, float*, float*,
                        float*) {}
void ce_kl_backward_avx2(const float*, const float*, const int64_t*, int64_t, int64_t, int64_t, float, const float*,
                         const float*, const float*, float*) {}
}  // namespace lf::kernels::cpu

#endif
