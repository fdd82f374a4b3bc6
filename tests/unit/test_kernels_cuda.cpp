// The CUDA logit kernels against their LibTorch references (issue 7). They run only where a GPU is
// visible (scripts/gpu-check.sh, also under compute-sanitizer); elsewhere each case says it was
// skipped. Ties are made harmless by comparing what the ids select, not the ids themselves.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/dlf.h"
#include "kernels/logit_stats.h"

namespace {

bool have_cuda() {
#ifdef LOGITFUSE_HAVE_CUDA
  if (torch::cuda::is_available()) return true;
#endif
  WARN("no CUDA device (or a CPU-only build): CUDA kernel test skipped");
  return false;
}

const at::Device kCuda(at::kCUDA, 0);

// Under compute-sanitizer (100x slower) gpu-check.sh sets LOGITFUSE_KERNEL_TEST_SMALL=1: the cases
// above a million logits are left out; every code path is still taken by a smaller one.
bool fits_small_run(int64_t rows, int64_t vocab) {
  const char* small = std::getenv("LOGITFUSE_KERNEL_TEST_SMALL");
  return !(small && std::string(small) == "1") || rows * vocab <= 1000000;
}

// Random logits [N, V] of `dtype` on the GPU; mode "ties" rounds to a few levels, "masked" sets a
// fixed 20% of the columns to −inf; `misaligned` shifts the storage by one element.
at::Tensor make_logits(int64_t N, int64_t V, at::ScalarType dtype, const std::string& mode, bool misaligned, uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  at::Tensor x = at::randn({N, V}, generator) * 3.0;
  if (mode == "ties") x = x.round();
  if (mode == "masked") {
    at::Tensor cols = at::arange(V) % 5 == 2;
    x.masked_fill_(cols.unsqueeze(0).expand({N, V}), -INFINITY);
  }
  x = x.to(dtype);
  if (!misaligned) return x.to(kCuda);
  at::Tensor storage = at::empty({N * V + 1}, at::TensorOptions().dtype(dtype).device(kCuda));
  at::Tensor view = storage.narrow(0, 1, N * V).view({N, V});
  view.copy_(x);
  return view;
}

// Sets the k + 1 largest entries of each row to distinct, well separated values, so that no tie
// decides which ids are in the top k (the gradient depends on that choice).
void separate_top(at::Tensor& x, int64_t k) {
  const at::Tensor idx = std::get<1>(x.to(at::kFloat).topk(k + 1, 1));
  const at::Tensor values = at::arange(k + 1, at::TensorOptions().dtype(at::kFloat).device(x.device())) * -0.5 + (20.0 + 0.5 * k);
  x.scatter_(1, idx, values.unsqueeze(0).expand({x.size(0), k + 1}).to(x.scalar_type()));
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

struct Shape {
  int64_t N, V, k;
};

}  // namespace

TEST_CASE("kernels: fused top-k statistics match LibTorch on CUDA", "[cuda][kernels]") {
  if (!have_cuda()) return;
  const std::vector<Shape> shapes = {{1, 7, 3}, {33, 1001, 10}, {5, 151936, 10}, {70, 4099, 64}, {9, 5000, 128}, {4096, 257, 10}};
  uint64_t seed = 1;
  for (const auto& s : shapes)
    if (fits_small_run(s.N, s.V))
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf})
      for (const std::string mode : {"random", "ties", "masked"})
        for (double temperature : {1.0, 2.0}) {
          const bool misaligned = seed % 3 == 0;
          INFO("N=" << s.N << " V=" << s.V << " k=" << s.k << " dtype=" << dtype << " mode=" << mode << " tau=" << temperature
                    << " misaligned=" << misaligned);
          try {
          const at::Tensor logits = make_logits(s.N, s.V, dtype, mode, misaligned, seed++);
          CHECK(lf::kernels::fused_kernels_apply(logits, s.k));
          const auto fused = lf::kernels::softmax_topk_stats(logits, s.k, temperature);
          const auto ref = lf::kernels::softmax_topk_stats(logits, s.k, temperature, lf::kernels::Backend::aten);
          // Sorted values, log-sum-exp and tail are tie-insensitive.
          CHECK(at::allclose(fused.probs, ref.probs, 1e-5, 1e-7));
          CHECK(at::allclose(fused.lse, ref.lse, 1e-5, 1e-5));
          CHECK(at::allclose(fused.tail, ref.tail, 1e-4, 1e-6));
          // The ids select exactly those probabilities, each id once, ties in ascending id order.
          const at::Tensor full = at::softmax(logits.to(at::kFloat) / temperature, -1);
          CHECK(at::allclose(full.gather(1, fused.ids), fused.probs, 1e-5, 1e-7));
          const at::Tensor sorted_ids = std::get<0>(fused.ids.sort(1));
          CHECK((sorted_ids.narrow(1, 1, s.k - 1) != sorted_ids.narrow(1, 0, s.k - 1)).all().item<bool>());
          const at::Tensor values = logits.to(at::kFloat).gather(1, fused.ids);
          const at::Tensor same = values.narrow(1, 1, s.k - 1) == values.narrow(1, 0, s.k - 1);
          const at::Tensor ascending = fused.ids.narrow(1, 1, s.k - 1) > fused.ids.narrow(1, 0, s.k - 1);
          CHECK((~same | ascending).all().item<bool>());
          // CE from the same pass, with ignored labels.
          at::Tensor labels = at::randint(s.V, {s.N}, at::TensorOptions().dtype(at::kLong)).to(kCuda);
          if (mode == "masked") labels = labels - labels % 5;  // column ≡ 0 mod 5: never masked
          if (s.N > 2) labels.narrow(0, 0, 2).fill_(-100);
          const auto both = lf::kernels::ce_and_softmax_topk(logits, labels, s.k, temperature);
          const at::Tensor ce_ref = lf::kernels::cross_entropy_rows(logits, labels);
          CHECK(at::allclose(both.ce, ce_ref, 1e-5, 1e-5));
          CHECK(at::allclose(both.probs, ref.probs, 1e-5, 1e-7));
          } catch (const std::exception& e) {
            FAIL_CHECK("exception: " << e.what());
          }
        }
}

TEST_CASE("kernels: fused top-k backward matches autograd of the LibTorch path", "[cuda][kernels]") {
  if (!have_cuda()) return;
  const std::vector<Shape> shapes = {{1, 7, 3}, {33, 1001, 10}, {4, 151936, 10}, {20, 4099, 64}, {3, 5000, 128}, {2048, 257, 10}};
  uint64_t seed = 100;
  for (const auto& s : shapes)
    if (fits_small_run(s.N, s.V))
    for (auto dtype : {at::kFloat, at::kBFloat16})
      for (const std::string mode : {"random", "masked"})
        for (double temperature : {1.0, 0.7}) {
          const bool misaligned = seed % 2 == 0;
          INFO("N=" << s.N << " V=" << s.V << " k=" << s.k << " dtype=" << dtype << " mode=" << mode << " tau=" << temperature);
          try {
          at::Tensor base = make_logits(s.N, s.V, dtype, mode, misaligned, seed++);
          separate_top(base, s.k);
          at::Tensor labels = at::randint(s.V, {s.N}, at::TensorOptions().dtype(at::kLong)).to(kCuda);
          if (mode == "masked") labels = labels - labels % 5;
          if (s.N > 1) labels.narrow(0, 0, 1).fill_(-100);
          const at::Tensor grad_probs = at::randn({s.N, s.k}, at::TensorOptions().device(kCuda));
          const at::Tensor grad_ce = at::randn({s.N}, at::TensorOptions().device(kCuda));
          auto gradient = [&](lf::kernels::Backend backend, bool with_ce) {
            at::Tensor x = base.detach().clone().requires_grad_(true);
            at::Tensor loss;
            if (with_ce) {
              auto out = lf::kernels::ce_and_softmax_topk(x, labels, s.k, temperature, backend);
              loss = (out.probs * grad_probs).sum() + (out.ce * grad_ce).sum();
            } else {
              loss = (lf::kernels::softmax_topk(x, s.k, temperature, backend).probs * grad_probs).sum();
            }
            loss.backward();
            return x.grad();
          };
          for (bool with_ce : {true, false}) {
            const at::Tensor fused = gradient(lf::kernels::Backend::automatic, with_ce);
            const at::Tensor ref = gradient(lf::kernels::Backend::aten, with_ce);
            CHECK(fused.scalar_type() == dtype);
            const double scale = std::max(max_abs(ref.to(at::kFloat)), 1e-12);
            const double tolerance = dtype == at::kFloat ? 1e-5 : 1e-2;
            CHECK(max_abs((fused.to(at::kFloat) - ref.to(at::kFloat))) <= tolerance * scale);
          }
          } catch (const std::exception& e) {
            FAIL_CHECK("exception: " << e.what());
          }
        }
}

TEST_CASE("kernels: fused top-k gradient matches finite differences", "[cuda][kernels]") {
  if (!have_cuda()) return;
  const int64_t N = 3, V = 37, k = 5;
  const double temperature = 1.3;
  at::Tensor x = make_logits(N, V, at::kFloat, "random", false, 7);
  const at::Tensor labels = at::tensor({4, 0, 36}, at::TensorOptions().dtype(at::kLong)).to(kCuda);
  const at::Tensor gp = at::randn({N, k}, at::TensorOptions().device(kCuda)), gc = at::randn({N}, at::TensorOptions().device(kCuda));
  auto loss = [&](const at::Tensor& z) {
    auto out = lf::kernels::ce_and_softmax_topk(z, labels, k, temperature);
    return (out.probs * gp).sum() + (out.ce * gc).sum();
  };
  at::Tensor leaf = x.clone().requires_grad_(true);
  loss(leaf).backward();
  const at::Tensor analytic = leaf.grad().cpu();
  at::NoGradGuard no_grad;
  const double eps = 1e-2;
  for (int64_t i : {0, 5, 40, 77, 110}) {
    at::Tensor up = x.clone(), down = x.clone();
    up.view(-1)[i] += eps;
    down.view(-1)[i] -= eps;
    const double numeric = (loss(up).item<double>() - loss(down).item<double>()) / (2 * eps);
    INFO("element " << i);
    CHECK(analytic.view(-1)[i].item<double>() == Approx(numeric).margin(3e-3).epsilon(3e-3));
  }
}

TEST_CASE("kernels: fused DLF solve matches LibTorch on CUDA", "[cuda][kernels][dlf]") {
  if (!have_cuda()) return;
  struct Case {
    int64_t N, V, m;
    double step;
    at::ScalarType dtype;
    bool masked, misaligned;
    double delta_scale = 0.3;  // experts = small + this·randn·3; 60 makes Δ too wide for the chained kernel
  };
  const std::vector<Case> cases = {{1, 9, 1, 0.5, at::kFloat, false, false},     {7, 1001, 3, 0.1, at::kFloat, false, true},
                                   {7, 1001, 3, 0.05, at::kFloat, false, false}, {5, 4099, 2, 0.1, at::kBFloat16, false, false},
                                   {6, 3001, 4, 0.1, at::kFloat, true, false},   {256, 32000, 4, 0.1, at::kFloat, false, false},
                                   {5, 2003, 2, 0.1, at::kFloat, false, false, 60.0}};
  // Both CUDA kernels: the default one and the chained-exponential one (DlfOptions::cuda_chained).
  for (const bool chained : {false, true})
  for (size_t index = 0; index < cases.size(); ++index) {
    const Case& c = cases[index];
    uint64_t seed = 500 + 10 * index;
    if (!fits_small_run(c.N, c.V)) continue;
    INFO("N=" << c.N << " V=" << c.V << " m=" << c.m << " step=" << c.step << " dtype=" << c.dtype << " masked=" << c.masked
              << " delta_scale=" << c.delta_scale << " chained=" << chained);
    try {
    const auto grid = lf::kernels::alpha_grid(0.0, 2.0, c.step);
    const at::Tensor zl = make_logits(c.N, c.V, c.dtype, c.masked ? "masked" : "random", c.misaligned, seed++);
    const at::Tensor zs = make_logits(c.N, c.V, c.dtype, c.masked ? "masked" : "random", false, seed++);
    std::vector<at::Tensor> experts;
    for (int64_t u = 0; u < c.m; ++u)
      experts.push_back((zs.to(at::kFloat) + make_logits(c.N, c.V, at::kFloat, "random", false, seed++).mul(c.delta_scale)).to(c.dtype));
    lf::kernels::DlfOptions options;
    options.cuda_chained = chained;
    const auto fused = lf::kernels::dlf_solve(zl, zs, experts, grid, options);
    // The reference sees only the unmasked columns (the kernel leaves masked ones out).
    at::Tensor keep = at::arange(c.V, at::TensorOptions().dtype(at::kLong).device(kCuda));
    if (c.masked) keep = keep.masked_select(keep % 5 != 2);
    std::vector<at::Tensor> kept_experts;
    for (const auto& e : experts) kept_experts.push_back(e.index_select(1, keep));
    lf::kernels::DlfOptions aten;
    aten.backend = lf::kernels::Backend::aten;
    const auto ref = lf::kernels::dlf_solve(zl.index_select(1, keep), zs.index_select(1, keep), kept_experts, grid, aten);
    const double kl_scale = std::max(1.0, max_abs(ref.kl_forward));
    CHECK(max_abs(fused.kl_forward - ref.kl_forward) <= 2e-5 * kl_scale + 1e-5);
    CHECK(max_abs(fused.kl_reverse - ref.kl_reverse) <= 2e-5 * kl_scale + 1e-5);
    CHECK(max_abs(fused.small_kl_forward - ref.small_kl_forward) <= 2e-5 * kl_scale + 1e-5);
    CHECK(max_abs(fused.small_kl_reverse - ref.small_kl_reverse) <= 2e-5 * kl_scale + 1e-5);
    const double j_scale = std::max(1.0, max_abs(ref.all_objectives));
    CHECK(max_abs(fused.all_objectives - ref.all_objectives) <= 1e-4 * j_scale);
    // The choice: where the two differ, only because their objectives are within float noise.
    const at::Tensor chosen_ref_j =
        ref.all_objectives.reshape({c.N, -1}).gather(1, (fused.expert * static_cast<int64_t>(grid.size()) +
                                                         ((fused.alpha.to(at::kDouble) - grid[0]) / c.step).round().to(at::kLong))
                                                            .unsqueeze(1));
    CHECK(max_abs(chosen_ref_j.squeeze(1) - ref.objective) <= 1e-4 * j_scale);
    const at::Tensor agree = (fused.expert == ref.expert) & ((fused.alpha - ref.alpha).abs() < 1e-6);
    // Near-ties between neighbouring grid points may flip a row or two; the check above bounds them.
    if (c.N >= 50) CHECK(agree.to(at::kFloat).mean().item<double>() >= 0.9);
    // Fused logits where the choices agree.
    const at::Tensor rows = agree.nonzero().squeeze(1);
    const at::Tensor fused_kept = fused.fused.index_select(1, keep).index_select(0, rows);
    CHECK(at::allclose(fused_kept, ref.fused.index_select(0, rows), 1e-5, 1e-4));
    if (c.masked) CHECK(std::isinf(fused.fused.select(1, 2).abs().min().item<double>()));
    } catch (const std::exception& e) {
      FAIL_CHECK("exception: " << e.what());
    }
  }
}
