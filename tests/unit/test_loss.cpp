#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <functional>

#include "kernels/logit_stats.h"
#include "loss/gld.h"
#include "loss/objective.h"
#include "loss/token.h"

namespace {

// Largest |autograd − central difference| over `checks` random entries of x (double precision).
double gradient_error(const std::function<at::Tensor(const at::Tensor&)>& f, at::Tensor x, int checks = 12) {
  x = x.to(at::kDouble).detach().requires_grad_(true);
  f(x).backward();
  at::Tensor analytic = x.grad().clone();
  at::NoGradGuard no_grad;
  at::Tensor flat = x.detach().flatten();
  auto generator = at::detail::createCPUGenerator(5);
  double worst = 0;
  for (int c = 0; c < checks; ++c) {
    const int64_t i = at::randint(flat.numel(), {1}, generator, at::kLong).item<int64_t>();
    const double eps = 1e-6, original = flat[i].item<double>();
    flat[i] = original + eps;
    const double up = f(flat.view_as(x)).item<double>();
    flat[i] = original - eps;
    const double down = f(flat.view_as(x)).item<double>();
    flat[i] = original;
    worst = std::max(worst, std::abs((up - down) / (2 * eps) - analytic.flatten()[i].item<double>()));
  }
  return worst;
}

at::Tensor random_logits(int64_t n, int64_t v, uint64_t seed, double scale = 2.0) {
  auto generator = at::detail::createCPUGenerator(seed);
  return at::randn({n, v}, generator, at::TensorOptions().dtype(at::kDouble)) * scale;
}

lf::VocabMap identity_with_holes(int64_t v) {
  lf::VocabMap map;
  for (int64_t i = 0; i < v; ++i) map.to_student.push_back(i % 7 == 3 ? -1 : (i * 5) % v);  // a permutation with holes
  return map;
}

}  // namespace

TEST_CASE("loss: GLD gradients match finite differences", "[loss]") {
  const at::Tensor teacher = random_logits(9, 40, 2);
  for (const char* feature : {"strength", "self", "norm"})
    for (int64_t p : {1, 2})
      for (bool normalize : {true, false}) {
        lf::loss::GldOptions options{feature, normalize, p};
        auto xt = lf::kernels::softmax_topk(teacher, 6, 1.0).probs;
        auto f = [&](const at::Tensor& logits) {
          auto xs = lf::kernels::softmax_topk(logits, 6, 0.7).probs;
          return lf::loss::sorted_feature_distance(lf::loss::rank_node_features(xs, options),
                                                   lf::loss::rank_node_features(xt, options), p);
        };
        INFO(feature << " p=" << p << " normalize=" << normalize);
        CHECK(gradient_error(f, random_logits(11, 40, 3)) < 1e-6);
      }
  auto top = lf::kernels::softmax_topk(teacher, 6, 1.0);
  auto vocab = [&](const at::Tensor& logits) {
    auto s = lf::kernels::softmax_topk(logits, 6, 1.0);
    lf::loss::GldOptions options;
    return lf::loss::sorted_feature_distance(lf::loss::vocab_node_features(s.probs, s.ids, options),
                                             lf::loss::vocab_node_features(top.probs, top.ids, options), 1);
  };
  CHECK(gradient_error(vocab, random_logits(11, 40, 4)) < 1e-6);
}

TEST_CASE("loss: GLD is zero for identical inputs and blind to vocabulary order", "[loss]") {
  const at::Tensor a = random_logits(13, 50, 7);
  const at::Tensor perm = at::randperm(50, at::detail::createCPUGenerator(1), at::TensorOptions().dtype(at::kLong));
  lf::loss::GldOptions options;
  auto gld = [&](const at::Tensor& s, const at::Tensor& t) {
    return lf::loss::sorted_feature_distance(lf::loss::rank_node_features(lf::kernels::softmax_topk(s, 10, 1).probs, options),
                                             lf::loss::rank_node_features(lf::kernels::softmax_topk(t, 10, 1).probs, options), 1)
        .item<double>();
  };
  const at::Tensor b = random_logits(7, 80, 8);
  CHECK(gld(a, a) == Approx(0).margin(1e-12));
  CHECK(gld(a.index_select(1, perm), a) == Approx(0).margin(1e-12));
  CHECK(gld(a.index_select(1, perm), b) == Approx(gld(a, b)).epsilon(1e-12));  // another vocabulary size, too
  CHECK(gld(a, b) > 0);
}

TEST_CASE("loss: ULD and the KL family match finite differences and their definitions", "[loss]") {
  const at::Tensor s = random_logits(5, 30, 11), t = random_logits(5, 30, 12);
  const lf::VocabMap map = identity_with_holes(30);
  for (const char* type : {"uld", "kl", "rkl", "jsd"})
    for (std::optional<int64_t> k : {std::optional<int64_t>(), std::optional<int64_t>(8)}) {
      lf::loss::TokenLossOptions options{lf::loss::parse_token_loss(type), k, 1.5, 0.3};
      auto f = [&](const at::Tensor& logits) { return lf::loss::token_loss_rows(logits, t, options, &map).sum(); };
      INFO(type << " top_k=" << (k ? *k : 0));
      CHECK(gradient_error(f, s) < 1e-6);
      CHECK(lf::loss::token_loss_rows(t, t, {lf::loss::parse_token_loss(type), k, 1.0, 0.5}, &map).sum().item<double>() >= -1e-9);
    }
  // ULD of full distributions is the L1 distance of the sorted probability vectors.
  at::Tensor ps = std::get<0>(at::softmax(s, 1).sort(1, true)), pt = std::get<0>(at::softmax(t, 1).sort(1, true));
  CHECK(lf::loss::token_loss_rows(s, t, {lf::loss::TokenLoss::kUld, {}, 1.0, 0.5}, nullptr).sum().item<double>() ==
        Approx((ps - pt).abs().sum().item<double>()).epsilon(1e-9));
  // With an identity map and full distributions, kl is KL(p_T ‖ p_S).
  lf::VocabMap identity;
  for (int64_t i = 0; i < 30; ++i) identity.to_student.push_back(i);
  at::Tensor kl = (at::softmax(t, 1) * (at::log_softmax(t, 1) - at::log_softmax(s, 1))).sum();
  CHECK(lf::loss::token_loss_rows(s, t, {lf::loss::TokenLoss::kKl, {}, 1.0, 0.5}, &identity).sum().item<double>() == Approx(kl.item<double>()).epsilon(1e-9));
  at::Tensor rkl = (at::softmax(s, 1) * (at::log_softmax(s, 1) - at::log_softmax(t, 1))).sum();
  CHECK(lf::loss::token_loss_rows(s, t, {lf::loss::TokenLoss::kRkl, {}, 1.0, 0.5}, &identity).sum().item<double>() == Approx(rkl.item<double>()).epsilon(1e-9));
}

TEST_CASE("loss: zero teacher probabilities give finite losses and gradients", "[loss]") {
  // Poisoned numbers that are legitimate: a teacher that puts zero probability (-inf logits) on
  // tokens, including the ones the student prefers, and a row whose whole mass falls on tokens the
  // vocabulary map cannot place (holes), at full vocabulary and top-k. Every term stays finite and
  // so does its gradient; the unplaceable row contributes nothing.
  const lf::VocabMap map = identity_with_holes(30);
  at::Tensor t = random_logits(4, 30, 31);
  const double inf = std::numeric_limits<double>::infinity();
  t.index_put_({0, at::indexing::Slice(0, 15)}, -inf);                      // half the vocabulary impossible
  t[1].fill_(-inf);
  for (int64_t i = 3; i < 30; i += 7) t[1][i] = 0.0;                          // all its mass on holes
  at::Tensor s = random_logits(4, 30, 32);
  s.index_put_({0, at::indexing::Slice(0, 15)}, 8.0);  // the student prefers what the teacher rules out
  for (const char* type : {"uld", "kl", "rkl", "jsd"})
    for (std::optional<int64_t> k : {std::optional<int64_t>(), std::optional<int64_t>(5)}) {
      INFO(type << " top_k=" << (k ? *k : 0));
      at::Tensor x = s.clone().requires_grad_(true);
      at::Tensor rows = lf::loss::token_loss_rows(x, t, {lf::loss::parse_token_loss(type), k, 1.0, 0.5}, &map);
      rows.sum().backward();
      CHECK(at::isfinite(rows).all().item<bool>());
      CHECK(at::isfinite(x.grad()).all().item<bool>());
      if (std::string(type) != "uld") CHECK(rows[1].item<double>() == 0.0);
    }
}

TEST_CASE("loss: streamed chunks give the same loss and gradients as one chunk", "[loss]") {
  // A toy "model": hidden states from an embedding, logits from a projection, both learnable.
  auto generator = at::detail::createCPUGenerator(21);
  const int64_t B = 3, T = 9, d = 6, V = 25, Vt = 31;
  at::Tensor embed = at::randn({V, d}, generator, at::kDouble), head = at::randn({V, d}, generator, at::kDouble);
  at::Tensor t_embed = at::randn({Vt, d}, generator, at::kDouble), t_head = at::randn({Vt, d}, generator, at::kDouble);
  std::vector<lf::TokenizedSequence> seqs(B), tseqs(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < T - b; ++i) seqs[b].ids.push_back((b * 7 + i * 3) % V);
    seqs[b].prompt_length = 2 + b % 2;
    for (int64_t i = 0; i < T - 1; ++i) tseqs[b].ids.push_back((b * 5 + i * 2) % Vt);
    tseqs[b].prompt_length = 3;
  }
  std::vector<const lf::TokenizedSequence*> rows, trows;
  for (int64_t b = 0; b < B; ++b) { rows.push_back(&seqs[b]); trows.push_back(&tseqs[b]); }
  lf::ModelBatch sb = lf::collate(rows, 0), tb = lf::collate(trows, 0);
  std::vector<lf::PositionPairs> pairs(B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i + 1 < std::min(seqs[b].label_count(), tseqs[b].label_count()); i += 2)
      pairs[b].emplace_back(seqs[b].first_label_position() + i, tseqs[b].first_label_position() + i);
  lf::VocabMap map;
  for (int64_t i = 0; i < Vt; ++i) map.to_student.push_back(i < V ? i : -1);

  auto run = [&](int64_t chunk, const std::string& token_type, const std::string& mix, at::Tensor head_value = at::Tensor()) {
    at::Tensor e = embed.clone().requires_grad_(true);
    at::Tensor h = (head_value.defined() ? head_value : head).clone().requires_grad_(true);
    lf::loss::StudentSide student{at::embedding(e, sb.input_ids), [&](const at::Tensor& x) { return at::linear(x, h); }, &sb, nullptr};
    lf::loss::TeacherSide teacher{at::embedding(t_embed, tb.input_ids), [&](const at::Tensor& x) { return at::linear(x, t_head); },
                                  &tb, pairs, &map, nullptr, 1.0};
    lf::loss::TeacherSide teacher2 = teacher;
    teacher2.weight = 0.5;
    teacher.weight = 0.5;
    lf::loss::ObjectiveConfig config;
    config.chunk_rows = chunk;
    config.token.type = lf::loss::parse_token_loss(token_type);
    config.graph_top_k = 4;
    config.teacher_mix = lf::loss::parse_teacher_mix(mix);
    auto parts = lf::loss::backward_fusion_loss(student, {teacher, teacher2}, config, {double(sb.label_tokens), double(B)});
    return std::make_tuple(parts, e.grad(), h.grad());
  };
  for (const char* type : {"uld", "kl"}) {
    auto [p1, e1, h1] = run(1000, type, "uniform");
    auto [p2, e2, h2] = run(2, type, "uniform");
    CHECK(p1.total == Approx(p2.total).epsilon(1e-12));
    CHECK(p1.graph > 0);
    CHECK(p1.token > 0);
    CHECK(at::allclose(e1, e2, 1e-10, 1e-12));
    CHECK(at::allclose(h1, h2, 1e-10, 1e-12));
  }
  auto [pm, em, hm] = run(3, "uld", "min_ce");
  CHECK(std::isfinite(pm.total));
  // The gradient that was backpropagated is the gradient of the reported total (finite differences
  // on the student's head, every term on).
  for (const char* type : {"uld", "kl"})
    for (const char* mix : {"uniform", "min_ce"}) {
      auto [p0, e0, h0] = run(4, type, mix);
      for (int64_t i : {0, 7, 33, 61}) {
        const double eps = 1e-6;
        at::Tensor up = head.clone(), down = head.clone();
        up.view(-1)[i] += eps;
        down.view(-1)[i] -= eps;
        const double numeric = (std::get<0>(run(4, type, mix, up)).total - std::get<0>(run(4, type, mix, down)).total) / (2 * eps);
        INFO(type << " " << mix << " entry " << i);
        CHECK(numeric == Approx(h0.view(-1)[i].item<double>()).margin(1e-6));
      }
    }
}
