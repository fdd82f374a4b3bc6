#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "test_helpers.h"
#include "tiny_model.h"

using Catch::Matchers::Contains;

using lf::test::tiny_config;
using lf::test::tiny_model;

TEST_CASE("model: left-padded batch equals each row on its own", "[model]") {
  for (const char* arch : {"llama", "qwen3", "phi3"}) {
    auto model = tiny_model(arch);
    at::NoGradGuard no_grad;
    at::Tensor a = at::tensor({3, 4, 5, 6, 7}, at::kLong).unsqueeze(0);
    at::Tensor b = at::tensor({8, 9, 10}, at::kLong).unsqueeze(0);
    at::Tensor la = model->forward(a), lb = model->forward(b);
    // Row b is left-padded by two tokens; its positions start at 0 on its first real token.
    at::Tensor ids = at::tensor({3, 4, 5, 6, 7, 0, 0, 8, 9, 10}, at::kLong).reshape({2, 5});
    lf::ForwardOptions options;
    options.token_mask = at::tensor({1, 1, 1, 1, 1, 0, 0, 1, 1, 1}, at::kLong).to(at::kBool).reshape({2, 5});
    options.positions = at::tensor({0, 1, 2, 3, 4, 0, 0, 0, 1, 2}, at::kLong).reshape({2, 5});
    lf::KVCache cache;
    options.cache = &cache;
    at::Tensor batch = model->forward(ids, options);
    CHECK(at::allclose(batch[0], la[0], 1e-5, 1e-5));
    CHECK(at::allclose(batch[1].narrow(0, 2, 3), lb[0], 1e-5, 1e-5));
    // One more token per row through the cache matches the unpadded continuation.
    lf::ForwardOptions step;
    step.cache = &cache;
    step.positions = at::tensor({5, 3}, at::kLong).reshape({2, 1});
    at::Tensor next = model->forward(at::tensor({11, 12}, at::kLong).reshape({2, 1}), step);
    at::Tensor la2 = model->forward(at::cat({a, at::tensor({11}, at::kLong).unsqueeze(0)}, 1));
    at::Tensor lb2 = model->forward(at::cat({b, at::tensor({12}, at::kLong).unsqueeze(0)}, 1));
    CHECK(at::allclose(next[0][0], la2[0][5], 1e-5, 1e-5));
    CHECK(at::allclose(next[1][0], lb2[0][3], 1e-5, 1e-5));
  }
}

TEST_CASE("model: sliding window limits attention to the last W tokens", "[model]") {
  auto windowed = tiny_model("mistral", 3);
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor({1, 2, 3, 4, 5, 6, 7}, at::kLong).unsqueeze(0);
  at::Tensor other = at::tensor({9, 9, 9, 9, 5, 6, 7}, at::kLong).unsqueeze(0);
  // With 2 layers the last position sees back 2 * (W - 1) = 4 tokens: positions 2..6, so changing
  // tokens 0 and 1 cannot change its logits, but changing token 2 or 3 can.
  at::Tensor a = windowed->forward(ids), b = windowed->forward(at::tensor({9, 9, 3, 4, 5, 6, 7}, at::kLong).unsqueeze(0));
  CHECK(at::allclose(a[0][6], b[0][6], 1e-5, 1e-5));
  CHECK_FALSE(at::allclose(a[0][6], windowed->forward(other)[0][6], 1e-5, 1e-5));
}

TEST_CASE("model: save and load round trip and and checkpoint mismatches", "[model]") {
  lf::test::TempDir dir;
  auto model = tiny_model("qwen2");
  lf::save_model(*model, dir / "m");
  auto loaded = lf::load_model(dir / "m");
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor({1, 2, 3}, at::kLong).unsqueeze(0);
  CHECK(at::equal(model->forward(ids), loaded->forward(ids)));
  // Saving over a non-empty directory is refused and leaves it intact.
  CHECK_THROWS_AS(lf::save_model(*model, dir / "m"), lf::InputError);
  CHECK(lf::load_model(dir / "m")->config().vocab_size == 50);

  auto bigger = tiny_model("qwen2");
  lf::ModelConfig c = bigger->config();
  c.num_layers = 3;
  lf::CausalLM three(c, at::TensorOptions().dtype(at::kFloat));
  three.init_weights(1);
  lf::save_model(three, dir / "three");
  // Replace config.json of the 2-layer model's directory with the 3-layer one: a tensor is missing.
  std::filesystem::copy_file(dir / "three/config.json", dir / "m/config.json", std::filesystem::copy_options::overwrite_existing);
  try {
    lf::load_model(dir / "m");
    FAIL("expected an error");
  } catch (const lf::InputError& e) {
    CHECK_THAT(e.one_line(), Contains("model.layers.2"));
  }
}

TEST_CASE("model: a LongRoPE model saves and loads with its factors", "[model]") {
  // Phi-3.5's RoPE: per-frequency factors, short up to the original context and long beyond it,
  // and cos/sin scaled by the attention factor. The saved config.json reads back to the same model,
  // on both sides of the original context (2 positions here).
  lf::test::TempDir dir;
  lf::ModelConfig c = tiny_model("phi3")->config();
  c.rope.type = "longrope";
  c.rope.short_factor = {1.0, 1.5, 2.0, 2.5};
  c.rope.long_factor = {1.0, 3.0, 9.0, 27.0};
  c.rope.original_max_position_embeddings = 2;
  c.rope.factor = 4.0;
  c.rope.attention_factor = 1.25;
  lf::CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  model.init_weights(3);
  lf::save_model(model, dir / "m");
  auto loaded = lf::load_model(dir / "m");
  CHECK(loaded->config().rope.type == "longrope");
  CHECK(loaded->config().rope.long_factor == c.rope.long_factor);
  CHECK(loaded->config().rope.attention_factor == 1.25);
  at::NoGradGuard no_grad;
  for (int64_t length : {2, 5}) {
    at::Tensor ids = at::arange(1, length + 1, at::kLong).unsqueeze(0);
    CHECK(at::equal(model.forward(ids), loaded->forward(ids)));
  }
  // The long factors change the positions beyond the original context only when the call reaches past it.
  lf::ModelConfig short_only = c;
  short_only.rope.long_factor = c.rope.short_factor;
  lf::CausalLM twin(short_only, at::TensorOptions().dtype(at::kFloat));
  twin.init_weights(3);
  at::Tensor two = at::tensor({1, 2}, at::kLong).unsqueeze(0), five = at::arange(1, 6, at::kLong).unsqueeze(0);
  CHECK(at::equal(model.forward(two), twin.forward(two)));
  CHECK_FALSE(at::allclose(model.forward(five), twin.forward(five)));
}

TEST_CASE("model: activation checkpointing gives the same gradients", "[model]") {
  auto plain = tiny_model("qwen3");
  auto checkpointed = tiny_model("qwen3");
  checkpointed->set_activation_checkpointing(true);
  at::Tensor ids = at::tensor({3, 4, 5, 6, 7, 8, 9, 10}, at::kLong).reshape({2, 4});
  for (auto* m : {plain.get(), checkpointed.get()}) {
    at::Tensor logits = m->forward(ids);
    (logits.pow(2).mean() + logits.select(2, 3).sum()).backward();
  }
  auto a = plain->named_parameters(), b = checkpointed->named_parameters();
  for (const auto& item : a) {
    INFO(item.key());
    REQUIRE(item.value().grad().defined());
    CHECK(at::allclose(item.value().grad(), b[item.key()].grad(), 1e-5, 1e-7));
  }
}

TEST_CASE("model: the LM head packed for decoding gives the plain head's logits to fp32 rounding", "[model]") {
  // Both heads sum K = hidden products in fp32, each within γ_K·Σ|h_k·w_k| (γ_K ≈ K·2^-24) of the
  // exact sum, so they differ by at most twice that. Soft-capping (Gemma 2) is 1-Lipschitz and adds a
  // few ulps of the cap (division, tanh, product). The bound is computed per logit from |h|·|W|ᵀ in
  // float64.
  for (const char* arch : {"llama", "gemma2"}) {
    for (bool tied : {false, true}) {
      lf::ModelConfig c = tiny_config(arch);
      c.vocab_size = 3000;  // wide enough for oneDNN's blocked layout to matter
      c.hidden_size = 64;
      c.head_dim = 16;
      c.tie_word_embeddings = tied;
      if (std::string(arch) == "gemma2") c.final_logit_softcapping = 30.0;
      auto model = std::make_shared<lf::CausalLM>(c, at::TensorOptions().dtype(at::kFloat));
      model->init_weights(5);
      at::Tensor h = at::randn({2, 9, c.hidden_size}, at::TensorOptions().dtype(at::kFloat));
      at::Tensor plain, packed;
      {
        at::NoGradGuard no_grad;
        plain = model->logits(h);
        REQUIRE(model->pack_head_for_decoding() == c.vocab_size * c.hidden_size * 4);
        packed = model->logits(h);
        // A decoding step's rows: a strided view of the last position.
        CHECK(at::equal(model->logits(h.select(1, -1)), model->logits(h.select(1, -1).contiguous())));
      }
      REQUIRE(packed.sizes() == plain.sizes());
      at::Tensor weight;
      for (const auto& p : model->named_parameters())
        if (p.key() == (tied ? "model.embed_tokens.weight" : "lm_head.weight")) weight = p.value();
      REQUIRE(weight.defined());
      const double gamma = static_cast<double>(c.hidden_size) * std::ldexp(1.0, -24);
      at::Tensor bound = 2 * gamma * at::matmul(h.abs().to(at::kDouble), weight.detach().abs().to(at::kDouble).t()) +
                         (c.final_logit_softcapping ? 8 * std::ldexp(1.0, -24) * *c.final_logit_softcapping : 0.0);
      at::Tensor diff = (packed.to(at::kDouble) - plain.to(at::kDouble)).abs();
      INFO(arch << (tied ? " tied" : " untied") << ": largest |Δ| " << diff.max().item<double>());
      CHECK(at::le(diff, bound).all().item<bool>());
      // Training never sees the packed copy: a hidden state that needs a gradient takes the plain head.
      at::Tensor hg = h.clone().requires_grad_(true);
      at::Tensor out = model->logits(hg);
      REQUIRE(out.requires_grad());
      out.sum().backward();
      CHECK(hg.grad().defined());
      CHECK(at::allclose(out.detach(), plain));
    }
  }
  // Not fp32 on the CPU: nothing is packed.
  lf::CausalLM bf16(tiny_config("llama"), at::TensorOptions().dtype(at::kBFloat16));
  CHECK(bf16.pack_head_for_decoding() == 0);
}
