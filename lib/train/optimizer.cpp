#include "train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "core/error.h"

namespace lf {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWConfig config)
    : params_(std::move(params)), config_(config) {
  for (auto& [name, p] : params_) {
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  const double bias1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    if (!p.grad().defined()) continue;
    const at::Tensor& g = p.grad();
    if (config_.weight_decay != 0 && p.dim() >= 2) p.mul_(1.0 - lr * config_.weight_decay);
    exp_avg_[i].lerp_(g, 1.0 - config_.beta1);
    exp_avg_sq_[i].mul_(config_.beta2).addcmul_(g, g, 1.0 - config_.beta2);
    at::Tensor denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias2)).add_(config_.eps);
    p.addcdiv_(exp_avg_[i], denom, -lr / bias1);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].first, exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, at::Tensor>>& state, int64_t steps) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [prefix, target] : {std::make_pair("exp_avg.", &exp_avg_[i]), std::make_pair("exp_avg_sq.", &exp_avg_sq_[i])}) {
      auto it = by_name.find(prefix + params_[i].first);
      if (it == by_name.end()) throw InputError("optimizer state has no '" + std::string(prefix) + params_[i].first + "'");
      if (it->second.sizes() != target->sizes()) throw InputError("optimizer state '" + it->first + "' has the wrong shape");
      target->copy_(it->second);
    }
  }
  step_ = steps;
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
