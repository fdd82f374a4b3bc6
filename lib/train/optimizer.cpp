#include "train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>

namespace lf {

void adamw_update(at::Tensor& p, const at::Tensor& g, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double lr,
                  int64_t step, const AdamWConfig& config, bool decay) {
  const double bias1 = 1.0 - std::pow(config.beta1, static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(config.beta2, static_cast<double>(step));
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
