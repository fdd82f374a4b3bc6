// One pass of AdamW over float32 arrays: reads p, g, m, v once and writes p, m, v once, where the
// update written as LibTorch ops (train/optimizer.cpp) makes eight passes and a temporary (on the
// 125M-parameter CPU training step, 2 threads: ~8 % of perf samples as LibTorch ops, 1.9 % as one
// pass). Compiled with -mavx2 -mfma -ffp-contract=off; call only when kernels::cpu::avx2_available()
// (features.h).
#pragma once

#include <cstdint>

namespace lf::kernels::cpu {

// The update's scalars, rounded to float once.
struct AdamWScalars {
  float decay;            // 1 − lr · weight_decay (1 when the parameter takes no decay)
  float one_minus_beta1;  // 1 − β1
  float beta2;            // β2
  float one_minus_beta2;  // 1 − β2
  float sqrt_bias2;       // √(1 − β2^t)
  float eps;
  float step_size;        // −lr / (1 − β1^t)
  float grad_scale;       // the gradient is g · grad_scale (clipping)
};

// For each i in [0, n), with every product and sum rounded to float, and g = g · grad_scale:
//   p = p · decay;  m = fma(1 − β1, g − m, m);  v = fma(1 − β2, g · g, v · β2);
//   p = fma(step_size, m / (√v / sqrt_bias2 + eps), p)
// The same operations in the vector body and the tail, so an element's result does not depend on
// where a slice of the arrays begins (the sharded optimizers update slices).
void adamw_avx2(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);

}  // namespace lf::kernels::cpu
