#include "train/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "kernels/cpu/adamw_avx2.h"
#include "kernels/cpu/features.h"

namespace lf {

namespace {

bool one_pass_applies(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v) {
  for (const at::Tensor* t : {&p, &g, &m, &v})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || !t->is_contiguous() || t->numel() != p.numel())
      return false;
  return kernels::cpu::avx2_available();
}

}  // namespace

void adamw_update(at::Tensor& p, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double lr,
                  int64_t step, const AdamWConfig& config, bool decay, double grad_scale) {
  const double bias1 = 1.0 - std::pow(config.beta1, static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(config.beta2, static_cast<double>(step));
  if (one_pass_applies(p, grad, exp_avg, exp_avg_sq)) {
    // float32 on a CPU with AVX2: one pass over the four arrays (kernels/cpu/adamw_avx2.h), the
    // same arithmetic as below but for the rounding of fused multiply-adds.
    const kernels::cpu::AdamWScalars s{
        static_cast<float>(config.weight_decay != 0 && decay ? 1.0 - lr * config.weight_decay : 1.0),
        static_cast<float>(1.0 - config.beta1), static_cast<float>(config.beta2), static_cast<float>(1.0 - config.beta2),
        static_cast<float>(std::sqrt(bias2)), static_cast<float>(config.eps), static_cast<float>(-lr / bias1),
        static_cast<float>(grad_scale)};
    float* pp = p.data_ptr<float>();
    const float* gp = grad.data_ptr<float>();
    float* mp = exp_avg.data_ptr<float>();
    float* vp = exp_avg_sq.data_ptr<float>();
    // Threads take slices; a result does not depend on where its slice starts (adamw_avx2.h).
    at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      kernels::cpu::adamw_avx2(pp + begin, gp + begin, mp + begin, vp + begin, end - begin, s);
    });
    return;
  }
  const at::Tensor g = grad_scale == 1.0 ? grad : grad * grad_scale;
  if (config.weight_decay != 0 && decay) p.mul_(1.0 - lr * config.weight_decay);
  exp_avg.lerp_(g, 1.0 - config.beta1);
  exp_avg_sq.mul_(config.beta2).addcmul_(g, g, 1.0 - config.beta2);
  at::Tensor denom = exp_avg_sq.sqrt();  // the update's one temporary
  denom.div_(std::sqrt(bias2)).add_(config.eps);
  p.addcdiv_(exp_avg, denom, -lr / bias1);
}

double learning_rate(const ScheduleConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps)
    return c.peak_lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.kind == "constant") return c.peak_lr;
  const double span = std::max<int64_t>(1, c.total_steps - c.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup_steps) / span);
  if (c.kind == "linear") return c.peak_lr * (1.0 - progress);
  return c.peak_lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace lf
