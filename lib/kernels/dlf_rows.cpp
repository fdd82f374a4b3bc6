// The CPU DLF row solve (dlf_rows.h). Compiled with -fopenmp: rows go to OpenMP threads (the
// runtime LibTorch itself uses; ATen's header-only at::parallel_for would need the same flag in
// every file that includes it), the loops over the vocabulary are `omp simd` reductions, and the
// row solve is cloned for AVX-512, AVX2 and the baseline ISA (chosen at load time), so one binary
// runs everywhere and uses the wide units where they exist.
#include "kernels/dlf_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LF_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LF_ISA_CLONES
#endif
// Everything a clone calls is inlined into it, so each clone's loops are compiled for its ISA.
#define LF_INLINE inline __attribute__((always_inline))

namespace lf::kernels::rows {

namespace {

// Cephes' expf: e^x = 2^n·e^r with r = x − n·ln2 split in two constants, a degree-6 polynomial for
// e^r on [−ln2/2, ln2/2], and 2^n built in the exponent bits. Branch-free, so `omp simd` loops
// vectorise it.
LF_INLINE float exp_poly(float x) {
  const bool under = !(x >= -87.0f);  // also −inf and NaN
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return under ? 0.0f : p * scale;
}

LF_INLINE float exp_of(float x) { return exp_poly(x); }
LF_INLINE double exp_of(double x) { return std::exp(x); }

// How far (in nats) values may drift below their exact normaliser within one segment.
template <class T>
constexpr double segment_budget() {
  return std::is_same_v<T, float> ? 50.0 : 600.0;
}

// Flush-to-zero and denormals-are-zero while a row is solved: chained products of tiny values would
// otherwise run through the slow denormal path. Restored on exit.
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Per-thread buffers, each V values, reused across rows.
template <class T>
struct Scratch {
  std::vector<T> large, small, p, q, delta, chain, ratio;
  std::vector<uint8_t> keep;
  explicit Scratch(int64_t vocab) {
    const auto n = static_cast<size_t>(vocab);
    for (auto* b : {&large, &small, &p, &q, &delta, &chain, &ratio}) b->resize(n);
    keep.resize(n);
  }
};

// One row's outputs.
template <class T>
struct RowOutput {
  T *kl_forward, *kl_reverse, *small_forward, *small_reverse, *objectives;
  int64_t* expert;
  T *alpha, *objective, *fused;
};

template <class T>
LF_INLINE T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < n; ++v) m = std::max(m, x[v]);
  return m;
}

// logsumexp of x, and out[v] = exp(x[v] − lse) when out is given.
template <class T>
LF_INLINE T log_sum_exp(const T* x, int64_t n, T* out) {
  const T m = row_max(x, n);
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < n; ++v) s += exp_of(x[v] - m);
  const T lse = m + std::log(s);
  if (out) {
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) out[v] = exp_of(x[v] - lse);
  }
  return lse;
}

template <class T>
LF_INLINE void solve_row(const T* zl_in, const T* zs_in, const T* const* experts, int64_t m, int64_t V,
                         const DlfGrid& grid, Scratch<T>& sc, const RowOutput<T>& out) {
  const FlushDenormals flush;
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  // The kept vocabulary: finite in every model (x − x is 0 only for finite x).
  uint8_t* keep = sc.keep.data();
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) keep[v] = (zl_in[v] - zl_in[v] == 0) & (zs_in[v] - zs_in[v] == 0);
  for (int64_t u = 0; u < m; ++u) {
    const T* z = experts[u];
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) keep[v] &= (z[v] - z[v] == 0);
  }
  int64_t kept = 0;
#pragma omp simd reduction(+ : kept)
  for (int64_t v = 0; v < V; ++v) kept += keep[v];
  const bool masked = kept != V;
  const T* zl = zl_in;
  const T* zs = zs_in;
  if (masked) {
    T* l = sc.large.data();
    T* s = sc.small.data();
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      l[v] = keep[v] ? zl_in[v] : kMinusInf;
      s[v] = keep[v] ? zs_in[v] : kMinusInf;
    }
    zl = l;
    zs = s;
  }
  T* p = sc.p.data();
  T* q = sc.q.data();
  T* delta = sc.delta.data();
  T* chain = sc.chain.data();
  T* ratio = sc.ratio.data();
  const T lse_large = log_sum_exp(zl, V, p);
  const T lse_small = log_sum_exp(zs, V, q);
  const int64_t G = grid.size;
  const T h = static_cast<T>(grid.step);

  for (int64_t u = 0; u < m; ++u) {
    const T* zu = experts[u];
    // Δ = z_u − z_S (0 where masked); the expert's own log-sum-exp over the kept entries.
    T* expert = chain;  // the chain buffer is free until the grid loop
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      delta[v] = keep[v] ? zu[v] - zs_in[v] : T(0);
      expert[v] = keep[v] ? zu[v] : kMinusInf;
    }
    const T expert_max = row_max(expert, V);
    T expert_sum = 0, expert_mean = 0, small_mean = 0, large_mean = 0, d_min = 0, d_max = 0;
#pragma omp simd reduction(+ : expert_sum, expert_mean, small_mean, large_mean) reduction(min : d_min) reduction(max : d_max)
    for (int64_t v = 0; v < V; ++v) {
      const T w = exp_of(expert[v] - expert_max);
      expert_sum += w;
      expert_mean += w * delta[v];
      small_mean += q[v] * delta[v];
      large_mean += p[v] * delta[v];
      d_min = std::min(d_min, delta[v]);
      d_max = std::max(d_max, delta[v]);
    }
    const T lse_expert = expert_max + std::log(expert_sum);
    out.small_forward[u] = expert_mean / expert_sum - lse_expert + lse_small;  // KL(Q_u‖Q)
    out.small_reverse[u] = -small_mean - lse_small + lse_expert;             // KL(Q‖Q_u)

    // Segment length: (length − 1)·|h|·range(Δ) within the budget.
    const T spread = std::abs(h) * (d_max - d_min);
    int64_t segment = 1;
    if (grid.uniform && G > 1)
      segment = static_cast<int64_t>(std::min<double>(static_cast<double>(G), segment_budget<T>() / spread + 1));
    const T step_max = h > 0 ? h * d_max : h * d_min;  // max_v h·Δ_v
    if (segment > 1) {
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) ratio[v] = exp_of(h * delta[v] - step_max);
    }
    T norm = 0;  // N_g: exact max at a segment start, then N_{g-1} + max h·Δ
    for (int64_t g = 0; g < G; ++g) {
      const T alpha = static_cast<T>(grid.alpha[g]);
      T s = 0, t = 0;
      if (g % segment == 0) {
        T mx = kMinusInf;
#pragma omp simd reduction(max : mx)
        for (int64_t v = 0; v < V; ++v) mx = std::max(mx, zl[v] + alpha * delta[v]);
        norm = mx;
#pragma omp simd reduction(+ : s, t)
        for (int64_t v = 0; v < V; ++v) {
          const T e = exp_of(zl[v] + alpha * delta[v] - norm);
          chain[v] = e;
          s += e;
          t += e * delta[v];
        }
      } else {
        norm += step_max;
#pragma omp simd reduction(+ : s, t)
        for (int64_t v = 0; v < V; ++v) {
          const T e = chain[v] * ratio[v];
          chain[v] = e;
          s += e;
          t += e * delta[v];
        }
      }
      const T lse = norm + std::log(s);  // A(α_g)
      out.kl_forward[u * G + g] = alpha * (t / s) - lse + lse_large;
      out.kl_reverse[u * G + g] = -alpha * large_mean + lse - lse_large;
    }
  }

  // J for every (expert, α) and its argmin.
  int64_t best = -1;
  for (int64_t i = 0; i < m * G; ++i) {
    T j = 0;
    for (int64_t u = 0; u < m; ++u) {
      const T df = out.kl_forward[i] - out.small_forward[u], dr = out.kl_reverse[i] - out.small_reverse[u];
      j += df * df + dr * dr;
    }
    out.objectives[i] = j;
    if (best < 0 ? j == j : j < out.objectives[best]) best = i;
  }
  if (best < 0) best = 0;  // every J is NaN
  const int64_t chosen = best / G;
  const T chosen_alpha = static_cast<T>(grid.alpha[best % G]);
  *out.expert = chosen;
  *out.alpha = chosen_alpha;
  *out.objective = out.objectives[best];
  if (out.fused) {
    const T* zt = experts[chosen];
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) out.fused[v] = keep[v] ? zl_in[v] + (zt[v] - zs_in[v]) * chosen_alpha : kMinusInf;
  }
}

// One clone set per element type (target_clones takes no templates).
LF_ISA_CLONES
void solve_row_isa(const float* zl, const float* zs, const float* const* experts, int64_t m, int64_t V,
                   const DlfGrid& grid, Scratch<float>& scratch, const RowOutput<float>& out) {
  solve_row(zl, zs, experts, m, V, grid, scratch, out);
}

LF_ISA_CLONES
void solve_row_isa(const double* zl, const double* zs, const double* const* experts, int64_t m, int64_t V,
                   const DlfGrid& grid, Scratch<double>& scratch, const RowOutput<double>& out) {
  solve_row(zl, zs, experts, m, V, grid, scratch, out);
}

template <class T>
void solve_rows(const T* zl, const T* zs, const T* const* experts, int64_t N, int64_t m, int64_t V, const DlfGrid& grid,
                const DlfRowsOutput<T>& out, int threads) {
  const int64_t G = grid.size;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  {
    Scratch<T> scratch(V);
    std::vector<const T*> row_experts(static_cast<size_t>(m));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t u = 0; u < m; ++u) row_experts[u] = experts[u] + r * V;
      const RowOutput<T> row{out.kl_forward + r * m * G, out.kl_reverse + r * m * G, out.small_forward + r * m,
                             out.small_reverse + r * m,  out.objectives + r * m * G, out.expert + r,
                             out.alpha + r,              out.objective + r,          out.fused ? out.fused + r * V : nullptr};
      solve_row_isa(zl + r * V, zs + r * V, row_experts.data(), m, V, grid, scratch, row);
    }
  }
}

}  // namespace

DlfGrid describe_grid(const double* alpha, int64_t size) {
  DlfGrid g{alpha, size, false, 0.0};
  if (size < 2) return g;
  g.step = alpha[1] - alpha[0];
  g.uniform = g.step != 0;
  for (int64_t i = 2; i < size && g.uniform; ++i)
    g.uniform = std::abs(alpha[i] - (alpha[0] + static_cast<double>(i) * g.step)) <= 1e-6 * std::abs(g.step);
  return g;
}

void dlf_solve_rows(const float* z_large, const float* z_small, const float* const* experts, int64_t rows,
                    int64_t experts_count, int64_t vocab, const DlfGrid& grid, const DlfRowsOutput<float>& out,
                    int threads) {
  solve_rows(z_large, z_small, experts, rows, experts_count, vocab, grid, out, threads);
}
void dlf_solve_rows(const double* z_large, const double* z_small, const double* const* experts, int64_t rows,
                    int64_t experts_count, int64_t vocab, const DlfGrid& grid, const DlfRowsOutput<double>& out,
                    int threads) {
  solve_rows(z_large, z_small, experts, rows, experts_count, vocab, grid, out, threads);
}

float exp_vectorizable(float x) { return exp_poly(x); }

}  // namespace lf::kernels::rows
