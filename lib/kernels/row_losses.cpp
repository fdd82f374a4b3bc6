#include "kernels/row_losses.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cpu/ce_kl_avx2.h"
#include "kernels/cpu/features.h"
#include "kernels/logit_stats.h"

namespace lf::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The saved tensors live in saved_data, not save_for_backward: the backward overwrites them (it
// runs once; the objective never retains the graph of a logit chunk).
struct CrossEntropyRows : public torch::autograd::Function<CrossEntropyRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels) {
    const at::Tensor ignored = labels == -100;
    const at::Tensor safe = labels.masked_fill(ignored, 0).to(at::kLong).unsqueeze(1);
    at::Tensor logp = log_softmax(logits, 1.0);
    at::Tensor ce = logp.gather(1, safe).squeeze(1).neg_().masked_fill_(ignored, 0.0);
    ctx->saved_data["logp"] = logp;
    ctx->saved_data["labels"] = safe;
    ctx->saved_data["ignored"] = ignored;
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return ce;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    at::Tensor grad = ctx->saved_data["logp"].toTensor();
    ctx->saved_data.erase("logp");
    const at::Tensor g = grads[0].to(grad.scalar_type()).masked_fill(ctx->saved_data["ignored"].toTensor(), 0.0).unsqueeze(1);
    grad.exp_().mul_(g);
    grad.scatter_add_(1, ctx->saved_data["labels"].toTensor(), g.neg());
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.scalar_type() == dtype ? grad : grad.to(dtype), at::Tensor()};
  }
};

struct FullKlRows : public torch::autograd::Function<FullKlRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher, double temperature) {
    at::Tensor log_s = log_softmax(student, temperature);
    at::Tensor log_t = log_softmax(teacher.to(log_s.scalar_type()), temperature);
    at::Tensor p = log_t.exp();
    // Σ p (log p − log q) in log_t's buffer; a zero-probability entry contributes 0 even where a
    // log is −inf (0·inf is NaN). A NaN probability stays NaN: a poisoned teacher must show.
    at::Tensor terms = log_t.sub_(log_s).mul_(p).masked_fill_(p == 0, 0.0);
    at::Tensor rows = terms.sum(1).mul_(temperature * temperature);
    ctx->saved_data["log_s"] = log_s;
    ctx->saved_data["p"] = p;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["dtype"] = static_cast<int64_t>(student.scalar_type());
    return rows;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor grad = ctx->saved_data["log_s"].toTensor();
    ctx->saved_data.erase("log_s");
    const at::Tensor p = ctx->saved_data["p"].toTensor();
    const double temperature = ctx->saved_data["temperature"].toDouble();
    grad.exp_().sub_(p).mul_(grads[0].to(grad.scalar_type()).unsqueeze(1) * temperature);
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.scalar_type() == dtype ? grad : grad.to(dtype), at::Tensor(), at::Tensor()};
  }
};

// The CPU row kernel as an autograd node: outputs (ce, kl); an undefined teacher gives kl = 0 and an
// undefined `labels` ce = 0.
struct CpuCeKlRows : public torch::autograd::Function<CpuCeKlRows> {
  // Optional tensors: an undefined at::Tensor cannot be an autograd input.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const std::optional<at::Tensor>& labels,
                               const std::optional<at::Tensor>& teacher, double temperature) {
    const at::Tensor s = student.contiguous();
    const at::Tensor t = teacher ? teacher->contiguous() : at::Tensor();
    const at::Tensor l = labels ? labels->to(at::kLong).contiguous() : at::Tensor();
    const int64_t n = s.size(0), V = s.size(1);
    TORCH_CHECK(!l.defined() || n == 0 || l.max().item<int64_t>() < V, "a label is outside the vocabulary of ", V);
    at::Tensor ce = at::empty({n}, s.options()), kl = at::zeros({n}, s.options()), stats = at::empty({n, 3}, s.options());
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      cpu::ce_kl_forward_avx2(s.data_ptr<float>(), t.defined() ? t.data_ptr<float>() : nullptr,
                              l.defined() ? l.data_ptr<int64_t>() : nullptr, V, begin, end, static_cast<float>(temperature),
                              ce.data_ptr<float>(), t.defined() ? kl.data_ptr<float>() : nullptr, stats.data_ptr<float>());
    });
    ctx->saved_data["s"] = s;
    ctx->saved_data["t"] = t;
    ctx->saved_data["labels"] = l;
    ctx->saved_data["stats"] = stats;
    ctx->saved_data["temperature"] = temperature;
    return {ce, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() && !grads[1].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor s = ctx->saved_data["s"].toTensor(), stats = ctx->saved_data["stats"].toTensor();
    const at::Tensor t = ctx->saved_data["t"].toOptional<at::Tensor>().value_or(at::Tensor());
    const at::Tensor l = ctx->saved_data["labels"].toOptional<at::Tensor>().value_or(at::Tensor());
    const at::Tensor g_ce = grads[0].defined() ? grads[0].to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor g_kl = grads[1].defined() ? grads[1].to(at::kFloat).contiguous() : at::Tensor();
    const double temperature = ctx->saved_data["temperature"].toDouble();
    at::Tensor grad = at::empty_like(s);
    at::parallel_for(0, s.size(0), 1, [&](int64_t begin, int64_t end) {
      cpu::ce_kl_backward_avx2(s.data_ptr<float>(), t.defined() ? t.data_ptr<float>() : nullptr,
                               l.defined() ? l.data_ptr<int64_t>() : nullptr, s.size(1), begin, end,
                               static_cast<float>(temperature), stats.data_ptr<float>(),
                               g_ce.defined() ? g_ce.data_ptr<float>() : nullptr,
                               g_kl.defined() ? g_kl.data_ptr<float>() : nullptr, grad.data_ptr<float>());
    });
    return {grad, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool cpu_row_kernel_applies(const at::Tensor& student, const at::Tensor& teacher) {
  return cpu::avx2_available() && student.is_cpu() && student.scalar_type() == at::kFloat && student.dim() == 2 &&
         (!teacher.defined() || (teacher.is_cpu() && teacher.scalar_type() == at::kFloat && teacher.sizes() == student.sizes()));
}

at::Tensor cross_entropy_rows_fused(const at::Tensor& logits, const at::Tensor& labels) {
  if (cpu_row_kernel_applies(logits, at::Tensor())) return CpuCeKlRows::apply(logits, labels, std::nullopt, 1.0)[0];
  return CrossEntropyRows::apply(logits, labels);
}

at::Tensor full_kl_rows(const at::Tensor& student, const at::Tensor& teacher, double temperature) {
  if (cpu_row_kernel_applies(student, teacher))
    return CpuCeKlRows::apply(student, std::nullopt, teacher.detach(), temperature)[1];
  return FullKlRows::apply(student, teacher.detach(), temperature);
}

at::Tensor full_kl_rows_aten(const at::Tensor& student, const at::Tensor& teacher, double temperature) {
  at::Tensor log_s = log_softmax(student, temperature);
  at::Tensor log_t = log_softmax(teacher.detach().to(log_s.scalar_type()), temperature);
  at::Tensor p = log_t.exp();
  return (p * (log_t - log_s)).masked_fill(p == 0, 0.0).sum(1) * (temperature * temperature);
}

}  // namespace lf::kernels
