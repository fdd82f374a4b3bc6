// AdamW with decoupled weight decay (Loshchilov & Hutter), the update of torch.optim.AdamW; and the
// learning-rate schedules. Weight decay applies to matrices only (not biases or norm weights).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace lf {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// One AdamW update of `param` in place (torch.optim.AdamW's arithmetic), with its moments `exp_avg`
// and `exp_avg_sq`, from the gradient `grad` · `grad_scale` (`grad` is not written); `step` is
// 1-based. Float32 on a CPU with AVX2 takes one pass over the arrays (kernels/cpu/adamw_avx2.h,
// whose fused multiply-adds round differently in the last bit); elsewhere LibTorch ops. Elementwise,
// so any slicing of a flat parameter space gives the same numbers: the sharded optimizers
// (sharded_adamw.h, zero3.h) update slices of parameters with it.
void adamw_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double lr,
                  int64_t step, const AdamWConfig& config, bool decay, double grad_scale = 1.0);

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
