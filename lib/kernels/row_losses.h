// Per-row losses on blocks of logit rows [N, V] with a backward that allocates one [N, V] gradient: the
// training step's CE and full-vocabulary KL cost one saved [N, V] tensor each and write their
// gradient in place, where the autograd graph of the same LibTorch ops keeps and allocates four
// to six [N, V] tensors per term (a third of a CPU KL step on a 16k vocabulary). Every device.
// The LibTorch compositions they replace are their test oracle.
#pragma once

#include <ATen/core/Tensor.h>

namespace lf::kernels {

// Cross entropy per row against labels [N] (−100: 0), differentiable in `logits`; [N] in float32
// (double for double logits). Backward: (softmax − one-hot) · g.
at::Tensor cross_entropy_rows_fused(const at::Tensor& logits, const at::Tensor& labels);

// τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ)) per row over one vocabulary, differentiable in
// `student` only; 0·log 0 = 0. Backward: τ · (softmax(student/τ) − p_teacher) · g.
at::Tensor full_kl_rows(const at::Tensor& student, const at::Tensor& teacher, double temperature);

// On float32 CPU rows with AVX2 both run one row kernel (kernels/cpu/ce_kl_avx2.h): two reads
// of the rows forward, one read and one write backward, nothing saved but three floats a row.
// Elsewhere the backward works in place on the saved log-softmax. True when the row kernel applies.
bool cpu_row_kernel_applies(const at::Tensor& student, const at::Tensor& teacher);

// The KL term as a plain LibTorch autograd composition (the reference; CE's is
// kernels::cross_entropy_rows in logit_stats.h).
at::Tensor full_kl_rows_aten(const at::Tensor& student, const at::Tensor& teacher, double temperature);

}  // namespace lf::kernels
