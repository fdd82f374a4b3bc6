// Device helpers shared by the logit kernels: 16-byte vector loads of float/half/bfloat16 rows,
// the fast exp2, and online log-sum-exp accumulators that merge across threads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lf::kernels::cuda::dev {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ex2.approx: one MUFU instruction, relative error ~2^-22; exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// A row is read as 16-byte vectors over its aligned middle; the few elements before the first
// aligned address and after the last whole vector are read one by one.
template <class T>
struct RowSplit {
  static constexpr int kVec = 16 / sizeof(T);
  int64_t head;     // scalar elements before the vectors
  int64_t vectors;  // whole vectors
  int64_t tail;     // scalar elements after them
  __device__ RowSplit(const T* row, int64_t n) {
    const auto address = reinterpret_cast<uintptr_t>(row);
    int64_t h = static_cast<int64_t>(((16 - (address & 15)) & 15) / sizeof(T));
    if (address % sizeof(T) != 0 || h > n) h = n;  // misaligned element type: everything scalar
    head = h;
    vectors = (n - h) / kVec;
    tail = n - h - vectors * kVec;
  }
};

template <class T>
__device__ __forceinline__ void load_vector(const T* p, float (&out)[16 / sizeof(T)]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) out[i] = to_float(v[i]);
}

template <class T>
__device__ __forceinline__ void store_vector(T* p, const float (&in)[16 / sizeof(T)]) {
  uint4 raw;
  T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) v[i] = from_float<T>(in[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Σ exp2(x − m) kept with its running max m (log2 domain); t is a weighted companion sum
// Σ exp2(x − m)·w that rescales with it. Empty: m = −inf, s = t = 0.
struct Lse2 {
  float m, s, t;
  __device__ __forceinline__ void reset() {
    m = -INFINITY;
    s = 0.f;
    t = 0.f;
  }
  // Raise the max to at least `candidate` before adding terms below it.
  __device__ __forceinline__ void raise(float candidate) {
    if (candidate > m) {
      const float scale = fast_exp2(m - candidate);  // m = −inf gives 0
      s *= scale;
      t *= scale;
      m = candidate;
    }
  }
  __device__ __forceinline__ void merge(float om, float os, float ot) {
    const float nm = fmaxf(m, om);
    if (nm == -INFINITY) return;
    const float a = fast_exp2(m - nm), b = fast_exp2(om - nm);
    s = s * a + os * b;
    t = t * a + ot * b;
    m = nm;
  }
  __device__ __forceinline__ void warp_merge() {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float om = __shfl_xor_sync(kFullMask, m, offset);
      const float os = __shfl_xor_sync(kFullMask, s, offset);
      const float ot = __shfl_xor_sync(kFullMask, t, offset);
      merge(om, os, ot);
    }
  }
  // log(Σ exp(x)) in natural units, for x given in log2 units (x·log2 e).
  __device__ __forceinline__ float natural_lse() const { return (m + log2f(s)) * kLn2; }
};

}  // namespace lf::kernels::cuda::dev
