// AdamW with decoupled weight decay (Loshchilov & Hutter), the update of torch.optim.AdamW, with its
// state as plain named tensors so a checkpoint stores and restores it exactly; and the schedules.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace lf {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // Parameters by name; weight decay applies to matrices only (not biases or norm weights).
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWConfig config);
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return step_; }
  // exp_avg.<name>, exp_avg_sq.<name> — and restore from the same.
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& state, int64_t steps);
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  AdamWConfig config_;
  int64_t step_ = 0;
};

struct ScheduleConfig {
  std::string kind = "cosine";  // constant | linear | cosine
  double peak_lr = 1e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};

// Learning rate for optimizer step `step` (0-based): linear warm-up from 0 to the peak, then
// constant, linear decay to 0, or cosine decay to 0 at total_steps.
double learning_rate(const ScheduleConfig& config, int64_t step);

}  // namespace lf
