#include "decode/sampling.h"

#include <ATen/ATen.h>

#include <cmath>
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

at::Tensor greedy_tokens(const at::Tensor& logits) {
  const auto dtype = logits.scalar_type();
  const bool widens_exactly = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (!logits.device().is_cpu() || logits.dim() != 2 || !widens_exactly) return logits.argmax(-1).to(at::kCPU);
  // Widening to float32 is exact, so bf16/fp16 ties stay ties (float64 would not narrow exactly).
  const at::Tensor x = logits.to(at::kFloat).contiguous();
  const at::Tensor best = x.amax(-1).contiguous();  // NaN where a row holds one
  const int64_t rows = x.size(0), vocab = x.size(1);
  at::Tensor out = at::empty({rows}, at::TensorOptions().dtype(at::kLong));
  const float* data = x.data_ptr<float>();
  const float* maxima = best.data_ptr<float>();
  int64_t* picked = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = data + r * vocab;
    const float m = maxima[r];
    int64_t v = 0;
    if (std::isnan(m))
      while (v < vocab && !std::isnan(row[v])) ++v;
    else
      while (v < vocab && row[v] != m) ++v;
    picked[r] = v < vocab ? v : 0;  // (vocab == 0 only: argmax would throw on it)
  }
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
