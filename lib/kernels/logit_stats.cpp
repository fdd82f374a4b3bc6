#include "kernels/logit_stats.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace lf::kernels {

namespace {
// Statistics in float32, or in double when the logits are double (finite-difference checks).
at::Tensor widen(const at::Tensor& logits) { return logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat); }
}  // namespace

at::Tensor log_softmax(const at::Tensor& logits, double temperature) {
  at::Tensor x = widen(logits);
  if (temperature != 1.0) x = x / temperature;
  return at::log_softmax(x, -1);
}

TopK softmax_topk(const at::Tensor& logits, int64_t k, double temperature) {
  const int64_t kk = std::min<int64_t>(k, logits.size(-1));
  at::Tensor logp = log_softmax(logits, temperature);
  auto [values, ids] = logp.topk(kk, -1, /*largest=*/true, /*sorted=*/true);
  return {values.exp(), ids};
}

at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels) {
  return at::cross_entropy_loss(widen(logits), labels, {}, at::Reduction::None, -100);
}

RowStats softmax_topk_stats(const at::Tensor& logits, int64_t k, double temperature) {
  at::NoGradGuard no_grad;
  at::Tensor x = widen(logits);
  if (temperature != 1.0) x = x / temperature;
  RowStats out;
  out.lse = at::logsumexp(x, -1);
  auto [values, ids] = x.topk(std::min<int64_t>(k, x.size(-1)), -1, true, true);
  out.probs = (values - out.lse.unsqueeze(-1)).exp();
  out.ids = ids;
  out.tail = (1.0 - out.probs.sum(-1)).clamp_min(0.0);
  return out;
}

}  // namespace lf::kernels
