// The DLF α-grid solve (method.md §4, dlf.h) on CUDA, reading each row of every input once.
//
// Kernel 1, one block per (expert u, row r): streams z_L, z_S and z_u together and keeps online
// log-sum-exps (with a companion Σ w·Δ) for softmax(z_L), softmax(z_S), softmax(z_u) and for every
// grid point softmax(z_L + α_g·Δ), Δ = z_u − z_S. From them the closed forms
//   KL(P̃_α‖P) = α·E_{P̃_α}[Δ] − A(α) + A(0),   KL(P‖P̃_α) = −α·E_P[Δ] + A(α) − A(0),
//   KL(Q_u‖Q) = E_{Q_u}[Δ] − lse(z_u) + lse(z_S), KL(Q‖Q_u) = −E_Q[Δ] − lse(z_S) + lse(z_u).
// Kernel 2, one warp per row: J for every (expert, α), and the argmin (first expert, then the
// smallest grid index on ties, as the ATen path). Kernel 3: the fused logits of the chosen expert.
// Vocabulary entries that are −inf in any of the three models (a masked vocabulary) are left out.
//
// Kernel 1b (DlfOptions::cuda_chained, uniform grids; written without a GPU at hand and off by
// default until a device run shows it correct and faster): the CPU row kernel's chained
// exponentials (dlf_rows.h). Per thread, every kSegment grid points share one exponential per
// element at the segment start; the others multiply by exp2(h·Δ·log2e − σ), σ the thread's running
// max of h·Δ·log2e, against normalisers base_k + j·σ that rescale when base or σ rise. Per element
// and expert that is 4 + ⌈G/8⌉ exponentials instead of G + 3. A row whose range of Δ is too wide
// for that (7·|h|·range > 50 nats) is marked NaN and recomputed by kernel 1.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/error.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/dlf_rows.h"

namespace lf::kernels::cuda {

namespace {

using namespace dev;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGrid = 256;
constexpr int64_t kMaxRows = 65535;  // gridDim.y

struct DlfParams {
  const void* experts[kMaxDlfExperts];
  float alpha[kMaxGrid];
  int grid_size;  // G over all launches
  int experts_count;
};

// Adds exp2(y_i − m)·(1, Δ_i) for a chunk, raising the max first so every term is ≤ 1.
template <int N>
__device__ __forceinline__ void accumulate(Lse2& acc, const float (&y)[N], const float (&delta)[N]) {
  float chunk_max = y[0];
#pragma unroll
  for (int i = 1; i < N; ++i) chunk_max = fmaxf(chunk_max, y[i]);
  acc.raise(chunk_max);
  if (acc.m == -INFINITY) return;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float w = fast_exp2(y[i] - acc.m);
    acc.s += w;
    acc.t = fmaf(w, delta[i], acc.t);
  }
}

// Online log-sum-exps (with Σ w·Δ) of softmax(z_L), softmax(z_S) and softmax(z_u): P, Q and Q_u,
// kept by both KL kernels.
struct ModelStats {
  Lse2 p, q, qu;
  __device__ __forceinline__ void reset() {
    p.reset();
    q.reset();
    qu.reset();
  }
  template <int N>
  __device__ __forceinline__ void add(const float (&yl)[N], const float (&ys)[N], const float (&yu)[N], const float (&delta)[N]) {
    accumulate(p, yl, delta);
    accumulate(q, ys, delta);
    accumulate(qu, yu, delta);
  }
};

// Merges the threads' accumulators of one block (grid points, then P, Q, Q_u) and writes the closed
// forms: kernel 1 and kernel 1b end the same way.
template <int G>
__device__ __forceinline__ void finish_kls(Lse2 (&acc)[G], ModelStats& models, const DlfParams& params,
                                           int64_t r, int u, int g_offset, int g_count, float* __restrict__ kl_forward,
                                           float* __restrict__ kl_reverse, float* __restrict__ small_forward,
                                           float* __restrict__ small_reverse) {
  constexpr int kAcc = G + 3;
  __shared__ float partial[3][kWarps][kAcc];
  __shared__ float final_acc[3][kAcc];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = params.experts_count;
  auto publish = [&](Lse2& a, int slot) {
    a.warp_merge();
    if (lane == 0) {
      partial[0][warp][slot] = a.m;
      partial[1][warp][slot] = a.s;
      partial[2][warp][slot] = a.t;
    }
  };
#pragma unroll
  for (int g = 0; g < G; ++g) publish(acc[g], g);
  publish(models.p, G);
  publish(models.q, G + 1);
  publish(models.qu, G + 2);
  __syncthreads();
  for (int slot = threadIdx.x; slot < kAcc; slot += kThreads) {
    Lse2 a;
    a.reset();
    for (int w = 0; w < kWarps; ++w) a.merge(partial[0][w][slot], partial[1][w][slot], partial[2][w][slot]);
    final_acc[0][slot] = a.natural_lse();
    final_acc[1][slot] = a.t / a.s;  // the mean of Δ under that softmax
  }
  __syncthreads();
  const float a0 = final_acc[0][G], mean_p = final_acc[1][G];
  const int64_t out_row = (r * m + u) * params.grid_size + g_offset;
  for (int g = threadIdx.x; g < g_count; g += kThreads) {
    const float alpha = params.alpha[g_offset + g];
    kl_forward[out_row + g] = alpha * final_acc[1][g] - final_acc[0][g] + a0;
    kl_reverse[out_row + g] = -alpha * mean_p + final_acc[0][g] - a0;
  }
  if (threadIdx.x == 0 && g_offset == 0) {
    const float lse_q = final_acc[0][G + 1], mean_q = final_acc[1][G + 1];
    const float lse_qu = final_acc[0][G + 2], mean_qu = final_acc[1][G + 2];
    small_forward[r * m + u] = mean_qu - lse_qu + lse_q;
    small_reverse[r * m + u] = -mean_q - lse_q + lse_qu;
  }
}

// Calls consume(l, s, e) on float arrays of one 16-byte vector of each of the three rows (or on
// single elements where the rows are not equally aligned, and at the ends), over this thread's share.
template <class T, class F>
__device__ __forceinline__ void walk_rows(const T* row_l, const T* row_s, const T* row_u, int64_t V, F&& consume) {
  constexpr int kVec = 16 / sizeof(T);
  const RowSplit<T> split(row_l, V);
  const bool same_split = RowSplit<T>(row_s, V).head == split.head && RowSplit<T>(row_u, V).head == split.head;
  const int64_t vectors = same_split ? split.vectors : 0;
  const int64_t head = same_split ? split.head : V;
  const int64_t tail = same_split ? split.tail : 0;
  for (int64_t i = threadIdx.x; i < vectors; i += kThreads) {
    float l[kVec], s[kVec], e[kVec];
    load_vector(row_l + head + i * kVec, l);
    load_vector(row_s + head + i * kVec, s);
    load_vector(row_u + head + i * kVec, e);
    consume(l, s, e);
  }
  for (int64_t j = threadIdx.x; j < head + tail; j += kThreads) {
    const int64_t id = j < head ? j : V - tail + (j - head);
    const float l[1] = {to_float(row_l[id])}, s[1] = {to_float(row_s[id])}, e[1] = {to_float(row_u[id])};
    consume(l, s, e);
  }
}

// Δ = e − s and the three rows in log2 units; an entry that is −inf in any of them is left out
// (−inf in all three, Δ = 0).
template <int N>
__device__ __forceinline__ void prepare(const float (&l)[N], const float (&s)[N], const float (&e)[N], float (&delta)[N],
                                        float (&yl)[N], float (&ys)[N], float (&yu)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const bool finite = l[i] > -INFINITY && s[i] > -INFINITY && e[i] > -INFINITY;
    delta[i] = finite ? e[i] - s[i] : 0.f;
    yl[i] = finite ? l[i] * kLog2e : -INFINITY;
    ys[i] = finite ? s[i] * kLog2e : -INFINITY;
    yu[i] = finite ? e[i] * kLog2e : -INFINITY;
  }
}

// only_marked: recompute just the (expert, row) blocks that kernel 1b marked (kl_forward NaN).
template <class T, int G>
__global__ void __launch_bounds__(kThreads) dlf_kl_kernel(const T* __restrict__ z_large, const T* __restrict__ z_small,
                                                         const DlfParams params, int64_t V, int g_offset, int g_count,
                                                         bool only_marked, float* __restrict__ kl_forward,
                                                         float* __restrict__ kl_reverse, float* __restrict__ small_forward,
                                                         float* __restrict__ small_reverse) {
  const int u = blockIdx.x;
  const int64_t r = blockIdx.y;
  if (only_marked && !isnan(kl_forward[(r * params.experts_count + u) * params.grid_size + g_offset])) return;
  const T* row_l = z_large + r * V;
  const T* row_s = z_small + r * V;
  const T* row_u = static_cast<const T*>(params.experts[u]) + r * V;

  float alpha2[G];  // α·log2 e
#pragma unroll
  for (int g = 0; g < G; ++g) alpha2[g] = g < g_count ? params.alpha[g_offset + g] * kLog2e : 0.f;
  Lse2 acc[G];
#pragma unroll
  for (int g = 0; g < G; ++g) acc[g].reset();
  ModelStats models;
  models.reset();

  walk_rows(row_l, row_s, row_u, V, [&](const auto& l, const auto& s, const auto& e) {
    constexpr int n = sizeof(l) / sizeof(float);
    float delta[n], yl[n], ys[n], yu[n];
    prepare(l, s, e, delta, yl, ys, yu);
    models.add(yl, ys, yu, delta);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g >= g_count) break;
      float y[n];
#pragma unroll
      for (int i = 0; i < n; ++i) y[i] = fmaf(alpha2[g], delta[i], yl[i]);
      accumulate(acc[g], y, delta);
    }
  });

  finish_kls<G>(acc, models, params, r, u, g_offset, g_count, kl_forward, kl_reverse, small_forward,
                small_reverse);
}

constexpr int kSegment = 8;                 // grid points per chained segment
constexpr float kSegmentBudgetNats = 50.f;  // (kSegment − 1)·|h|·range Δ above this: kernel 1 instead

// Kernel 1b: as kernel 1 on a uniform grid (α_g = α_{g_offset} + (g − g_offset)·step), with chained
// exponentials (see the top of this file). Normaliser of grid point g = k·kSegment + j: base[k] + j·σ.
template <class T, int G>
__global__ void __launch_bounds__(kThreads) dlf_kl_chain_kernel(const T* __restrict__ z_large, const T* __restrict__ z_small,
                                                               const DlfParams params, int64_t V, int g_offset, int g_count,
                                                               float step, float* __restrict__ kl_forward,
                                                               float* __restrict__ kl_reverse, float* __restrict__ small_forward,
                                                               float* __restrict__ small_reverse) {
  constexpr int kSegments = (G + kSegment - 1) / kSegment;
  __shared__ float spread[2][kWarps];
  const int u = blockIdx.x;
  const int64_t r = blockIdx.y;
  const T* row_l = z_large + r * V;
  const T* row_s = z_small + r * V;
  const T* row_u = static_cast<const T*>(params.experts[u]) + r * V;

  const float step2 = step * kLog2e;
  float start2[kSegments], base[kSegments];  // α at each segment start (log2 units); its running max
#pragma unroll
  for (int k = 0; k < kSegments; ++k) {
    start2[k] = k * kSegment < g_count ? params.alpha[g_offset + k * kSegment] * kLog2e : 0.f;
    base[k] = -INFINITY;
  }
  float sum[G], moment[G];  // Σ w and Σ w·Δ against the normaliser of each grid point
#pragma unroll
  for (int g = 0; g < G; ++g) sum[g] = moment[g] = 0.f;
  float sigma = -INFINITY, d_min = 0.f, d_max = 0.f;
  ModelStats models;
  models.reset();

  walk_rows(row_l, row_s, row_u, V, [&](const auto& l, const auto& s, const auto& e) {
    constexpr int n = sizeof(l) / sizeof(float);
    float delta[n], yl[n], ys[n], yu[n];
    prepare(l, s, e, delta, yl, ys, yu);
    models.add(yl, ys, yu, delta);
    float hd[n], chunk_sigma = -INFINITY;
#pragma unroll
    for (int i = 0; i < n; ++i) {
      d_min = fminf(d_min, delta[i]);
      d_max = fmaxf(d_max, delta[i]);
      hd[i] = step2 * delta[i];
      chunk_sigma = fmaxf(chunk_sigma, hd[i]);
    }
    if (chunk_sigma > sigma) {  // σ rises: point j of a segment rescales by exp2(−j·rise)
      if (sigma > -INFINITY) {
        const float f = fast_exp2(sigma - chunk_sigma);
#pragma unroll
        for (int k = 0; k < kSegments; ++k) {
          float factor = 1.f;
#pragma unroll
          for (int j = 1; j < kSegment; ++j) {
            const int g = k * kSegment + j;
            if (g < G) {
              factor *= f;
              sum[g] *= factor;
              moment[g] *= factor;
            }
          }
        }
      }
      sigma = chunk_sigma;
    }
    float ratio[n];
#pragma unroll
    for (int i = 0; i < n; ++i) ratio[i] = fast_exp2(hd[i] - sigma);
#pragma unroll
    for (int k = 0; k < kSegments; ++k) {
      if (k * kSegment >= g_count) break;
      float w[n], chunk_max = -INFINITY;
#pragma unroll
      for (int i = 0; i < n; ++i) {
        w[i] = fmaf(start2[k], delta[i], yl[i]);
        chunk_max = fmaxf(chunk_max, w[i]);
      }
      if (chunk_max > base[k]) {  // the segment's normalisers rise together
        const float scale = fast_exp2(base[k] - chunk_max);
#pragma unroll
        for (int j = 0; j < kSegment; ++j) {
          const int g = k * kSegment + j;
          if (g < G) {
            sum[g] *= scale;
            moment[g] *= scale;
          }
        }
        base[k] = chunk_max;
      }
      if (base[k] == -INFINITY) continue;
#pragma unroll
      for (int i = 0; i < n; ++i) w[i] = fast_exp2(w[i] - base[k]);
#pragma unroll
      for (int j = 0; j < kSegment; ++j) {
        const int g = k * kSegment + j;
        if (g >= G || g >= g_count) break;
        float ss = 0.f, tt = 0.f;
#pragma unroll
        for (int i = 0; i < n; ++i) {
          if (j > 0) w[i] *= ratio[i];
          ss += w[i];
          tt = fmaf(w[i], delta[i], tt);
        }
        sum[g] += ss;
        moment[g] += tt;
      }
    }
  });

  // The range of Δ over the row decides whether the chains stayed within the budget.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    d_min = fminf(d_min, __shfl_xor_sync(kFullMask, d_min, offset));
    d_max = fmaxf(d_max, __shfl_xor_sync(kFullMask, d_max, offset));
  }
  if ((threadIdx.x & 31) == 0) {
    spread[0][threadIdx.x >> 5] = d_min;
    spread[1][threadIdx.x >> 5] = d_max;
  }
  __syncthreads();
  float row_min = spread[0][0], row_max = spread[1][0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    row_min = fminf(row_min, spread[0][w]);
    row_max = fmaxf(row_max, spread[1][w]);
  }
  if (!((kSegment - 1) * fabsf(step) * (row_max - row_min) <= kSegmentBudgetNats)) {
    const int64_t out_row = (r * params.experts_count + u) * params.grid_size + g_offset;
    for (int g = threadIdx.x; g < g_count; g += kThreads) kl_forward[out_row + g] = NAN;  // kernel 1 redoes it
    return;
  }
  Lse2 acc[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int k = g / kSegment, j = g % kSegment;
    acc[g].m = base[k] == -INFINITY ? -INFINITY : base[k] + j * sigma;
    acc[g].s = sum[g];
    acc[g].t = moment[g];
  }
  finish_kls<G>(acc, models, params, r, u, g_offset, g_count, kl_forward, kl_reverse, small_forward,
                small_reverse);
}

// One warp per row: J[t, g] = Σ_u (KL_f[t, g] − K1[u])² + (KL_r[t, g] − K2[u])² and its argmin.
__global__ void dlf_choose_kernel(const float* __restrict__ kl_forward, const float* __restrict__ kl_reverse,
                                  const float* __restrict__ small_forward, const float* __restrict__ small_reverse,
                                  const DlfParams params, int64_t N, float* __restrict__ all, int64_t* __restrict__ expert,
                                  float* __restrict__ alpha, float* __restrict__ objective) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (r >= N) return;  // whole warps leave together
  const int m = params.experts_count, G = params.grid_size;
  float best = INFINITY;
  int best_index = INT_MAX;
  for (int index = lane; index < m * G; index += 32) {
    const float f = kl_forward[r * m * G + index], b = kl_reverse[r * m * G + index];
    float j = 0.f;
    for (int u = 0; u < m; ++u) {
      const float df = f - small_forward[r * m + u], dr = b - small_reverse[r * m + u];
      j = fmaf(df, df, fmaf(dr, dr, j));
    }
    all[r * m * G + index] = j;
    if (j < best) {  // NaN never wins
      best = j;
      best_index = index;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ob = __shfl_xor_sync(kFullMask, best, offset);
    const int oi = __shfl_xor_sync(kFullMask, best_index, offset);
    if (ob < best || (ob == best && oi < best_index)) {
      best = ob;
      best_index = oi;
    }
  }
  if (lane == 0) {
    if (best_index == INT_MAX) best_index = 0;  // every J was NaN
    expert[r] = best_index / G;
    alpha[r] = params.alpha[best_index % G];
    objective[r] = all[r * m * G + best_index];
  }
}

template <class T>
__global__ void dlf_fuse_kernel(const T* __restrict__ z_large, const T* __restrict__ z_small, const DlfParams params,
                                int64_t V, const int64_t* __restrict__ expert, const float* __restrict__ alpha,
                                float* __restrict__ fused) {
  const int64_t r = blockIdx.y;
  const T* row_u = static_cast<const T*>(params.experts[expert[r]]) + r * V;
  const float a = alpha[r];
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < V;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float l = to_float(z_large[r * V + v]);
    fused[r * V + v] = l == -INFINITY ? l : fmaf(a, to_float(row_u[v]) - to_float(z_small[r * V + v]), l);
  }
}


}  // namespace

bool dlf_supports(const at::Tensor& z_large, size_t experts, size_t grid_size) {
  return supports(z_large) && z_large.dim() == 2 && experts >= 1 && static_cast<int64_t>(experts) <= kMaxDlfExperts &&
         grid_size >= 1 && grid_size <= static_cast<size_t>(kMaxGrid) && z_large.size(0) <= kMaxRows;
}

kernels::DlfSolve dlf_solve(const at::Tensor& z_large_in, const at::Tensor& z_small_in,
                            const std::vector<at::Tensor>& experts_in, const std::vector<double>& grid, bool want_fused,
                            bool chained) {
  const c10::cuda::CUDAGuard guard(z_large_in.device());
  const int64_t m = static_cast<int64_t>(experts_in.size()), G = static_cast<int64_t>(grid.size());
  if (m < 1 || m > kMaxDlfExperts) throw RuntimeFailure("CUDA DLF solve: 1 to 16 experts");
  if (G < 1 || G > kMaxGrid) throw RuntimeFailure("CUDA DLF solve: 1 to 256 grid points");
  const at::Tensor z_large = z_large_in.contiguous();
  const at::Tensor z_small = z_small_in.to(z_large.scalar_type()).contiguous();
  std::vector<at::Tensor> experts;
  DlfParams params{};
  for (int64_t u = 0; u < m; ++u) {
    experts.push_back(experts_in[u].to(z_large.scalar_type()).contiguous());
    params.experts[u] = experts.back().data_ptr();
  }
  for (int64_t g = 0; g < G; ++g) params.alpha[g] = static_cast<float>(grid[g]);
  params.grid_size = static_cast<int>(G);
  params.experts_count = static_cast<int>(m);

  const int64_t N = z_large.size(0), V = z_large.size(1);
  kernels::DlfSolve out = kernels::allocate_dlf_solve(N, m, G, V, z_large.options().dtype(at::kFloat), want_fused);
  if (N == 0) return out;
  if (N > kMaxRows) throw RuntimeFailure("CUDA DLF solve: at most 65535 rows per call");

  const rows::DlfGrid shape = rows::describe_grid(grid.data(), G);
  const bool use_chain = chained && shape.uniform;
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(z_large, "the CUDA DLF solve", [&](auto tag) {
    using T = decltype(tag);
    const T* zl = reinterpret_cast<const T*>(z_large.data_ptr());
    const T* zs = reinterpret_cast<const T*>(z_small.data_ptr());
    for (int64_t offset = 0; offset < G; offset += kMaxDlfGridPerLaunch) {
      const int count = static_cast<int>(std::min<int64_t>(kMaxDlfGridPerLaunch, G - offset));
      const dim3 blocks(static_cast<unsigned>(m), static_cast<unsigned>(N));
      float* kf = out.kl_forward.data_ptr<float>();
      float* kr = out.kl_reverse.data_ptr<float>();
      float* k1 = out.small_kl_forward.data_ptr<float>();
      float* k2 = out.small_kl_reverse.data_ptr<float>();
      auto exact = [&](auto kernel, bool only_marked) {
        kernel<<<blocks, kThreads, 0, stream>>>(zl, zs, params, V, static_cast<int>(offset), count, only_marked, kf, kr, k1, k2);
      };
      auto chain = [&](auto kernel) {
        kernel<<<blocks, kThreads, 0, stream>>>(zl, zs, params, V, static_cast<int>(offset), count,
                                                static_cast<float>(shape.step), kf, kr, k1, k2);
      };
      if (use_chain) {
        if (count <= 8) chain(dlf_kl_chain_kernel<T, 8>);
        else if (count <= 16) chain(dlf_kl_chain_kernel<T, 16>);
        else if (count <= 24) chain(dlf_kl_chain_kernel<T, 24>);
        else chain(dlf_kl_chain_kernel<T, 32>);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (count <= 8) exact(dlf_kl_kernel<T, 8>, use_chain);
      else if (count <= 16) exact(dlf_kl_kernel<T, 16>, use_chain);
      else if (count <= 24) exact(dlf_kl_kernel<T, 24>, use_chain);
      else exact(dlf_kl_kernel<T, 32>, use_chain);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    constexpr int kRowsPerBlock = 4;
    dlf_choose_kernel<<<static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
        out.kl_forward.data_ptr<float>(), out.kl_reverse.data_ptr<float>(), out.small_kl_forward.data_ptr<float>(),
        out.small_kl_reverse.data_ptr<float>(), params, N, out.all_objectives.data_ptr<float>(),
        out.expert.data_ptr<int64_t>(), out.alpha.data_ptr<float>(), out.objective.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (want_fused) {
      const dim3 blocks(static_cast<unsigned>(std::min<int64_t>((V + 255) / 256, 32)), static_cast<unsigned>(N));
      dlf_fuse_kernel<T><<<blocks, 256, 0, stream>>>(zl, zs, params, V, out.expert.data_ptr<int64_t>(),
                                                     out.alpha.data_ptr<float>(), out.fused.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace lf::kernels::cuda
