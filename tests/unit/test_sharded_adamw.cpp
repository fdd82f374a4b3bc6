// The flat, sharded AdamW on one process: parameters and gradients live in the flat buffers, the
// update is torch.optim.AdamW's, and optimizer state saved in slices reassembles at another split.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include "core/error.h"
#include "dist/communicator.h"
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
