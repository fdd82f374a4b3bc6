// The training step's CE and full-vocabulary KL (kernels/row_losses.h): the CPU row kernel and the
// in-place LibTorch path against the plain LibTorch autograd compositions, values and gradients.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <cmath>
#include <limits>

#include "kernels/logit_stats.h"
#include "kernels/row_losses.h"

namespace {

struct Result {
  at::Tensor ce, kl, grad;
};

// Loss = Σ g_ce·ce + Σ g_kl·kl with random per-row weights, so the backward sees distinct upstream
// gradients per row and per term.
Result run(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& teacher, double temperature, bool fused) {
  at::Tensor s = logits.detach().clone().requires_grad_(true);
  auto generator = at::detail::createCPUGenerator(11);
  const at::Tensor g_ce = (at::rand({logits.size(0)}, generator) + 0.5).to(logits.device());
  const at::Tensor g_kl = (at::rand({logits.size(0)}, generator) + 0.5).to(logits.device());
  Result r;
  if (fused) {
    r.ce = lf::kernels::cross_entropy_rows_fused(s, labels);
    r.kl = lf::kernels::full_kl_rows(s, teacher, temperature);
  } else {
    r.ce = lf::kernels::cross_entropy_rows(s, labels);
    r.kl = lf::kernels::full_kl_rows_aten(s, teacher, temperature);
  }
  ((r.ce * g_ce.to(r.ce.scalar_type())).sum() + (r.kl * g_kl.to(r.kl.scalar_type())).sum()).backward();
  r.grad = s.grad();
  return r;
}

double max_abs(const at::Tensor& a, const at::Tensor& b) { return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>(); }

}  // namespace

TEST_CASE("row losses: CE and KL equal the LibTorch compositions, values and gradients", "[loss][kernels]") {
  auto generator = at::detail::createCPUGenerator(3);
  // V not a multiple of the vector width, logits of training-like spread, ignored labels.
  for (int64_t V : {7, 64, 1003}) {
    for (double temperature : {1.0, 2.0, 0.7}) {
      const at::Tensor s = at::randn({9, V}, generator) * 4.0;
      const at::Tensor t = at::randn({9, V}, generator) * 4.0 + 1.0;
      at::Tensor labels = at::randint(V, {9}, generator, at::kLong);
      labels[2] = -100;
      labels[5] = -100;
      INFO("V " << V << " temperature " << temperature
                << (lf::kernels::cpu_row_kernel_applies(s, t) ? " (CPU row kernel)" : " (LibTorch path)"));
      const Result ref = run(s, labels, t, temperature, false), got = run(s, labels, t, temperature, true);
      CHECK(max_abs(got.ce, ref.ce) < 2e-5);
      CHECK(max_abs(got.kl, ref.kl) < 2e-5);
      CHECK(max_abs(got.grad, ref.grad) < 1e-6);
      CHECK(got.ce[2].item<double>() == 0.0);
    }
  }
}

TEST_CASE("row losses: double logits take the in-place path and match to 1e-12", "[loss][kernels]") {
  auto generator = at::detail::createCPUGenerator(4);
  const at::Tensor s = at::randn({5, 33}, generator, at::kDouble) * 3.0;
  const at::Tensor t = at::randn({5, 33}, generator, at::kDouble) * 3.0;
  const at::Tensor labels = at::randint(33, {5}, generator, at::kLong);
  CHECK_FALSE(lf::kernels::cpu_row_kernel_applies(s, t));
  const Result ref = run(s, labels, t, 1.5, false), got = run(s, labels, t, 1.5, true);
  CHECK(max_abs(got.ce, ref.ce) < 1e-12);
  CHECK(max_abs(got.kl, ref.kl) < 1e-12);
  CHECK(max_abs(got.grad, ref.grad) < 1e-12);
}

TEST_CASE("row losses: zero teacher probabilities count 0; a NaN teacher or student shows", "[loss][kernels]") {
  auto generator = at::detail::createCPUGenerator(5);
  const int64_t V = 40;
  at::Tensor s = at::randn({3, V}, generator);
  at::Tensor t = at::randn({3, V}, generator);
  const float inf = std::numeric_limits<float>::infinity();
  t[0].narrow(0, 0, 17).fill_(-inf);  // a teacher that rules tokens out (masked vocabulary)
  const at::Tensor labels = at::randint(V, {3}, generator, at::kLong);
  const Result ref = run(s, labels, t, 1.0, false), got = run(s, labels, t, 1.0, true);
  CHECK(at::isfinite(got.kl).all().item<bool>());
  CHECK(at::isfinite(got.grad).all().item<bool>());
  CHECK(max_abs(got.kl, ref.kl) < 2e-5);
  CHECK(max_abs(got.grad, ref.grad) < 1e-6);
  // Poisoned numbers must reach the loss (the trainer names the teacher from them).
  at::Tensor poisoned = t.clone();
  poisoned[1][7] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor kl = lf::kernels::full_kl_rows(s, poisoned, 1.0);
  CHECK(std::isnan(kl[1].item<float>()));
  CHECK(std::isfinite(kl[0].item<float>()));
  at::Tensor bad_student = s.clone();
  bad_student[2][3] = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(lf::kernels::cross_entropy_rows_fused(bad_student, labels)[2].item<float>()));
  CHECK(std::isnan(lf::kernels::full_kl_rows(bad_student, t, 1.0)[2].item<float>()));
}

TEST_CASE("row losses: a label outside the vocabulary is an error, not a read out of bounds", "[loss][kernels]") {
  const at::Tensor s = at::randn({2, 8});
  const at::Tensor labels = at::tensor({3, 8}, at::kLong);
  CHECK_THROWS(lf::kernels::cross_entropy_rows_fused(s, labels));
}

TEST_CASE("row losses: on CUDA the in-place path equals the compositions (float32 and bfloat16)", "[loss][kernels][cuda]") {
#ifdef LOGITFUSE_HAVE_CUDA
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: skipped");
    return;
  }
  auto generator = at::detail::createCPUGenerator(6);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor s = (at::randn({64, 5003}, generator) * 4.0).to(at::Device(at::kCUDA, 0)).to(dtype);
    const at::Tensor t = (at::randn({64, 5003}, generator) * 4.0).to(at::Device(at::kCUDA, 0)).to(dtype);
    at::Tensor labels = at::randint(5003, {64}, generator, at::kLong).to(at::Device(at::kCUDA, 0));
    labels[3] = -100;
    CHECK_FALSE(lf::kernels::cpu_row_kernel_applies(s, t));
    const Result ref = run(s, labels, t, 2.0, false), got = run(s, labels, t, 2.0, true);
    CHECK(max_abs(got.ce, ref.ce) < 1e-4);
    CHECK(max_abs(got.kl, ref.kl) < 1e-4);
    CHECK(max_abs(got.grad, ref.grad) < (dtype == at::kFloat ? 1e-6 : 1e-2));
    CHECK(got.grad.scalar_type() == dtype);
  }
#else
  WARN("a CPU-only build: skipped");
#endif
}
