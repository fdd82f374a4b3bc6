#include "kernels/logit_stats.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#ifdef LOGITFUSE_HAVE_CUDA
#include "kernels/cuda/kernels_cuda.h"
#endif

namespace lf::kernels {

namespace {
// Statistics in float32, or in double when the logits are double (finite-difference checks).
at::Tensor widen(const at::Tensor& logits) { return logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat); }

#ifdef LOGITFUSE_HAVE_CUDA
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The fused forward/backward as autograd nodes: FusedTopK (probs, ids) and FusedCeTopK (probs, ids,
// ce). Two classes because autograd's apply() rejects an undefined tensor argument.
struct FusedForward {
  static variable_list run(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels, int64_t k,
                           double temperature) {
    cuda::TopKStats stats = cuda::topk_stats_forward(logits, labels, k, temperature);
    const bool with_labels = labels.defined();
    ctx->saved_data["temperature"] = temperature;
    ctx->save_for_backward({logits, stats.probs, stats.ids, stats.lse});
    if (with_labels) ctx->saved_data["labels"] = labels, ctx->saved_data["lse1"] = stats.lse1;
    ctx->mark_non_differentiable({stats.ids});
    ctx->set_materialize_grads(false);
    if (with_labels) return {stats.probs, stats.ids, stats.ce};
    return {stats.probs, stats.ids};
  }

  static at::Tensor gradient(AutogradContext* ctx, const variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    const bool with_labels = ctx->saved_data.count("labels") > 0;
    cuda::TopKStats stats;
    stats.probs = saved[1];
    stats.ids = saved[2];
    stats.lse = saved[3];
    at::Tensor labels;
    if (with_labels) {
      labels = ctx->saved_data["labels"].toTensor();
      stats.lse1 = ctx->saved_data["lse1"].toTensor();
    }
    const at::Tensor grad_probs = grads[0];
    const at::Tensor grad_ce = with_labels ? grads[2] : at::Tensor();
    if (!grad_probs.defined() && !grad_ce.defined()) return {};
    return cuda::topk_stats_backward(saved[0], labels, stats, grad_probs, grad_ce, ctx->saved_data["temperature"].to<double>());
  }
};

class FusedTopK : public torch::autograd::Function<FusedTopK> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, int64_t k, double temperature) {
    return FusedForward::run(ctx, logits, at::Tensor(), k, temperature);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {FusedForward::gradient(ctx, grads), at::Tensor(), at::Tensor()};
  }
};

class FusedCeTopK : public torch::autograd::Function<FusedCeTopK> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels, int64_t k,
                               double temperature) {
    return FusedForward::run(ctx, logits, labels, k, temperature);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {FusedForward::gradient(ctx, grads), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
#endif
}  // namespace

bool fused_kernels_apply(const at::Tensor& logits, int64_t k, Backend backend) {
#ifdef LOGITFUSE_HAVE_CUDA
  return backend == Backend::automatic && logits.dim() == 2 && k >= 1 &&
         std::min<int64_t>(k, logits.size(-1)) <= cuda::kMaxTopK && cuda::supports(logits);
#else
  (void)logits, (void)k, (void)backend;
  return false;
#endif
}

at::Tensor log_softmax(const at::Tensor& logits, double temperature) {
  at::Tensor x = widen(logits);
  if (temperature != 1.0) x = x / temperature;
  return at::log_softmax(x, -1);
}

TopK softmax_topk(const at::Tensor& logits, int64_t k, double temperature, Backend backend) {
#ifdef LOGITFUSE_HAVE_CUDA
  if (fused_kernels_apply(logits, k, backend)) {
    auto out = FusedTopK::apply(logits, k, temperature);
    return {out[0], out[1]};
  }
#endif
  const int64_t kk = std::min<int64_t>(k, logits.size(-1));
  at::Tensor logp = log_softmax(logits, temperature);
  auto [values, ids] = logp.topk(kk, -1, /*largest=*/true, /*sorted=*/true);
  return {values.exp(), ids};
}

at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels) {
  return at::cross_entropy_loss(widen(logits), labels, {}, at::Reduction::None, -100);
}

CeTopK ce_and_softmax_topk(const at::Tensor& logits, const at::Tensor& labels, int64_t k, double temperature,
                           Backend backend) {
#ifdef LOGITFUSE_HAVE_CUDA
  if (fused_kernels_apply(logits, k, backend) && labels.defined()) {
    auto out = FusedCeTopK::apply(logits, labels, k, temperature);
    return {out[2], out[0], out[1]};
  }
#endif
  if (!labels.defined()) {
    TopK top = softmax_topk(logits, k, temperature, backend);
    return {at::Tensor(), top.probs, top.ids};
  }
  if (temperature != 1.0) {
    TopK top = softmax_topk(logits, k, temperature, Backend::aten);
    return {cross_entropy_rows(logits, labels), top.probs, top.ids};
  }
  // At temperature 1 both terms read one log-softmax: CE is −log p[label] (0 for label −100).
  const at::Tensor logp = log_softmax(logits, 1.0);
  auto [values, ids] = logp.topk(std::min<int64_t>(k, logits.size(-1)), -1, /*largest=*/true, /*sorted=*/true);
  const at::Tensor ignored = labels == -100;
  const at::Tensor picked = logp.gather(1, labels.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1);
  return {-picked.masked_fill(ignored, 0.0), values.exp(), ids};
}

RowStats softmax_topk_stats(const at::Tensor& logits, int64_t k, double temperature, Backend backend) {
  at::NoGradGuard no_grad;
#ifdef LOGITFUSE_HAVE_CUDA
  if (fused_kernels_apply(logits, k, backend)) {
    cuda::TopKStats stats = cuda::topk_stats_forward(logits, at::Tensor(), k, temperature);
    return {stats.probs, stats.ids, stats.lse, stats.tail};
  }
#endif
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
