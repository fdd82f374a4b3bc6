// LoRA's adapter branch (model/lora_branch.h) and adapters on a model (model/lora.h): the seeded
// dropout, the branch's hand-written backward against autograd of the plain composition, and target
// matching. The adapters' arithmetic against PEFT itself is tests/oracle/test_lora.py.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "core/error.h"
#include "model/lora.h"
#include "model/lora_branch.h"
#include "tiny_model.h"

namespace {

uint64_t next_seed() {
  auto* g = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  return g->random64();
}

}  // namespace

TEST_CASE("lora: seeded dropout keeps 1 - p of the elements, scaled, the same for the same seed", "[lora]") {
  const at::Tensor x = at::randn({317, 129}, at::kDouble);  // odd sizes: the last group of four is partial
  const double p = 0.1;
  const at::Tensor a = lf::seeded_dropout(x, p, 42), b = lf::seeded_dropout(x, p, 42), c = lf::seeded_dropout(x, p, 43);
  CHECK(at::equal(a, b));
  CHECK(!at::equal(a, c));
  const at::Tensor keep = lf::seeded_keep_mask(x, p, 42);
  // The CPU pass and the integer-op path draw the same mask, and a kept element is x / (1 − p).
  CHECK(at::equal(keep, a != 0));
  CHECK(at::allclose(a.masked_select(keep), x.masked_select(keep) / (1 - p), 0, 1e-15));
  // 40,893 Bernoulli(0.9) draws: the kept share is within 5 standard deviations (0.0074) of 0.9.
  const double kept = keep.to(at::kDouble).mean().item<double>();
  CHECK(std::abs(kept - 0.9) < 5 * std::sqrt(0.09 / static_cast<double>(x.numel())));
  // bf16 and fp32 inputs keep the same elements.
  CHECK(at::equal(lf::seeded_dropout(x.to(at::kFloat), p, 42) != 0, keep));
  CHECK(at::equal(lf::seeded_dropout(x.to(at::kBFloat16), p, 42) != 0, keep));
}

TEST_CASE("lora: the branch's backward equals autograd of s · B A dropout(x)", "[lora]") {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  lf::LoraAdapter adapter;
  adapter.A = at::randn({3, 8}, f64).requires_grad_(true);
  adapter.B = at::randn({6, 3}, f64).requires_grad_(true);
  adapter.scale = 2.5;
  for (double p : {0.0, 0.3}) {
    adapter.dropout = p;
    const at::Tensor x = at::randn({2, 5, 8}, f64).requires_grad_(true);
    const at::Tensor w = at::randn({2, 5, 6}, f64);
    const auto state = at::detail::getDefaultCPUGenerator().get_state();
    const at::Tensor out = lf::lora_branch(x, adapter, /*training=*/true);
    torch::autograd::backward({(out * w).sum()});
    const at::Tensor gx = x.grad().clone(), ga = adapter.A.grad().clone(), gb = adapter.B.grad().clone();
    adapter.A.mutable_grad() = at::Tensor();
    adapter.B.mutable_grad() = at::Tensor();

    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(state);
    const uint64_t seed = next_seed();
    const at::Tensor x2 = x.detach().clone().requires_grad_(true);
    const at::Tensor dropped = p > 0 ? x2 * lf::seeded_keep_mask(x2, p, seed).to(at::kDouble) / (1 - p) : x2;
    const at::Tensor ref = at::matmul(at::matmul(dropped, adapter.A.t()), adapter.B.t()) * adapter.scale;
    torch::autograd::backward({(ref * w).sum()});
    INFO("p = " << p);
    CHECK(at::allclose(out, ref, 1e-12, 1e-12));
    CHECK(at::allclose(gx, x2.grad(), 1e-12, 1e-12));
    CHECK(at::allclose(ga, adapter.A.grad(), 1e-12, 1e-12));
    CHECK(at::allclose(gb, adapter.B.grad(), 1e-12, 1e-12));
    adapter.A.mutable_grad() = at::Tensor();
    adapter.B.mutable_grad() = at::Tensor();
  }
  // Not training: no dropout, whatever p.
  adapter.dropout = 0.5;
  const at::Tensor x = at::randn({4, 8}, f64);
  at::NoGradGuard no_grad;
  CHECK(at::allclose(lf::lora_branch(x, adapter, false), at::matmul(at::matmul(x, adapter.A.t()), adapter.B.t()) * 2.5));
}

TEST_CASE("lora: targets match as PEFT's list does, and the bad ones are named", "[lora]") {
  const auto owner = lf::test::tiny_model("llama");
  lf::CausalLM& model = *owner;
  lf::LoraConfig config;
  config.r = 2;
  config.target_modules = {"q_proj", "mlp.down_proj"};
  const auto targets = lf::lora_targets(model, config, "student.lora");
  REQUIRE(targets.size() == 4);
  CHECK(targets[0] == "model.layers.0.self_attn.q_proj");
  CHECK(targets[1] == "model.layers.0.mlp.down_proj");
  config.target_modules = {"all-linear"};
  CHECK(lf::lora_targets(model, config, "k").size() == 2 * 7);  // the untied lm_head is left out
  config.target_modules = {"q_projection"};
  CHECK_THROWS_WITH(lf::lora_targets(model, config, "student.lora"),
                    Catch::Contains("student.lora.target_modules: 'q_projection' names no linear layer"));
  // Fresh adapters leave the model as it was: B is zero; only the adapters train.
  config.target_modules = lf::LoraConfig::default_lora_targets();
  const auto adapters = lf::add_lora(model, config, 7, at::kFloat, true);
  CHECK(adapters.size() == 2 * 2 * 7);
  for (const auto& p : model.parameters()) CHECK(!p.requires_grad());
  for (const auto& [name, t] : adapters) {
    CHECK(t.requires_grad());
    if (name.find("lora_B") != std::string::npos) CHECK(t.abs().max().item<double>() == 0);
  }
  // A is Kaiming-uniform with a = √5: |A| ≤ 1/√in.
  CHECK(adapters[0].second.abs().max().item<double>() <= 1 / std::sqrt(32.0));
  // Per layer, r · (in + out): q and o 2·64, k and v 2·48, gate, up and down 2·80.
  CHECK(lf::lora_parameter_count(model, config) == 2 * (2 * 128 + 2 * 96 + 3 * 160));
}
