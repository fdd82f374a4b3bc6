// Softmax top-k statistics of logit rows in one pass (forward) and their gradient in one more pass
// (backward): the CUDA bodies of kernels::softmax_topk / softmax_topk_stats / ce_and_softmax_topk.
//
// One thread block per row. Each thread streams 16-byte vectors of its row and keeps an online
// log-sum-exp (a running max and Σ exp(x − max), rescaled when the max grows). Each warp keeps a
// sorted top-k list spread over its lanes (slot j·32 + lane): a candidate is inserted with two
// ballots and a shuffle, and only values that beat the list's k-th entry are offered, so after the
// first few hundred elements almost nothing is. The warps' lists are then merged by warp 0.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "core/error.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace lf::kernels::cuda {

namespace {

using namespace dev;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 2;  // vectors in flight per thread per iteration

// The order of the top-k lists: larger value first, then the smaller id (NaN never enters).
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

template <int S>
struct WarpTopK {
  float v[S];
  int id[S];
  float tv;  // the k-th entry (warp-uniform): only what beats it is offered
  int ti;

  __device__ void init() {
#pragma unroll
    for (int j = 0; j < S; ++j) {
      v[j] = -INFINITY;
      id[j] = INT_MAX;
    }
    tv = -INFINITY;
    ti = INT_MAX;
  }

  __device__ void update_threshold(int k) {
    const int slot = (k - 1) >> 5;
    float val = v[0];
    int idv = id[0];
#pragma unroll
    for (int j = 1; j < S; ++j)
      if (j == slot) {
        val = v[j];
        idv = id[j];
      }
    tv = __shfl_sync(kFullMask, val, (k - 1) & 31);
    ti = __shfl_sync(kFullMask, idv, (k - 1) & 31);
  }

  // Warp-collective: every lane passes the same (x, xid).
  __device__ void insert(float x, int xid, int lane) {
    int p = 0;
#pragma unroll
    for (int j = 0; j < S; ++j) p += __popc(__ballot_sync(kFullMask, better(v[j], id[j], x, xid)));
    float pv[S];
    int pi[S];
#pragma unroll
    for (int j = 0; j < S; ++j) {
      pv[j] = __shfl_up_sync(kFullMask, v[j], 1);
      pi[j] = __shfl_up_sync(kFullMask, id[j], 1);
    }
#pragma unroll
    for (int j = 1; j < S; ++j) {
      const float lv = __shfl_sync(kFullMask, v[j - 1], 31);
      const int li = __shfl_sync(kFullMask, id[j - 1], 31);
      if (lane == 0) {
        pv[j] = lv;
        pi[j] = li;
      }
    }
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const int slot = j * 32 + lane;
      if (slot == p) {
        v[j] = x;
        id[j] = xid;
      } else if (slot > p) {
        v[j] = pv[j];
        id[j] = pi[j];
      }
    }
  }

  // Warp-collective: each lane offers one candidate (or none).
  __device__ void offer(float x, int xid, bool valid, int k, int lane) {
    unsigned mask = __ballot_sync(kFullMask, valid && better(x, xid, tv, ti));
    while (mask) {
      const int src = __ffs(mask) - 1;
      insert(__shfl_sync(kFullMask, x, src), __shfl_sync(kFullMask, xid, src), lane);
      update_threshold(k);
      mask &= mask - 1;
      mask &= __ballot_sync(kFullMask, valid && better(x, xid, tv, ti));
    }
  }
};

// Σ exp((x − m)/τ) and Σ exp(x − m) around one running max m of the raw logits.
struct RowSums {
  float m = -INFINITY, s_tau = 0.f, s_one = 0.f;
  __device__ __forceinline__ void raise(float candidate, float scale) {
    if (candidate > m) {
      s_tau *= fast_exp2((m - candidate) * scale);
      s_one *= fast_exp2((m - candidate) * kLog2e);
      m = candidate;
    }
  }
  __device__ __forceinline__ void merge(float om, float os_tau, float os_one, float scale) {
    const float nm = fmaxf(m, om);
    if (nm == -INFINITY) return;
    s_tau = s_tau * fast_exp2((m - nm) * scale) + os_tau * fast_exp2((om - nm) * scale);
    s_one = s_one * fast_exp2((m - nm) * kLog2e) + os_one * fast_exp2((om - nm) * kLog2e);
    m = nm;
  }
  __device__ __forceinline__ void warp_merge(float scale) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float om = __shfl_xor_sync(kFullMask, m, offset);
      const float a = __shfl_xor_sync(kFullMask, s_tau, offset);
      const float b = __shfl_xor_sync(kFullMask, s_one, offset);
      merge(om, a, b, scale);
    }
  }
};

template <class T, int S>
__global__ void __launch_bounds__(kThreads) topk_stats_forward_kernel(
    const T* __restrict__ logits, int64_t V, const int64_t* __restrict__ labels, int k, float inv_tau, bool need_one,
    float* __restrict__ probs, int64_t* __restrict__ ids, float* __restrict__ lse_out, float* __restrict__ tail_out,
    float* __restrict__ lse1_out, float* __restrict__ ce_out) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float shared_v[kWarps][S * 32];
  __shared__ int shared_id[kWarps][S * 32];
  __shared__ float shared_sums[3][kWarps];

  const int64_t r = blockIdx.x;
  const T* row = logits + r * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float scale = kLog2e * inv_tau;
  WarpTopK<S> top;
  top.init();
  RowSums sums;

  // x[0..n) are elements first_id, first_id + 1, ... of the row; `valid` is false for padding lanes.
  auto consume = [&](const float* x, int n, int64_t first_id, bool valid) {
    float chunk_max = -INFINITY;
    for (int i = 0; i < n; ++i) chunk_max = fmaxf(chunk_max, x[i]);
    if (valid) {
      sums.raise(chunk_max, scale);
      if (sums.m != -INFINITY)
        for (int i = 0; i < n; ++i) {
          sums.s_tau += fast_exp2((x[i] - sums.m) * scale);
          if (need_one) sums.s_one += fast_exp2((x[i] - sums.m) * kLog2e);
        }
    }
    // ≥ (not >): an equal value with a smaller id still beats the k-th entry.
    if (__ballot_sync(kFullMask, valid && chunk_max >= top.tv) == 0) return;
    for (int i = 0; i < n; ++i) top.offer(x[i], static_cast<int>(first_id + i), valid, k, lane);
  };

  const RowSplit<T> split(row, V);
  const T* vectors = row + split.head;
  for (int64_t base = static_cast<int64_t>(warp) * 32 * kUnroll; base < split.vectors; base += kThreads * kUnroll) {
    float x[kUnroll][kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * 32 + lane;
      if (i < split.vectors) {
        load_vector(vectors + i * kVec, x[u]);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) x[u][e] = -INFINITY;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * 32 + lane;
      consume(x[u], kVec, split.head + i * kVec, i < split.vectors);
    }
  }
  // The unaligned head and tail, by warp 0.
  const int64_t scalars = split.head + split.tail;
  if (warp == 0)
    for (int64_t base = 0; base < scalars; base += 32) {
      const int64_t j = base + lane;
      const bool valid = j < scalars;
      const int64_t id = j < split.head ? j : V - split.tail + (j - split.head);
      float x = valid ? to_float(row[id]) : -INFINITY;
      consume(&x, 1, id, valid);
    }

  sums.warp_merge(scale);
  if (lane == 0) {
    shared_sums[0][warp] = sums.m;
    shared_sums[1][warp] = sums.s_tau;
    shared_sums[2][warp] = sums.s_one;
  }
#pragma unroll
  for (int j = 0; j < S; ++j) {
    shared_v[warp][j * 32 + lane] = top.v[j];
    shared_id[warp][j * 32 + lane] = top.id[j];
  }
  __syncthreads();
  if (warp != 0) return;

  RowSums total;
  if (lane < kWarps) {
    total.m = shared_sums[0][lane];
    total.s_tau = shared_sums[1][lane];
    total.s_one = shared_sums[2][lane];
  }
  total.warp_merge(scale);
  for (int w = 1; w < kWarps; ++w)
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const int slot = j * 32 + lane;
      top.offer(shared_v[w][slot], shared_id[w][slot], slot < k, k, lane);
    }

  const float lse_tau = total.m * inv_tau + log2f(total.s_tau) * kLn2;
  float mass = 0.f;
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int slot = j * 32 + lane;
    if (slot < k) {
      const float p = fast_exp2((top.v[j] - total.m) * scale) / total.s_tau;
      probs[r * k + slot] = p;
      ids[r * k + slot] = top.id[j];
      mass += p;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) mass += __shfl_xor_sync(kFullMask, mass, offset);
  if (lane == 0) {
    lse_out[r] = lse_tau;
    tail_out[r] = fmaxf(1.f - mass, 0.f);
    if (labels != nullptr) {
      // With τ = 1 the two sums are one and only s_tau was kept.
      const float lse1 = need_one ? total.m + log2f(total.s_one) * kLn2 : lse_tau;
      lse1_out[r] = lse1;
      const int64_t label = labels[r];
      ce_out[r] = label == -100 ? 0.f : (label < 0 || label >= V) ? NAN : lse1 - to_float(row[label]);
    }
  }
}

// d/dx of Σ_j g_j·p_j + g_ce·CE where p = softmax(x/τ) at the top-k ids and CE = lse(x) − x[label]:
//   g_ce·(softmax(x)_v − [v = label]) + (1/τ)·(Σ_j [v = id_j] g_j p_j − softmax(x/τ)_v·Σ_j g_j p_j).
// The dense part is written for every v; the k + 1 special positions are rewritten afterwards.
template <class T>
__global__ void __launch_bounds__(kThreads) topk_stats_backward_kernel(
    const T* __restrict__ logits, int64_t V, const int64_t* __restrict__ labels, const int64_t* __restrict__ ids,
    const float* __restrict__ probs, const float* __restrict__ lse, const float* __restrict__ lse1,
    const float* __restrict__ grad_probs, const float* __restrict__ grad_ce, int k, float inv_tau, T* __restrict__ grad) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t r = blockIdx.x;
  const T* row = logits + r * V;
  T* out = grad + r * V;
  float dot = 0.f;
  if (grad_probs != nullptr)
    for (int j = 0; j < k; ++j) dot += grad_probs[r * k + j] * probs[r * k + j];
  const int64_t label = labels != nullptr ? labels[r] : -1;
  const float g_ce = (grad_ce != nullptr && labels != nullptr && label != -100) ? grad_ce[r] : 0.f;
  const float a = g_ce, b = -dot * inv_tau;
  const float shift_one = (labels != nullptr ? lse1[r] : 0.f) * kLog2e, shift_tau = lse[r] * kLog2e;
  const float scale = kLog2e * inv_tau;
  auto dense = [&](float x) {
    float g = b * fast_exp2(x * scale - shift_tau);
    if (a != 0.f) g += a * fast_exp2(x * kLog2e - shift_one);
    return g;
  };

  // Vectors only where the input and output rows share their alignment (else all scalar).
  const RowSplit<T> in_split(row, V);
  const bool same = RowSplit<T>(out, V).head == in_split.head;
  struct {
    int64_t head, vectors, tail;
  } split{same ? in_split.head : V, same ? in_split.vectors : 0, same ? in_split.tail : 0};
  const T* vin = row + split.head;
  T* vout = out + split.head;
  for (int64_t i = threadIdx.x; i < split.vectors; i += kThreads) {
    float x[kVec];
    load_vector(vin + i * kVec, x);
#pragma unroll
    for (int e = 0; e < kVec; ++e) x[e] = dense(x[e]);
    store_vector(vout + i * kVec, x);
  }
  for (int64_t j = threadIdx.x; j < split.head + split.tail; j += kThreads) {
    const int64_t id = j < split.head ? j : V - split.tail + (j - split.head);
    out[id] = from_float<T>(dense(to_float(row[id])));
  }
  __syncthreads();  // the rewrites below must land after the dense writes of the same positions
  const int t = threadIdx.x;
  if (t < k) {
    const int64_t v = ids[r * k + t];
    float g = dense(to_float(row[v]));
    if (grad_probs != nullptr) g += grad_probs[r * k + t] * probs[r * k + t] * inv_tau;
    if (v == label) g -= g_ce;
    out[v] = from_float<T>(g);
  } else if (t == k && g_ce != 0.f && label >= 0 && label < V) {
    bool in_top = false;
    for (int j = 0; j < k; ++j) in_top |= ids[r * k + j] == label;
    if (!in_top) out[label] = from_float<T>(dense(to_float(row[label])) - g_ce);
  }
}


at::Tensor float_or_undefined(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }

}  // namespace

bool supports(const at::Tensor& logits) {
  const auto type = logits.scalar_type();
  return logits.is_cuda() && (type == at::kFloat || type == at::kHalf || type == at::kBFloat16);
}

TopKStats topk_stats_forward(const at::Tensor& logits_in, const at::Tensor& labels_in, int64_t k_in, double temperature) {
  if (logits_in.dim() != 2) throw RuntimeFailure("topk_stats_forward: logits must be [rows, vocab]");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t k = std::min(k_in, V);
  if (k < 1 || k > kMaxTopK) throw RuntimeFailure("topk_stats_forward: k must be in [1, 128]");
  const bool with_labels = labels_in.defined();
  const at::Tensor labels = with_labels ? labels_in.to(at::kLong).contiguous() : at::Tensor();
  const auto f32 = logits.options().dtype(at::kFloat);
  TopKStats out;
  out.probs = at::empty({N, k}, f32);
  out.ids = at::empty({N, k}, logits.options().dtype(at::kLong));
  out.lse = at::empty({N}, f32);
  out.tail = at::empty({N}, f32);
  if (with_labels) {
    out.lse1 = at::empty({N}, f32);
    out.ce = at::empty({N}, f32);
  }
  if (N == 0) return out;
  const float inv_tau = static_cast<float>(1.0 / temperature);
  const bool need_one = with_labels && inv_tau != 1.f;
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(logits, "the CUDA top-k kernels", [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          reinterpret_cast<const T*>(logits.data_ptr()), V, with_labels ? labels.data_ptr<int64_t>() : nullptr,
          static_cast<int>(k), inv_tau, need_one, out.probs.data_ptr<float>(), out.ids.data_ptr<int64_t>(),
          out.lse.data_ptr<float>(), out.tail.data_ptr<float>(), with_labels ? out.lse1.data_ptr<float>() : nullptr,
          with_labels ? out.ce.data_ptr<float>() : nullptr);
    };
    if (k <= 32) launch(topk_stats_forward_kernel<T, 1>);
    else if (k <= 64) launch(topk_stats_forward_kernel<T, 2>);
    else launch(topk_stats_forward_kernel<T, 4>);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor topk_stats_backward(const at::Tensor& logits_in, const at::Tensor& labels_in, const TopKStats& saved,
                               const at::Tensor& grad_probs_in, const at::Tensor& grad_ce_in, double temperature) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1), k = saved.probs.size(1);
  at::Tensor grad = at::empty_like(logits);
  if (N == 0) return grad;
  const at::Tensor labels = labels_in.defined() ? labels_in.to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor grad_probs = float_or_undefined(grad_probs_in), grad_ce = float_or_undefined(grad_ce_in);
  const at::Tensor probs = saved.probs.contiguous(), ids = saved.ids.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(logits, "the CUDA top-k kernels", [&](auto tag) {
    using T = decltype(tag);
    topk_stats_backward_kernel<T><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(logits.data_ptr()), V, labels.defined() ? labels.data_ptr<int64_t>() : nullptr,
        ids.data_ptr<int64_t>(), probs.data_ptr<float>(), saved.lse.data_ptr<float>(),
        labels.defined() ? saved.lse1.data_ptr<float>() : nullptr,
        grad_probs.defined() ? grad_probs.data_ptr<float>() : nullptr,
        grad_ce.defined() ? grad_ce.data_ptr<float>() : nullptr, static_cast<int>(k),
        static_cast<float>(1.0 / temperature), reinterpret_cast<T*>(grad.data_ptr()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace lf::kernels::cuda
