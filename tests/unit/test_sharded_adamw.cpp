// The flat, sharded AdamW on one process: parameters and gradients live in the flat buffers, the
// update is torch.optim.AdamW's, and optimizer state saved in slices reassembles at another split.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include "core/error.h"
#include "dist/communicator.h"
#include "kernels/cpu/ce_kl_avx2.h"
#include "train/optimizer.h"
#include "train/sharded_adamw.h"

namespace {

std::vector<std::pair<std::string, at::Tensor>> make_params() {
  at::manual_seed(3);
  return {{"w", at::randn({3, 4}).set_requires_grad(true)}, {"b", at::randn({5}).set_requires_grad(true)}};
}

// torch.optim.AdamW on one tensor, written out: the reference the flat optimizer must match.
void reference_step(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, double lr, int step,
                    const lf::AdamWConfig& c, bool decay) {
  if (decay) p.mul_(1 - lr * c.weight_decay);
  m.mul_(c.beta1).add_(g, 1 - c.beta1);
  v.mul_(c.beta2).add_(g * g, 1 - c.beta2);
  const double bias1 = 1 - std::pow(c.beta1, step), bias2 = 1 - std::pow(c.beta2, step);
  p.sub_(lr / bias1 * m / (v.sqrt() / std::sqrt(bias2) + c.eps));
}

}  // namespace

TEST_CASE("sharded adamw: autograd fills the flat gradient and the update is AdamW", "[dist][optimizer]") {
  const lf::AdamWConfig config{0.9, 0.999, 1e-8, 0.1};
  for (int64_t stage : {0, 1, 2}) {
    auto comm = lf::make_single_process_communicator();
    auto params = make_params();
    std::vector<at::Tensor> ref_p, ref_m, ref_v;
    for (auto& [name, p] : params) {
      ref_p.push_back(p.detach().clone());
      ref_m.push_back(at::zeros_like(p));
      ref_v.push_back(at::zeros_like(p));
    }
    lf::ShardedAdamW opt(params, config, {stage, 4}, *comm);
    CHECK(opt.numel() == 17);
    for (int step = 1; step <= 3; ++step) {
      // Two backward passes accumulate, as gradient accumulation does.
      for (int pass = 0; pass < 2; ++pass) {
        at::Tensor loss = (params[0].second.pow(2).sum() + params[1].second.sin().sum()) * (pass + 1);
        loss.backward();
      }
      opt.reduce_gradients();
      {
        at::NoGradGuard no_grad;
        const at::Tensor g0 = 2 * ref_p[0] * 3, g1 = ref_p[1].cos() * 3;
        CHECK(at::allclose(params[0].second.grad(), g0, 1e-5, 1e-6));
        CHECK(at::allclose(params[1].second.grad(), g1, 1e-5, 1e-6));
        CHECK(opt.grad_norm() == Approx(std::sqrt(g0.pow(2).sum().item<double>() + g1.pow(2).sum().item<double>())));
        reference_step(ref_p[0], g0, ref_m[0], ref_v[0], 0.01, step, config, true);
        reference_step(ref_p[1], g1, ref_m[1], ref_v[1], 0.01, step, config, false);
      }
      opt.step(0.01);
      opt.zero_grad();
      CHECK(at::allclose(params[0].second, ref_p[0], 1e-5, 1e-7));
      CHECK(at::allclose(params[1].second, ref_p[1], 1e-5, 1e-7));
      CHECK(params[1].second.grad().abs().sum().item<double>() == 0);
    }
    CHECK(opt.steps() == 3);
  }
}

TEST_CASE("sharded adamw: state saved in slices reloads at another split", "[dist][optimizer]") {
  auto comm = lf::make_single_process_communicator();
  auto params = make_params();
  lf::ShardedAdamW opt(params, {}, {1, 8}, *comm);
  params[0].second.sum().backward();
  params[1].second.pow(3).sum().backward();
  opt.step(0.1);
  const lf::OptimizerShard whole = opt.owned_state();
  REQUIRE(whole.begin == 0);
  REQUIRE(whole.end == 17);
  // As two ranks would have written it: [0, 9) and [9, 17), given in reverse order.
  std::vector<lf::OptimizerShard> two(2);
  for (int i = 0; i < 2; ++i) {
    two[i].begin = i == 0 ? 0 : 9;
    two[i].end = i == 0 ? 9 : 17;
    two[i].total = 17;
    two[i].exp_avg = whole.exp_avg.narrow(0, two[i].begin, two[i].end - two[i].begin).clone();
    two[i].exp_avg_sq = whole.exp_avg_sq.narrow(0, two[i].begin, two[i].end - two[i].begin).clone();
  }
  std::swap(two[0], two[1]);
  auto params2 = make_params();
  lf::ShardedAdamW again(params2, {}, {0, 8}, *comm);
  again.load_state(two, opt.steps());
  CHECK(again.steps() == 1);
  CHECK(at::equal(again.owned_state().exp_avg, whole.exp_avg));
  CHECK(at::equal(again.owned_state().exp_avg_sq, whole.exp_avg_sq));

  two.pop_back();  // a missing shard file
  CHECK_THROWS_AS(again.load_state(two, 1), lf::InputError);
  two[0].total = 18;  // another student
  CHECK_THROWS_AS(again.load_state(two, 1), lf::InputError);
}

TEST_CASE("adamw: the one-pass CPU update is torch.optim.AdamW's and does not depend on slicing", "[optimizer]") {
  // Without AVX2 + FMA the LibTorch path serves and the comparison below holds exactly.
  const lf::AdamWConfig config{0.9, 0.999, 1e-8, 0.1};
  at::manual_seed(5);
  const int64_t n = 100003;  // several parallel slices and an odd tail
  at::Tensor p = at::randn({n}), m = at::zeros({n}), v = at::zeros({n});
  at::Tensor ref_p = p.clone(), ref_m = m.clone(), ref_v = v.clone();
  at::Tensor sliced_p = p.clone(), sliced_m = m.clone(), sliced_v = v.clone();
  at::Tensor g_max = at::zeros({n});
  for (int step = 1; step <= 5; ++step) {
    // Gradients across magnitudes, a few exactly zero: the elements where AdamW is most sensitive.
    at::Tensor g = at::randn({n}) * at::pow(10.0, at::randint(-6, 1, {n}).to(at::kFloat));
    g.narrow(0, 7, 11).zero_();
    for (bool decay : {true, false}) {
      lf::adamw_update(p, g, m, v, 3e-3, step, config, decay);
      reference_step(ref_p, g, ref_m, ref_v, 3e-3, step, config, decay);
      // The same update on slices that start off the vector width.
      for (auto [a, b] : {std::pair<int64_t, int64_t>{0, 13}, {13, 50001}, {50001, n}}) {
        at::Tensor ps = sliced_p.narrow(0, a, b - a), ms = sliced_m.narrow(0, a, b - a), vs = sliced_v.narrow(0, a, b - a);
        lf::adamw_update(ps, g.narrow(0, a, b - a), ms, vs, 3e-3, step, config, decay);
      }
    }
    CHECK(at::equal(p, sliced_p));
    CHECK(at::equal(m, sliced_m));
    CHECK(at::equal(v, sliced_v));
    // Only the rounding of fused multiply-adds differs from the op-by-op update. m's terms may cancel,
    // so its bound is relative to the largest gradient it has averaged.
    g_max = at::maximum(g_max, g.abs());
    CHECK(((m - ref_m).abs() <= 1e-6 * (ref_m.abs() + g_max)).all().item<bool>());
    CHECK(at::allclose(v, ref_v, 1e-6, 1e-18));
    CHECK(at::allclose(p, ref_p, 1e-6, 1e-7));
    const double update = 3e-3;  // each step moves an element by about lr
    CHECK((p - ref_p).abs().max().item<double>() < 1e-3 * update);
  }
  // Clipping inside the update: the same as the update from the scaled gradient.
  at::Tensor g = at::randn({n});
  at::Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
  lf::adamw_update(p, g, m, v, 3e-3, 6, config, true, 0.37);
  lf::adamw_update(p2, g * 0.37, m2, v2, 3e-3, 6, config, true);
  CHECK(at::equal(p, p2));
  CHECK(at::equal(m, m2));
  CHECK(at::equal(v, v2));
}
