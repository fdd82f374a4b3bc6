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
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/error.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/kernels_cuda.h"

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

template <class T, int G>
__global__ void __launch_bounds__(kThreads) dlf_kl_kernel(const T* __restrict__ z_large, const T* __restrict__ z_small,
                                                         const DlfParams params, int64_t V, int g_offset, int g_count,
                                                         float* __restrict__ kl_forward, float* __restrict__ kl_reverse,
                                                         float* __restrict__ small_forward, float* __restrict__ small_reverse) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kAcc = G + 3;  // grid points, then P, Q, Q_u
  __shared__ float partial[3][kWarps][kAcc];
  __shared__ float final_acc[3][kAcc];

  const int u = blockIdx.x, m = params.experts_count;
  const int64_t r = blockIdx.y;
  const T* row_l = z_large + r * V;
  const T* row_s = z_small + r * V;
  const T* row_u = static_cast<const T*>(params.experts[u]) + r * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float alpha2[G];  // α·log2 e
#pragma unroll
  for (int g = 0; g < G; ++g) alpha2[g] = g < g_count ? params.alpha[g_offset + g] * kLog2e : 0.f;
  Lse2 acc[G], p_acc, q_acc, qu_acc;
#pragma unroll
  for (int g = 0; g < G; ++g) acc[g].reset();
  p_acc.reset();
  q_acc.reset();
  qu_acc.reset();

  auto consume = [&](const auto& l, const auto& s, const auto& e) {
    constexpr int n = sizeof(l) / sizeof(float);
    float delta[n], yl[n], ys[n], yu[n];
#pragma unroll
    for (int i = 0; i < n; ++i) {
      const bool finite = l[i] > -INFINITY && s[i] > -INFINITY && e[i] > -INFINITY;
      delta[i] = finite ? e[i] - s[i] : 0.f;
      yl[i] = finite ? l[i] * kLog2e : -INFINITY;
      ys[i] = finite ? s[i] * kLog2e : -INFINITY;
      yu[i] = finite ? e[i] * kLog2e : -INFINITY;
    }
    accumulate(p_acc, yl, delta);
    accumulate(q_acc, ys, delta);
    accumulate(qu_acc, yu, delta);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g >= g_count) break;
      float y[n];
#pragma unroll
      for (int i = 0; i < n; ++i) y[i] = fmaf(alpha2[g], delta[i], yl[i]);
      accumulate(acc[g], y, delta);
    }
  };

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
  publish(p_acc, G);
  publish(q_acc, G + 1);
  publish(qu_acc, G + 2);
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

DlfSolveCuda dlf_solve(const at::Tensor& z_large_in, const at::Tensor& z_small_in, const std::vector<at::Tensor>& experts_in,
                       const std::vector<double>& grid, bool want_fused) {
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
  const auto f32 = z_large.options().dtype(at::kFloat);
  DlfSolveCuda out;
  out.kl_forward = at::empty({N, m, G}, f32);
  out.kl_reverse = at::empty({N, m, G}, f32);
  out.small_kl_forward = at::empty({N, m}, f32);
  out.small_kl_reverse = at::empty({N, m}, f32);
  out.all_objectives = at::empty({N, m, G}, f32);
  out.expert = at::empty({N}, z_large.options().dtype(at::kLong));
  out.alpha = at::empty({N}, f32);
  out.objective = at::empty({N}, f32);
  if (want_fused) out.fused = at::empty({N, V}, f32);
  if (N == 0) return out;
  if (N > kMaxRows) throw RuntimeFailure("CUDA DLF solve: at most 65535 rows per call");

  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(z_large, "the CUDA DLF solve", [&](auto tag) {
    using T = decltype(tag);
    const T* zl = reinterpret_cast<const T*>(z_large.data_ptr());
    const T* zs = reinterpret_cast<const T*>(z_small.data_ptr());
    for (int64_t offset = 0; offset < G; offset += kMaxDlfGridPerLaunch) {
      const int count = static_cast<int>(std::min<int64_t>(kMaxDlfGridPerLaunch, G - offset));
      const dim3 blocks(static_cast<unsigned>(m), static_cast<unsigned>(N));
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kThreads, 0, stream>>>(zl, zs, params, V, static_cast<int>(offset), count,
                                                out.kl_forward.data_ptr<float>(), out.kl_reverse.data_ptr<float>(),
                                                out.small_kl_forward.data_ptr<float>(), out.small_kl_reverse.data_ptr<float>());
      };
      if (count <= 8) launch(dlf_kl_kernel<T, 8>);
      else if (count <= 16) launch(dlf_kl_kernel<T, 16>);
      else if (count <= 24) launch(dlf_kl_kernel<T, 24>);
      else launch(dlf_kl_kernel<T, 32>);
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
