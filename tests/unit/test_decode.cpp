// Decoding: the DLF α solve against a brute-force reference, the generation loop (KV cache vs
// recomputation, left-padded batches vs one prompt at a time, α = 0 vs large_only, EOS and stop
// strings, sampling), the shared-vocabulary check and the generate/eval configs.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/error.h"
#include "decode/config.h"
#include "decode/generate.h"
#include "decode/model_set.h"
#include "decode/sampling.h"
#include "eval/scoring.h"
#include "eval/tasks.h"
#include "fake_tokenizer.h"
#include "kernels/dlf.h"
#include "kernels/dlf_rows.h"
#include "model/transformer.h"
#include "test_helpers.h"
#include "decode_fixtures.h"

using Catch::Matchers::Contains;

using lf::test::fused_set;
using lf::test::ids_of;
using lf::test::kVocab;
using lf::test::prompts;
using lf::test::tiny;

namespace {

at::Tensor random_logits(int64_t rows, int64_t vocab, uint64_t seed, double scale = 3.0) {
  auto g = at::detail::createCPUGenerator(seed);
  return at::randn({rows, vocab}, g, at::TensorOptions().dtype(at::kDouble)) * scale;
}

}  // namespace

TEST_CASE("dlf: closed-form KLs equal the direct KLs", "[decode]") {
  const at::Tensor zl = random_logits(6, 300, 1), delta = random_logits(6, 300, 2, 1.0);
  const std::vector<double> grid = {0.0, 0.3, 1.0, 1.7, -0.5};
  const auto kls = lf::kernels::dlf_closed_form_kls(zl, delta, grid);
  const at::Tensor log_p = at::log_softmax(zl, -1);
  for (size_t g = 0; g < grid.size(); ++g) {
    const at::Tensor log_pt = at::log_softmax(zl + grid[g] * delta, -1);
    const at::Tensor forward = (log_pt.exp() * (log_pt - log_p)).sum(-1);
    const at::Tensor reverse = (log_p.exp() * (log_p - log_pt)).sum(-1);
    CHECK((kls.forward.select(1, g) - forward).abs().max().item<double>() < 1e-10);
    CHECK((kls.reverse.select(1, g) - reverse).abs().max().item<double>() < 1e-10);
  }
  CHECK(kls.forward.select(1, 0).abs().max().item<double>() < 1e-12);  // α = 0: no shift
}

TEST_CASE("dlf: the alpha solve equals the brute-force reference for one and several experts", "[decode]") {
  const auto grid = lf::kernels::alpha_grid(0.0, 2.0, 0.1);
  REQUIRE(grid.size() == 21);
  CHECK(grid.back() == Approx(2.0));
  for (int experts : {1, 3}) {
    const at::Tensor zl = random_logits(9, 500, 10 + experts), zs = random_logits(9, 500, 20 + experts);
    std::vector<at::Tensor> ze;
    for (int t = 0; t < experts; ++t) ze.push_back(zs + random_logits(9, 500, 30 + t, 0.3 * (t + 1)));
    lf::kernels::DlfOptions blocked;
    blocked.row_block = 2;  // several row blocks, one of them partial
    for (auto backend : {lf::kernels::Backend::automatic, lf::kernels::Backend::aten}) {
    blocked.backend = backend;
    INFO("experts " << experts << (backend == lf::kernels::Backend::aten ? " LibTorch path" : " row kernel"));
    const auto solve = lf::kernels::dlf_solve(zl, zs, ze, grid, blocked);
    const auto ref = lf::kernels::dlf_solve_reference(zl, zs, ze, grid);
    REQUIRE(solve.all_objectives.sizes() == at::IntArrayRef({9, experts, 21}));
    CHECK((solve.all_objectives - ref.all_objectives).abs().max().item<double>() < 1e-6);
    CHECK(at::equal(solve.expert, ref.expert));
    CHECK(at::equal(solve.alpha, ref.alpha));
    CHECK((solve.objective - ref.objective).abs().max().item<double>() < 1e-6);
    CHECK((solve.fused - ref.fused).abs().max().item<double>() < 1e-9);
    // The chosen (expert, α) is the minimum of J, and the fused logits use exactly that pair.
    const at::Tensor best = std::get<0>(solve.all_objectives.reshape({9, -1}).min(1));
    CHECK(at::allclose(best, solve.objective));
    for (int64_t r = 0; r < 9; ++r) {
      const int64_t t = solve.expert[r].item<int64_t>();
      const double a = solve.alpha[r].item<double>();
      CHECK(at::allclose(solve.fused[r], zl[r] + a * (ze[t][r] - zs[r])));
    }
    }
  }
  // Several experts: rows whose shift comes from expert 0 pick expert 0, the others expert 1 (the
  // expert that barely moves cannot match the shift that the other one shows).
  const at::Tensor zl = random_logits(32, 200, 3), zs = random_logits(32, 200, 4);
  const at::Tensor real = random_logits(32, 200, 5, 2.0), none = random_logits(32, 200, 6, 1e-3);
  const at::Tensor first = (at::arange(32) < 16).unsqueeze(1).to(at::kDouble);
  std::vector<at::Tensor> ze = {zs + first * real + (1 - first) * none, zs + first * none + (1 - first) * real};
  const auto solve = lf::kernels::dlf_solve(zl, zs, ze, grid);
  CHECK(at::equal(solve.expert, (at::arange(32) >= 16).to(at::kLong)));
  CHECK(solve.alpha.min().item<double>() > 0);
}

TEST_CASE("dlf: the multi-expert criteria equal a brute-force search", "[decode]") {
  // Brute force: every expert and α, P̃ materialised by a softmax, KLs taken directly.
  const auto grid = lf::kernels::alpha_grid(0.0, 2.0, 0.25);
  const int64_t N = 7, V = 60, m = 3;
  const at::Tensor zl = random_logits(N, V, 41), zs = random_logits(N, V, 42);
  std::vector<at::Tensor> ze;
  for (int t = 0; t < m; ++t) ze.push_back(zs + random_logits(N, V, 43 + t, 0.5 * (t + 1)));
  auto kl = [](const at::Tensor& log_a, const at::Tensor& log_b) { return (log_a.exp() * (log_a - log_b)).sum(-1); };
  const at::Tensor log_p = at::log_softmax(zl, -1), log_q = at::log_softmax(zs, -1);
  // route's state from a first step on other logits: rows keep the expert chosen there.
  const at::Tensor first_zl = random_logits(N, V, 51);
  at::Tensor route;
  {
    auto first = lf::kernels::dlf_solve(first_zl, zs, ze, grid);
    lf::kernels::apply_multi_expert_criterion(first, "route", first_zl, zs, ze, grid, &route);
  }
  REQUIRE(route.defined());
  for (const char* criterion : {"active", "closest", "route"}) {
    INFO(criterion);
    auto solve = lf::kernels::dlf_solve(zl, zs, ze, grid);
    at::Tensor state = route.clone();
    lf::kernels::apply_multi_expert_criterion(solve, criterion, zl, zs, ze, grid, &state);
    for (int64_t r = 0; r < N; ++r) {
      int64_t closest = 0;
      double nearest = std::numeric_limits<double>::infinity();
      for (int64_t u = 0; u < m; ++u) {
        const double d = kl(log_p[r], at::log_softmax(ze[u][r], -1)).item<double>();
        if (d < nearest) { nearest = d; closest = u; }
      }
      double best = std::numeric_limits<double>::infinity();
      int64_t best_t = -1;
      double best_alpha = 0;
      for (int64_t t = 0; t < m; ++t) {
        if (std::string(criterion) == "closest" && t != closest) continue;
        if (std::string(criterion) == "route" && t != route[r].item<int64_t>()) continue;
        const at::Tensor log_qt = at::log_softmax(ze[t][r], -1);
        const double k1 = kl(log_qt, log_q[r]).item<double>(), k2 = kl(log_q[r], log_qt).item<double>();
        for (double alpha : grid) {
          const at::Tensor log_pt = at::log_softmax(zl[r] + alpha * (ze[t][r] - zs[r]), -1);
          const double j = std::pow(kl(log_pt, log_p[r]).item<double>() - k1, 2) + std::pow(kl(log_p[r], log_pt).item<double>() - k2, 2);
          if (j < best - 1e-12) { best = j; best_t = t; best_alpha = alpha; }
        }
      }
      INFO("row " << r);
      if (std::string(criterion) == "route") {  // the first step's choice: the expert surest of the large model's token
        const int64_t token = first_zl[r].argmax().item<int64_t>();
        int64_t surest = 0;
        double highest = -std::numeric_limits<double>::infinity();
        for (int64_t u = 0; u < m; ++u) {
          const double lp = at::log_softmax(ze[u][r], -1)[token].item<double>();
          if (lp > highest) { highest = lp; surest = u; }
        }
        CHECK(route[r].item<int64_t>() == surest);
      }
      CHECK(solve.expert[r].item<int64_t>() == best_t);
      CHECK(solve.alpha[r].item<double>() == Approx(best_alpha));
      CHECK(solve.objective[r].item<double>() == Approx(best).margin(1e-9));
      CHECK(at::allclose(solve.fused[r], zl[r] + best_alpha * (ze[best_t][r] - zs[r])));
    }
  }
  // sum leaves the paper's solve as it is; an unknown name is an input error.
  auto solve = lf::kernels::dlf_solve(zl, zs, ze, grid);
  const at::Tensor expert = solve.expert.clone();
  lf::kernels::apply_multi_expert_criterion(solve, "sum", zl, zs, ze, grid);
  CHECK(at::equal(solve.expert, expert));
  CHECK_THROWS_AS(lf::kernels::apply_multi_expert_criterion(solve, "mean", zl, zs, ze, grid), lf::InputError);
}

TEST_CASE("dlf: a masked vocabulary is left out of every distribution", "[decode]") {
  // Columns that are -inf in the models (a vocabulary mask) give the result of the unmasked columns
  // alone, in the solve and in the brute-force reference, and stay -inf in the fused logits.
  const auto grid = lf::kernels::alpha_grid(0.0, 2.0, 0.1);
  const at::Tensor keep = at::arange(300) % 7 != 3;
  const at::Tensor cols = keep.nonzero().squeeze(1);
  auto masked = [&](at::Tensor z) { return z.masked_fill(~keep.unsqueeze(0), -std::numeric_limits<double>::infinity()); };
  const at::Tensor zl = random_logits(6, 300, 41), zs = random_logits(6, 300, 42);
  std::vector<at::Tensor> ze = {zs + random_logits(6, 300, 43, 0.4), zs + random_logits(6, 300, 44, 0.8)};
  std::vector<at::Tensor> ze_masked, ze_kept;
  for (const auto& z : ze) {
    ze_masked.push_back(masked(z));
    ze_kept.push_back(z.index_select(1, cols));
  }
  const auto full = lf::kernels::dlf_solve(masked(zl), masked(zs), ze_masked, grid);
  const auto kept = lf::kernels::dlf_solve(zl.index_select(1, cols), zs.index_select(1, cols), ze_kept, grid);
  const auto ref = lf::kernels::dlf_solve_reference(masked(zl), masked(zs), ze_masked, grid);
  CHECK(at::isfinite(full.all_objectives).all().item<bool>());
  CHECK((full.all_objectives - kept.all_objectives).abs().max().item<double>() < 1e-9);
  CHECK((ref.all_objectives - kept.all_objectives).abs().max().item<double>() < 1e-6);
  CHECK(at::equal(full.expert, kept.expert));
  CHECK(at::allclose(full.fused.index_select(1, cols), kept.fused));
  CHECK(at::isinf(full.fused.index_select(1, (~keep).nonzero().squeeze(1))).all().item<bool>());
}

TEST_CASE("dlf: float32 logits give the double result to float precision", "[decode]") {
  const auto grid = lf::kernels::alpha_grid(0.0, 2.0, 0.25);
  const at::Tensor zl = random_logits(4, 1000, 7), zs = random_logits(4, 1000, 8);
  std::vector<at::Tensor> ze = {zs + random_logits(4, 1000, 9, 0.5)};
  const auto d = lf::kernels::dlf_solve(zl, zs, ze, grid);
  const auto f = lf::kernels::dlf_solve(zl.to(at::kFloat), zs.to(at::kFloat), {ze[0].to(at::kFloat)}, grid);
  CHECK(f.fused.scalar_type() == at::kFloat);
  CHECK((f.all_objectives.to(at::kDouble) - d.all_objectives).abs().max().item<double>() < 1e-4);
}

TEST_CASE("decode: KV cache decoding equals recomputing the whole sequence", "[decode]") {
  for (const char* strategy : {"large_only", "dynamic"}) {
    lf::ModelSet set = fused_set(strategy);
    lf::GenerateOptions options;
    options.max_new_tokens = 6;
    options.batch_size = 5;
    options.eos_ids = {};
    options.kv_cache = true;
    const auto cached = generate(set, prompts(), options);
    options.kv_cache = false;
    const auto recomputed = generate(set, prompts(), options);
    CHECK(ids_of(cached) == ids_of(recomputed));
    // And the fused logits agree step by step, not just their argmax.
    at::Tensor ids = at::tensor({0, 0, 5, 6, 7, 8, 9, 10}, at::kLong).reshape({2, 4});
    at::Tensor mask = at::tensor({0, 0, 1, 1, 1, 1, 1, 1}, at::kLong).to(at::kBool).reshape({2, 4});
    lf::BatchDecoder with(set, true), without(set, false);
    auto a = with.prefill(ids, mask), b = without.prefill(ids, mask);
    CHECK(at::allclose(a.logits, b.logits, 1e-4, 1e-4));
    for (int step = 0; step < 3; ++step) {
      const at::Tensor next = a.logits.argmax(-1);
      a = with.step(next);
      b = without.step(next);
      CHECK(at::allclose(a.logits, b.logits, 1e-4, 1e-4));
    }
  }
}

TEST_CASE("decode: alpha 0 reproduces large_only token for token", "[decode]") {
  lf::GenerateOptions options;
  options.max_new_tokens = 8;
  options.batch_size = 3;
  lf::ModelSet large = fused_set("large_only");
  const auto want = ids_of(generate(large, prompts(), options));
  lf::ModelSet dynamic0 = fused_set("dynamic", {0.0});
  CHECK(ids_of(generate(dynamic0, prompts(), options)) == want);
  lf::ModelSet static0 = fused_set("static", {0.0}, 2, 0.0);
  CHECK(ids_of(generate(static0, prompts(), options)) == want);
  // And fusion with a real grid does change the output, so the comparison above is not vacuous.
  lf::ModelSet dynamic = fused_set("static", {0.0}, 2, 2.0);
  CHECK(ids_of(generate(dynamic, prompts(), options)) != want);
}

TEST_CASE("decode: a left-padded batch equals decoding one prompt at a time", "[decode]") {
  for (const char* strategy : {"large_only", "dynamic", "static"}) {
    lf::ModelSet set = fused_set(strategy);
    lf::GenerateOptions options;
    options.max_new_tokens = 7;
    options.batch_size = 5;
    const auto batched = ids_of(generate(set, prompts(), options));
    options.batch_size = 1;
    CHECK(ids_of(generate(set, prompts(), options)) == batched);
    options.batch_size = 2;  // a partial last batch
    CHECK(ids_of(generate(set, prompts(), options)) == batched);
  }
}

TEST_CASE("decode: EOS and stop strings end each row on its own", "[decode]") {
  lf::test::ChunkTokenizer tokenizer(1);
  for (int i = 4; i < kVocab; ++i) tokenizer.add(std::string(1, static_cast<char>('0' + i - 4)));
  REQUIRE(tokenizer.vocab_size() == kVocab);
  lf::ModelSet set = fused_set("large_only");
  lf::GenerateOptions options;
  options.max_new_tokens = 8;
  options.tokenizer = &tokenizer;
  const auto free_run = generate(set, prompts(), options);
  for (const auto& c : free_run) {
    CHECK(c.finish_reason == "length");
    CHECK(c.ids.size() == 8);
  }
  // EOS: the token row 0 produces at step 3 (unless it appeared earlier) ends row 0 there.
  const auto& row0 = free_run[0].ids;
  const int64_t eos = row0[3];
  const size_t cut = std::find(row0.begin(), row0.end(), eos) - row0.begin();
  options.eos_ids = {eos};
  const auto with_eos = generate(set, prompts(), options);
  CHECK(with_eos[0].finish_reason == "eos");
  CHECK(with_eos[0].ids == std::vector<int64_t>(row0.begin(), row0.begin() + cut));
  for (size_t r = 1; r < with_eos.size(); ++r) {
    const auto& full = free_run[r].ids;
    const size_t k = std::find(full.begin(), full.end(), eos) - full.begin();
    CHECK(with_eos[r].ids == std::vector<int64_t>(full.begin(), full.begin() + k));
  }
  // A stop string: the text of tokens 2 and 3 of row 1; the text stops before it.
  options.eos_ids = {};
  const auto& row1 = free_run[1].ids;
  const std::string stop = tokenizer.decode({row1[2], row1[3]}, true);
  options.stop = {stop};
  const auto stopped = generate(set, prompts(), options);
  CHECK(stopped[1].finish_reason == "stop");
  const std::string full_text = tokenizer.decode(row1, true);
  CHECK(stopped[1].text == full_text.substr(0, full_text.find(stop)));
  CHECK(stopped[1].ids.size() <= 4);
  CHECK(stopped[1].text.find(stop) == std::string::npos);
}

TEST_CASE("decode: sampling is seeded and independent of batching", "[decode]") {
  lf::ModelSet set = fused_set("dynamic");
  lf::GenerateOptions options;
  options.max_new_tokens = 6;
  options.sampling.temperature = 1.3;
  options.sampling.top_p = 0.9;
  options.sampling.top_k = 5;
  options.sampling.seed = 7;
  options.batch_size = 5;
  const auto a = ids_of(generate(set, prompts(), options));
  CHECK(ids_of(generate(set, prompts(), options)) == a);
  options.batch_size = 2;
  CHECK(ids_of(generate(set, prompts(), options)) == a);
  options.sampling.seed = 8;
  CHECK(ids_of(generate(set, prompts(), options)) != a);
  // top_k = 1 is greedy whatever the temperature.
  options.sampling.top_k = 1;
  const auto top1 = ids_of(generate(set, prompts(), options));
  options.sampling = {};
  CHECK(top1 == ids_of(generate(set, prompts(), options)));
  // Every sample lies in the top-k of its row.
  const at::Tensor logits = random_logits(64, 30, 3).to(at::kFloat);
  lf::SamplingConfig s;
  s.temperature = 2.0;
  s.top_k = 3;
  std::vector<int64_t> keys(64);
  for (int i = 0; i < 64; ++i) keys[i] = i;
  const at::Tensor picks = lf::sample_tokens(logits, s, keys, 0);
  const at::Tensor top = std::get<1>(logits.topk(3, -1));
  CHECK((top == picks.unsqueeze(1)).any(1).all().item<bool>());
}

TEST_CASE("decode: greedy tokens are argmax's, ties and NaNs included, in every dtype", "[decode]") {
  at::manual_seed(3);
  // Coarse values make ties common: argmax takes the first maximum, and so must greedy_tokens.
  at::Tensor logits = at::randint(0, 6, {32, 1000}).to(at::kFloat);
  logits[5][700] = std::numeric_limits<float>::quiet_NaN();
  logits[5][900] = std::numeric_limits<float>::quiet_NaN();
  logits[6].fill_(-std::numeric_limits<float>::infinity());
  logits[7][999] = 100;
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    const at::Tensor x = logits.to(dtype);
    CHECK(at::equal(lf::greedy_tokens(x), x.argmax(-1)));
  }
  CHECK(lf::greedy_tokens(logits)[5].item<int64_t>() == 700);
  CHECK(at::equal(lf::greedy_tokens(logits.t().contiguous().t()), logits.argmax(-1)));  // a strided view
  // Widths around the scan's 16-lane blocks, and a real vocabulary's: the blocked part, the tail, and
  // a NaN or the maximum in either.
  for (int64_t vocab : {1, 15, 16, 17, 49152, 50021}) {
    at::Tensor wide = at::randint(0, 50, {8, vocab}).to(at::kFloat);
    wide[1][vocab - 1] = 60;
    wide[2][vocab / 2] = std::numeric_limits<float>::quiet_NaN();
    wide[3][vocab - 1] = std::numeric_limits<float>::quiet_NaN();
    wide[4].fill_(-std::numeric_limits<float>::infinity());
    CHECK(at::equal(lf::greedy_tokens(wide), wide.argmax(-1)));
  }
}

TEST_CASE("decode: models must share one vocabulary", "[decode]") {
  lf::test::ChunkTokenizer a(1, "a"), b(1, "b"), c(1, "c");
  for (auto* t : {&a, &b, &c}) t->add("x");
  a.add("y");
  b.add("y");
  c.add("z");
  CHECK(lf::shared_vocabulary({&a, &b}, {"large", "base"}, {8, 6}) == 6);
  CHECK(lf::shared_vocabulary({&a, &b}, {"large", "base"}, {64, 64}) == a.vocab_size());  // padding rows dropped
  const std::string err = lf::test::error_text([&] { lf::shared_vocabulary({&a, &b, &c}, {"large", "base", "math"}, {64, 64, 64}); });
  CHECK_THAT(err, Contains("'large' and 'math'"));
  CHECK_THAT(err, Contains("'y' vs 'z'"));
}

TEST_CASE("decode: teacher-forced fused scores equal the decoder's step logits", "[decode]") {
  lf::ModelSet set = fused_set("dynamic");
  lf::GenerateOptions options;
  options.max_new_tokens = 4;
  const auto prompt = prompts()[2];
  const auto completion = generate(set, {prompt}, options)[0].ids;
  // Log-probabilities of the generated tokens, step by step through the decoder.
  lf::BatchDecoder decoder(set, true);
  at::Tensor ids = at::tensor(prompt, at::kLong).unsqueeze(0);
  auto rows = decoder.prefill(ids, at::ones_like(ids, at::kBool));
  double want = 0;
  for (size_t k = 0; k < completion.size(); ++k) {
    want += at::log_softmax(rows.logits.to(at::kDouble), -1)[0][completion[k]].item<double>();
    if (k + 1 < completion.size()) rows = decoder.step(at::tensor({completion[k]}, at::kLong));
  }
  const auto scores = lf::score_continuations(set, {{prompt, completion}, {prompts()[0], {1, 2}}}, 2);
  CHECK(scores[0].tokens == static_cast<int64_t>(completion.size()));
  CHECK(scores[0].logprob == Approx(want).epsilon(1e-4));
}

TEST_CASE("eval: answer extraction and comparison", "[decode]") {
  CHECK(lf::extract_last_number("so 3 + 4 = 7.") == "7");
  CHECK(lf::extract_last_number("total: 1,234.50 dollars") == "1234.5");
  CHECK(lf::extract_last_number("it is -12") == "-12");
  CHECK(lf::extract_last_number("no digits") == "");
  CHECK(lf::extract_regex("The answer is #### 42 ok", "#### (\\d+)") == "42");
  CHECK(lf::extract_regex("abc", "b") == "b");
  CHECK(lf::answers_match("1234.5", "1,234.50"));
  CHECK(lf::answers_match("42", " 42 "));
  CHECK_FALSE(lf::answers_match("41", "42"));
  CHECK(lf::answers_match("Paris", "Paris"));
}

TEST_CASE("decode config: defaults and errors naming the key path", "[decode]") {
  lf::test::TempDir dir;
  const std::string good = dir.file("g.yaml", R"(models:
  large: {path: L, dtype: bf16}
  base: {path: S}
  experts: [{name: math, path: E}]
input: p.jsonl
output: o.jsonl
)");
  const auto c = lf::load_generate_config(good);
  CHECK(c.fusion.strategy == "dynamic");
  CHECK(c.fusion.alpha.max == 2.0);
  CHECK(c.models->large.name == "large");
  CHECK(c.generation.chat_template == "plain");
  CHECK(lf::load_generate_config(good, {"fusion.strategy=static", "fusion.static_alpha=0.5"}).fusion.static_alpha == 0.5);
  auto err = [&](const std::string& file, std::vector<std::string> overrides) {
    return lf::test::error_text([&] { lf::load_generate_config(file, overrides); });
  };
  CHECK_THAT(err(good, {"fusion.strategi=static"}), Contains("fusion.strategi"));
  CHECK_THAT(err(good, {"fusion.strategy=best"}), Contains("fusion.strategy"));
  CHECK_THAT(err(good, {"sampling.top_p=1.5"}), Contains("sampling.top_p"));
  CHECK_THAT(err(good, {"generation.batch_size=two"}), Contains("generation.batch_size"));
  CHECK_THAT(err(good, {"fusion.alpha.step=0"}), Contains("fusion.alpha.step"));
  CHECK_THAT(err(good, {"fusion.alpha.max=-1"}), Contains("fusion.alpha.max"));
  const std::string no_base = dir.file("nb.yaml", "models: {large: {path: L}, experts: [{path: E}]}\ninput: p\noutput: o\n");
  CHECK_THAT(err(no_base, {}), Contains("models.base"));
  CHECK(err(no_base, {"fusion.strategy=large_only"}).empty());
  const std::string typo = dir.file("t.yaml", "model: {path: M}\ninput: p\noutput: o\nsampling: {temprature: 1}\n");
  const std::string e = err(typo, {});
  CHECK_THAT(e, Contains("t.yaml:4"));
  CHECK_THAT(e, Contains("sampling.temprature"));
  const std::string both = dir.file("b.yaml", "model: {path: M}\nmodels: {large: {path: L}}\ninput: p\noutput: o\n");
  CHECK_THAT(err(both, {}), Contains("not both"));
  const std::string plain_fusion = dir.file("pf.yaml", "model: {path: M}\nfusion: {strategy: static}\ninput: p\noutput: o\n");
  CHECK_THAT(err(plain_fusion, {}), Contains("fusion"));
  const std::string eval = dir.file("e.yaml", "model: {path: M}\ntasks: [{type: exact_match, data: d.jsonl, extract: regex}]\n");
  CHECK_THAT(lf::test::error_text([&] { lf::load_eval_config(eval); }), Contains("tasks.0.regex"));
  CHECK_THAT(lf::test::error_text([&] { lf::load_eval_config(eval, {"tasks.0.regex=(["}); }), Contains("tasks.0.regex"));
  CHECK(lf::load_eval_config(eval, {"tasks.0.extract=last_number"}).tasks[0].name == "exact_match0");
}


TEST_CASE("dlf: the CPU row kernel against the double reference in float, for any grid and spread", "[decode]") {
  // The row kernel chains exponentials along a uniform grid in segments no longer than its error
  // budget allows; a non-uniform grid takes exact exponentials. Every case is compared with the
  // brute-force reference in double, the float kernel within float tolerance, the double kernel
  // to 1e-9.
  struct Case {
    const char* name;
    std::vector<double> grid;
    double delta_scale;
  };
  const std::vector<Case> cases = {{"uniform, one segment", lf::kernels::alpha_grid(0.0, 2.0, 0.1), 0.5},
                                   {"uniform, several segments", lf::kernels::alpha_grid(0.0, 2.0, 0.1), 8.0},
                                   {"uniform, no chaining", lf::kernels::alpha_grid(0.0, 2.0, 0.5), 60.0},
                                   {"negative step", {1.0, 0.75, 0.5, 0.25, 0.0, -0.25}, 1.0},
                                   {"non-uniform", {0.0, 0.1, 0.3, 0.35, 1.0, 2.5}, 1.0}};
  for (const auto& c : cases) {
    INFO(c.name);
    at::Tensor zl = random_logits(7, 777, 61);
    const at::Tensor zs = random_logits(7, 777, 62);
    std::vector<at::Tensor> ze = {zs + random_logits(7, 777, 63, c.delta_scale), zs + random_logits(7, 777, 64, 0.3)};
    // An entry far below the rest at α = 0 that dominates at the largest α: it underflows at the
    // start of a segment, so the segment length must keep its growth within the budget.
    ze[0].index_put_({0, 5}, ze[0][0][5] + 50.0);
    zl.index_put_({0, 5}, -90.0);
    const auto ref = lf::kernels::dlf_solve_reference(zl, zs, ze, c.grid);
    const auto d = lf::kernels::dlf_solve(zl, zs, ze, c.grid);
    CHECK((d.all_objectives - ref.all_objectives).abs().max().item<double>() < 1e-9 * std::max(1.0, ref.all_objectives.abs().max().item<double>()));
    CHECK(at::equal(d.expert, ref.expert));
    std::vector<at::Tensor> ze_f = {ze[0].to(at::kFloat), ze[1].to(at::kFloat)};
    const auto f = lf::kernels::dlf_solve(zl.to(at::kFloat), zs.to(at::kFloat), ze_f, c.grid);
    lf::kernels::DlfOptions aten;
    aten.backend = lf::kernels::Backend::aten;
    const auto kls = lf::kernels::dlf_solve(zl, zs, ze, c.grid, aten);
    const double scale = std::max(1.0, kls.kl_forward.abs().max().item<double>());
    CHECK((f.kl_forward.to(at::kDouble) - kls.kl_forward).abs().max().item<double>() <= 2e-5 * scale + 1e-5);
    CHECK((f.kl_reverse.to(at::kDouble) - kls.kl_reverse).abs().max().item<double>() <= 2e-5 * scale + 1e-5);
    CHECK((f.small_kl_forward.to(at::kDouble) - kls.small_kl_forward).abs().max().item<double>() <= 1e-5 * scale);
    const double j_scale = std::max(1.0, ref.all_objectives.abs().max().item<double>());
    CHECK((f.all_objectives.to(at::kDouble) - ref.all_objectives).abs().max().item<double>() <= 1e-4 * j_scale);
  }
}

TEST_CASE("dlf: the CPU row kernel gives the same bits on one thread and on several", "[decode]") {
  const auto grid = lf::kernels::alpha_grid(0.0, 2.0, 0.1);
  const at::Tensor zl = random_logits(13, 1000, 71).to(at::kFloat), zs = random_logits(13, 1000, 72).to(at::kFloat);
  std::vector<at::Tensor> ze = {zs + random_logits(13, 1000, 73, 0.7).to(at::kFloat)};
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = lf::kernels::dlf_solve(zl, zs, ze, grid);
  at::set_num_threads(2);
  const auto two = lf::kernels::dlf_solve(zl, zs, ze, grid);
  at::set_num_threads(saved);
  CHECK(at::equal(one.all_objectives, two.all_objectives));
  CHECK(at::equal(one.fused, two.fused));
  CHECK(at::equal(one.expert, two.expert));
}

TEST_CASE("dlf: the vectorisable exponential", "[decode]") {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.001) {
    const float ours = lf::kernels::rows::exp_vectorizable(static_cast<float>(x));
    const double exact = std::exp(static_cast<double>(static_cast<float>(x)));
    worst = std::max(worst, std::abs(ours - exact) / exact);
  }
  CHECK(worst < 4e-7);
  CHECK(lf::kernels::rows::exp_vectorizable(-88.0f) == 0.0f);
  CHECK(lf::kernels::rows::exp_vectorizable(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(lf::kernels::rows::exp_vectorizable(0.0f) == 1.0f);
}
