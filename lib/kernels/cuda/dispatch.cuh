// Host-side dtype dispatch shared by the CUDA launchers: calls f with a value of the element type
// (float, __half or __nv_bfloat16) matching the tensor, or throws for any other dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "core/error.h"

namespace lf::kernels::cuda {

template <class F>
void dispatch_dtype(const at::Tensor& t, const char* what, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default: throw RuntimeFailure(std::string(what) + " takes float32, float16 or bfloat16 logits");
  }
}

}  // namespace lf::kernels::cuda
