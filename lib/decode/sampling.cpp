#include "decode/sampling.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace lf {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

double sampling_uniform(int64_t seed, int64_t key, int64_t step) {
  uint64_t h = splitmix64(static_cast<uint64_t>(seed));
  h = splitmix64(h ^ static_cast<uint64_t>(key));
  h = splitmix64(h ^ static_cast<uint64_t>(step));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 53 random bits
}

namespace {

// Four floats (one SSE register on any x86-64, part of a wider one where there is one): the scans
// below are written on these so they are vectorised on every machine, which a plain loop's running
// maximum is not (the compiler may not reorder float comparisons).
typedef float Floats4 __attribute__((vector_size(16)));
typedef int32_t Ints4 __attribute__((vector_size(16)));
constexpr int64_t kBlock = 16;  // floats per step of the scans: four vectors

Floats4 load4(const float* p) {
  Floats4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The first index of a row's maximum, NaN counting as the largest (argmax's answer), in two passes
// over the row: the maximum (and whether any NaN), then the first place it occurs.
int64_t first_maximum(const float* row, int64_t vocab) {
  const float lowest = -std::numeric_limits<float>::infinity();
  Floats4 m[4] = {{lowest, lowest, lowest, lowest}, {lowest, lowest, lowest, lowest},
                  {lowest, lowest, lowest, lowest}, {lowest, lowest, lowest, lowest}};
  Ints4 nan = {0, 0, 0, 0};
  const int64_t blocked = vocab - vocab % kBlock;
  for (int64_t v = 0; v < blocked; v += kBlock)
    for (int k = 0; k < 4; ++k) {
      const Floats4 x = load4(row + v + 4 * k);
      m[k] = x > m[k] ? x : m[k];
      nan |= x != x;
    }
  float best = lowest;
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 4; ++i) best = m[k][i] > best ? m[k][i] : best;
  bool any_nan = (nan[0] | nan[1] | nan[2] | nan[3]) != 0;
  for (int64_t v = blocked; v < vocab; ++v) {
    best = row[v] > best ? row[v] : best;
    any_nan = any_nan || std::isnan(row[v]);
  }
  int64_t v = 0;
  if (any_nan) {
    while (v < vocab && !std::isnan(row[v])) ++v;
  } else {
    const Floats4 target = {best, best, best, best};
    for (; v < blocked; v += kBlock) {
      const Ints4 hit = (load4(row + v) == target) | (load4(row + v + 4) == target) | (load4(row + v + 8) == target) |
                        (load4(row + v + 12) == target);
      if (hit[0] | hit[1] | hit[2] | hit[3]) break;
    }
    while (v < vocab && row[v] != best) ++v;
  }
  return v < vocab ? v : 0;  // (vocab == 0 only: argmax would throw on it)
}

}  // namespace

at::Tensor greedy_tokens(const at::Tensor& logits) {
  const auto dtype = logits.scalar_type();
  const bool widens_exactly = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (!logits.device().is_cpu() || logits.dim() != 2 || !widens_exactly) return logits.argmax(-1).to(at::kCPU);
  // Widening to float32 is exact, so bf16/fp16 ties stay ties (float64 would not narrow exactly).
  const at::Tensor x = logits.to(at::kFloat).contiguous();
  const int64_t rows = x.size(0), vocab = x.size(1);
  at::Tensor out = at::empty({rows}, at::TensorOptions().dtype(at::kLong));
  const float* data = x.data_ptr<float>();
  int64_t* picked = out.data_ptr<int64_t>();
  // One row per task: a batch's rows are scanned on all intra-op threads at once.
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) picked[r] = first_maximum(data + r * vocab, vocab);
  });
  return out;
}

at::Tensor sample_tokens(const at::Tensor& logits, const SamplingConfig& sampling, const std::vector<int64_t>& row_keys,
                         int64_t step) {
  at::NoGradGuard no_grad;
  if (sampling.temperature == 0.0) return greedy_tokens(logits);  // first maximum on ties
  at::Tensor x = logits.to(at::kDouble) / sampling.temperature;
  const int64_t vocab = x.size(-1);
  // Candidates in descending order of logit; top-k and top-p cut this list.
  auto [sorted, order] = x.sort(-1, /*descending=*/true);
  if (sampling.top_k > 0 && sampling.top_k < vocab)
    sorted.narrow(-1, sampling.top_k, vocab - sampling.top_k).fill_(-std::numeric_limits<double>::infinity());
  at::Tensor probs = at::softmax(sorted, -1);
  if (sampling.top_p < 1.0) {
    // Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    at::Tensor before = probs.cumsum(-1) - probs;
    probs = probs.masked_fill(before >= sampling.top_p, 0.0);
  }
  probs = probs.to(at::kCPU).contiguous();
  order = order.to(at::kCPU).contiguous();
  const int64_t rows = probs.size(0);
  at::Tensor out = at::empty({rows}, at::TensorOptions().dtype(at::kLong));
  auto p = probs.accessor<double, 2>();
  auto o = order.accessor<int64_t, 2>();
  int64_t* picked = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t v = 0; v < vocab; ++v) total += p[r][v];
    const double target = sampling_uniform(sampling.seed, row_keys.at(r), step) * total;
    double cumulative = 0;
    int64_t pick = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      if (p[r][v] <= 0) continue;
      pick = v;
      cumulative += p[r][v];
      if (cumulative > target) break;
    }
    picked[r] = o[r][pick];
  }
  return out;
}

}  // namespace lf
