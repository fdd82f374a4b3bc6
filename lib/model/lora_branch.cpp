#include "model/lora_branch.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <mutex>

namespace lf {

namespace {

// A counter-based 32-bit hash per element (lowbias32, Wellons' integer hash, on a Weyl sequence of
// the index): every lane independent, so the loop vectorises (cloned for AVX-512 and AVX2 below).
constexpr uint32_t kWeyl = 0x9e3779b9u, kMix1 = 0x7feb352du, kMix2 = 0x846ca68bu;

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= kMix1;
  x ^= x >> 15;
  x *= kMix2;
  x ^= x >> 16;
  return x;
}

// The key of elements [2^32·hi, 2^32·(hi + 1)) of a call with `seed`.
inline uint32_t block_key(uint64_t seed, uint64_t hi) {
  return lowbias32(static_cast<uint32_t>(seed) ^ lowbias32(static_cast<uint32_t>(seed >> 32) + kWeyl * static_cast<uint32_t>(hi + 1)));
}

// Element i is kept when the top 24 bits of lowbias32(key + kWeyl · i) are ≥ round(p · 2^24).
uint32_t drop_threshold(double p) { return static_cast<uint32_t>(std::lround(p * 16777216.0)); }

// A dropped element is x · 0, as LibTorch's dropout computes it (an infinite x gives NaN there too).
__attribute__((target_clones("avx512f", "avx2", "default")))
void dropout_f32(const float* x, float* out, int64_t n, uint32_t key, uint32_t low, uint32_t threshold, float scale) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = lowbias32(key + kWeyl * (low + static_cast<uint32_t>(i)));
    out[i] = x[i] * ((h >> 8) >= threshold ? scale : 0.0f);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void dropout_bf16(const uint16_t* x, uint16_t* out, int64_t n, uint32_t key, uint32_t low, uint32_t threshold, float scale) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = lowbias32(key + kWeyl * (low + static_cast<uint32_t>(i)));
    const float v = __builtin_bit_cast(float, static_cast<uint32_t>(x[i]) << 16) * ((h >> 8) >= threshold ? scale : 0.0f);
    const uint32_t bits = __builtin_bit_cast(uint32_t, v);
    // Round to nearest even, as c10::BFloat16 does; a NaN stays a quiet NaN.
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    out[i] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
  }
}

// Any other dtype (double, half): plain C++.
template <class T>
void dropout_generic(const T* x, T* out, int64_t n, uint32_t key, uint32_t low, uint32_t threshold, double p) {
  using Math = at::opmath_type<T>;
  const Math scale = static_cast<Math>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = lowbias32(key + kWeyl * (low + static_cast<uint32_t>(i)));
    out[i] = static_cast<T>(static_cast<Math>(x[i]) * ((h >> 8) >= threshold ? scale : Math(0)));
  }
}

// Calls `run(offset, count, key, low)` over [begin, end) in pieces that do not cross a 2^32 boundary.
template <class F>
void over_blocks(int64_t begin, int64_t end, uint64_t seed, const F& run) {
  for (int64_t i = begin; i < end;) {
    const uint64_t hi = static_cast<uint64_t>(i) >> 32;
    const int64_t stop = std::min<int64_t>(end, static_cast<int64_t>((hi + 1) << 32));
    run(i, stop - i, block_key(seed, hi), static_cast<uint32_t>(i));
    i = stop;
  }
}

void seeded_dropout_cpu(const at::Tensor& in, at::Tensor& out, uint64_t seed, double p) {
  const uint32_t threshold = drop_threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  at::parallel_for(0, in.numel(), 16384, [&](int64_t begin, int64_t end) {
    over_blocks(begin, end, seed, [&](int64_t at, int64_t count, uint32_t key, uint32_t low) {
      switch (in.scalar_type()) {
        case at::kFloat:
          dropout_f32(in.data_ptr<float>() + at, out.data_ptr<float>() + at, count, key, low, threshold, scale);
          break;
        case at::kBFloat16:
          dropout_bf16(reinterpret_cast<const uint16_t*>(in.data_ptr<at::BFloat16>()) + at,
                       reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) + at, count, key, low, threshold, scale);
          break;
        default:
          AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, in.scalar_type(), "seeded_dropout", [&] {
            dropout_generic<scalar_t>(in.data_ptr<scalar_t>() + at, out.data_ptr<scalar_t>() + at, count, key, low,
                                      threshold, p);
          });
      }
    });
  });
}

// The same hash in LibTorch integer ops, for other devices: int64 tensors holding 32-bit values,
// each product masked back to 32 bits.
at::Tensor keep_mask_ops(const at::Tensor& x, uint64_t seed, uint32_t threshold) {
  const int64_t n = x.numel();
  constexpr int64_t kLow = 0xffffffffll;
  const auto hash = [&](at::Tensor v) {
    v = at::bitwise_xor(v, at::bitwise_right_shift(v, 16));
    v = at::bitwise_and(v * static_cast<int64_t>(kMix1), kLow);
    v = at::bitwise_xor(v, at::bitwise_right_shift(v, 15));
    v = at::bitwise_and(v * static_cast<int64_t>(kMix2), kLow);
    return at::bitwise_xor(v, at::bitwise_right_shift(v, 16));
  };
  const at::Tensor index = at::arange(n, x.options().dtype(at::kLong));
  // The key of each element's 2^32 block (one block below 4 G elements).
  std::vector<int64_t> keys;
  for (int64_t b = 0; b <= (n >> 32); ++b) keys.push_back(block_key(seed, static_cast<uint64_t>(b)));
  const at::Tensor key = at::tensor(keys, index.options()).index_select(0, at::bitwise_right_shift(index, 32));
  const at::Tensor counter = at::bitwise_and(at::bitwise_and(index, kLow) * static_cast<int64_t>(kWeyl), kLow);
  const at::Tensor h = hash(at::bitwise_and(key + counter, kLow));
  return (at::bitwise_right_shift(h, 8) >= static_cast<int64_t>(threshold)).reshape(x.sizes());
}

uint64_t draw_seed() {
  auto* generator = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(generator->mutex_);
  return generator->random64();
}

// The dtype the branch computes in: the autocast dtype under autocast, else the adapter's.
c10::ScalarType compute_dtype(const at::Tensor& x, const at::Tensor& a) {
  const auto device = x.device().type();
  return at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device) : a.scalar_type();
}

// Every product here has explicit dtypes: autocast must not recast them (it may still be on in the
// thread that runs the backward).
struct NoAutocast {
  explicit NoAutocast(c10::DeviceType type) : type_(type), was_(at::autocast::is_autocast_enabled(type)) {
    at::autocast::set_autocast_enabled(type_, false);
  }
  ~NoAutocast() { at::autocast::set_autocast_enabled(type_, was_); }
  c10::DeviceType type_;
  bool was_;
};

at::Tensor maybe_drop(const at::Tensor& x, double p, int64_t seed, bool drop) {
  return drop ? seeded_dropout(x, p, static_cast<uint64_t>(seed)) : x;
}

// y = s · (drop(x) Aᵀ) Bᵀ. Saves x (as given), A, B and h = drop(x) Aᵀ [.., r]; the backward
// regenerates drop(x) from the seed.
struct LoraBranchFunction : public torch::autograd::Function<LoraBranchFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a,
                            const at::Tensor& b, double scale, double p, int64_t seed, bool drop, int64_t dtype) {
    const auto type = static_cast<c10::ScalarType>(dtype);
    NoAutocast no_autocast(x.device().type());
    const at::Tensor h = at::matmul(maybe_drop(x.to(type), p, seed, drop), a.to(type).t());
    ctx->save_for_backward({x, a, b, h});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["drop"] = drop;
    ctx->saved_data["dtype"] = dtype;
    return at::matmul(h, b.to(type).t()) * scale;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &a = saved[1], &b = saved[2], &h = saved[3];
    const auto type = static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble(), p = ctx->saved_data["p"].toDouble();
    const int64_t seed = ctx->saved_data["seed"].toInt();
    const bool drop = ctx->saved_data["drop"].toBool();
    NoAutocast no_autocast(x.device().type());
    const int64_t r = a.size(0), in = a.size(1), out = b.size(0);
    const at::Tensor g = (grads[0].to(type) * scale).reshape({-1, out});  // [N, out]
    const at::Tensor grad_b = g.t().mm(h.reshape({-1, r}));               // [out, r]
    const at::Tensor gh = g.mm(b.to(type));                               // [N, r]
    const at::Tensor dropped = maybe_drop(x.to(type), p, seed, drop).reshape({-1, in});
    const at::Tensor grad_a = gh.t().mm(dropped);                         // [r, in]
    at::Tensor grad_x;
    if (x.requires_grad())
      grad_x = maybe_drop(gh.mm(a.to(type)).reshape(x.sizes()), p, seed, drop).to(x.scalar_type());
    return {grad_x,          grad_a.to(a.scalar_type()), grad_b.to(b.scalar_type()), at::Tensor(), at::Tensor(),
            at::Tensor(),    at::Tensor(),               at::Tensor()};
  }
};

}  // namespace

at::Tensor seeded_keep_mask(const at::Tensor& like, double p, uint64_t seed) {
  return keep_mask_ops(like, seed, drop_threshold(p));
}

at::Tensor seeded_dropout(const at::Tensor& x, double p, uint64_t seed) {
  if (!x.device().is_cpu()) return x * keep_mask_ops(x, seed, drop_threshold(p)).to(x.scalar_type()) * (1.0 / (1.0 - p));
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  seeded_dropout_cpu(in, out, seed, p);
  return out;
}

at::Tensor lora_branch(const at::Tensor& x, const LoraAdapter& adapter, bool training) {
  const bool drop = training && adapter.dropout > 0;
  // A seed is drawn whether or not a graph is built: a checkpointed layer's forward (without one)
  // and its recomputation (with one) must draw alike.
  const int64_t seed = drop ? static_cast<int64_t>(draw_seed()) : 0;
  const c10::ScalarType type = compute_dtype(x, adapter.A);
  const bool differentiable =
      at::GradMode::is_enabled() && (x.requires_grad() || adapter.A.requires_grad() || adapter.B.requires_grad());
  if (differentiable)
    return LoraBranchFunction::apply(x, adapter.A, adapter.B, adapter.scale, adapter.dropout, seed, drop,
                                     static_cast<int64_t>(type));
  NoAutocast no_autocast(x.device().type());
  const at::Tensor h = at::matmul(maybe_drop(x.to(type), adapter.dropout, seed, drop), adapter.A.to(type).t());
  return at::matmul(h, adapter.B.to(type).t()) * adapter.scale;
}

}  // namespace lf
