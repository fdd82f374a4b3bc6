// Span alignment (align/span.h): a projection computed by hand, identical tokenizers giving the
// exact-map KL term for term, finite-difference gradients through different tokenizers, and a
// cached teacher giving what the live one gives.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <map>

#include "align/positions.h"
#include "align/span.h"
#include "align/vocab_map.h"
#include "data/batch.h"
#include "data/sequence.h"
#include "fake_tokenizer.h"
#include "kernels/logit_stats.h"
#include "loss/objective.h"
#include "test_helpers.h"

namespace {

lf::TokenizedSequence tokenize(const lf::Tokenizer& tok, const std::string& prompt, const std::string& response) {
  lf::Example ex{{{"user", prompt}, {"assistant", response}}, 1};
  return lf::tokenize_example(ex, tok, lf::resolve_chat_template("chatml", ""), {1000, 500});
}

std::map<int64_t, double> normalised(const lf::SpanTarget& t) {
  std::map<int64_t, double> out;
  double total = 0;
  for (size_t i = 0; i < t.ids.size(); ++i) {
    out[t.ids[i]] += t.mass[i];
    total += t.mass[i];
  }
  for (auto& [id, p] : out) p /= total;
  return out;
}

}  // namespace

TEST_CASE("span: the teacher's distribution over the student's next token, by hand", "[align][span]") {
  lf::test::ChunkTokenizer pairs(2, "pairs"), triples(3, "triples");
  auto s = tokenize(pairs, "q", "abcdefg");    // ab|cd|ef|g
  auto t = tokenize(triples, "q", "abcdefg");  // abc|def|g
  const int64_t x = pairs.add("x"), zz = pairs.add("zz"), cg = pairs.add("cg");
  const int64_t abx = triples.add("abx"), zzz = triples.add("zzz"), ghi = triples.add("ghi");
  const lf::SpanProjector projector(pairs, triples, lf::build_vocab_map(triples, pairs, "exact"));
  auto pairs_of = lf::span_pairs(s, t);
  // Every label position is paired: ab, cd (inside abc), ef (inside def), g, and the end of turn.
  REQUIRE(pairs_of.size() == 5);
  CHECK(pairs_of[1] == std::make_pair(s.prompt_length, t.prompt_length - 1));      // cd -> abc
  CHECK(pairs_of[2] == std::make_pair(s.prompt_length + 1, t.prompt_length));      // ef -> def
  CHECK(pairs_of[4] == std::make_pair(s.prompt_length + 3, t.prompt_length + 2));  // end of turn

  // Teacher rows from its first label position: predicting abc, def, g, <|im_end|>.
  const int64_t abc = t.ids[t.prompt_length], def = t.ids[t.prompt_length + 1];
  std::vector<double> probs = {0.5, 0.2, 0.3, 0.6, 0.4, 0.0};
  std::vector<int64_t> ids = {abc, abx, zzz, def, ghi, 0};
  const lf::TeacherRows rows{probs.data(), ids.data(), 2, 3};
  // Student "ab" (at the response start): abc -> ab (the actual token), abx -> ab (its first
  // piece), zzz -> zz.
  auto first = normalised(projector.project(s, t, pairs_of[0].first, pairs_of[0].second, rows));
  const int64_t ab = s.ids[s.prompt_length], cd = s.ids[s.prompt_length + 1];
  REQUIRE(first.size() == 2);
  CHECK(first[ab] == Approx(0.7));
  CHECK(first[zz] == Approx(0.3));
  // Student "cd" starts inside "abc" with "ab" written: zzz is inconsistent; abx continues with
  // "x" (0.2 of 0.7); abc (0.5 of 0.7) reaches "def": "cdef" starts with cd (0.6), "cghi" with cg (0.4).
  auto second = normalised(projector.project(s, t, pairs_of[1].first, pairs_of[1].second, rows));
  REQUIRE(second.size() == 3);
  CHECK(second[x] == Approx(0.2 / 0.7));
  CHECK(second[cd] == Approx(0.5 / 0.7 * 0.6));
  CHECK(second[cg] == Approx(0.5 / 0.7 * 0.4));
}

namespace {

// A toy student and teacher over fake tokenizers: hidden states from embeddings, logits from a
// projection. Returns the objective's parts and the student head's gradient.
struct Toy {
  lf::test::ChunkTokenizer& student_tok;
  lf::test::ChunkTokenizer& teacher_tok;
  std::vector<lf::TokenizedSequence> student_seqs, teacher_seqs;
  lf::ModelBatch sb, tb;
  at::Tensor embed, head, t_embed, t_head;
  int64_t V = 0, Vt = 0;

  Toy(lf::test::ChunkTokenizer& s, lf::test::ChunkTokenizer& t, const std::vector<std::string>& responses) : student_tok(s), teacher_tok(t) {
    for (const auto& r : responses) {
      student_seqs.push_back(tokenize(s, "q", r));
      teacher_seqs.push_back(tokenize(t, "q", r));
    }
    std::vector<const lf::TokenizedSequence*> a, b;
    for (size_t i = 0; i < responses.size(); ++i) {
      a.push_back(&student_seqs[i]);
      b.push_back(&teacher_seqs[i]);
    }
    sb = lf::collate(a, 2);
    tb = lf::collate(b, 2);
  }
  void init(uint64_t seed) {
    V = student_tok.vocab_size();
    Vt = teacher_tok.vocab_size();
    auto generator = at::detail::createCPUGenerator(seed);
    embed = at::randn({V, 5}, generator, at::kDouble);
    head = at::randn({V, 5}, generator, at::kDouble);
    t_embed = at::randn({Vt, 5}, generator, at::kDouble);
    t_head = at::randn({Vt, 5}, generator, at::kDouble) * 2;
  }
  std::vector<lf::PositionPairs> pairs(const std::string& method) const {
    std::vector<lf::PositionPairs> out;
    for (size_t i = 0; i < student_seqs.size(); ++i)
      out.push_back(lf::align_positions(student_seqs[i], teacher_seqs[i], method, student_tok, teacher_tok));
    return out;
  }
  std::pair<lf::loss::LossParts, at::Tensor> run(const lf::loss::ObjectiveConfig& config, const std::vector<lf::PositionPairs>& p,
                                                 const lf::VocabMap* map, const lf::SpanProjector* span,
                                                 std::shared_ptr<lf::loss::PrecomputedTeacherRows> cached = nullptr,
                                                 at::Tensor head_value = at::Tensor()) const {
    at::Tensor h = (head_value.defined() ? head_value : head).clone().requires_grad_(true);
    at::Tensor e = embed.clone().requires_grad_(true);
    lf::loss::StudentSide student{at::embedding(e, sb.input_ids), [&](const at::Tensor& x) { return at::linear(x, h); }, &sb,
                                  nullptr};
    lf::loss::TeacherSide teacher{cached ? at::Tensor() : at::embedding(t_embed, tb.input_ids),
                                  [&](const at::Tensor& x) { return at::linear(x, t_head); }, &tb, p, map, span, 1.0, cached};
    auto parts = lf::loss::backward_fusion_loss(student, {teacher}, config,
                                                {double(sb.label_tokens), double(student_seqs.size())});
    return {parts, h.grad()};
  }
  // What a logits cache would hold for this teacher: top-k at its label rows.
  std::shared_ptr<lf::loss::PrecomputedTeacherRows> cache(int64_t k) const {
    auto out = std::make_shared<lf::loss::PrecomputedTeacherRows>();
    at::Tensor hidden = at::embedding(t_embed, tb.input_ids);
    for (size_t b = 0; b < teacher_seqs.size(); ++b) {
      const auto& seq = teacher_seqs[b];
      at::Tensor logits = at::linear(hidden[b].narrow(0, seq.first_label_position(), seq.label_count()), t_head);
      auto top = lf::kernels::softmax_topk(logits, k, 1.0);
      out->graph_probs.push_back(top.probs);
      out->graph_ids.push_back(top.ids);
      out->token_probs.push_back(top.probs.to(at::kFloat));
      out->token_ids.push_back(top.ids);
      out->ce.push_back(1.0);
    }
    return out;
  }
};

lf::loss::ObjectiveConfig kl_config(const std::string& type, std::optional<int64_t> top_k) {
  lf::loss::ObjectiveConfig c;
  c.graph = false;
  c.token.type = lf::loss::parse_token_loss(type);
  c.token.top_k = top_k;
  c.chunk_rows = 7;
  c.graph_top_k = 4;  // what the cached rows below carry for the graph term (off)
  return c;
}

}  // namespace

TEST_CASE("span: identical tokenizers give the exact-map KL term for term", "[align][span]") {
  lf::test::ChunkTokenizer tok(2, "pairs");
  Toy toy(tok, tok, {"abcdefg", "the cat sat", "abab"});
  for (char ch = 'a'; ch <= 'z'; ++ch) tok.add(std::string(1, ch));
  toy.init(5);
  const lf::VocabMap exact = lf::build_vocab_map(tok, tok, "exact");
  const lf::SpanProjector projector(tok, tok, exact);
  CHECK(toy.pairs("span") == toy.pairs("exact"));
  for (const char* type : {"kl", "rkl", "jsd"})
    for (std::optional<int64_t> k : {std::optional<int64_t>(), std::optional<int64_t>(4)}) {
      INFO(type << " top_k " << (k ? *k : -1));
      auto [plain, g_plain] = toy.run(kl_config(type, k), toy.pairs("exact"), &exact, nullptr);
      auto [span, g_span] = toy.run(kl_config(type, k), toy.pairs("span"), &exact, &projector);
      CHECK(plain.token > 0);
      // The same terms; the teacher's logits are computed in other batches of rows, so equal to
      // double rounding rather than bit for bit.
      CHECK(span.token == Approx(plain.token).epsilon(1e-12));
      CHECK(span.total == Approx(plain.total).epsilon(1e-12));
      CHECK(at::allclose(g_span, g_plain, 1e-11, 1e-14));
    }
}

TEST_CASE("span: gradients through different tokenizers match finite differences; a cache gives what the live teacher gives",
          "[align][span]") {
  lf::test::ChunkTokenizer bytes(1, "bytes"), pairs(2, "pairs");
  for (char ch = 'a'; ch <= 'z'; ++ch) bytes.add(std::string(1, ch));
  bytes.add(" ");
  Toy toy(bytes, pairs, {"abcdefg", "the cat sat", "ab"});
  toy.init(9);
  const lf::SpanProjector projector(bytes, pairs, lf::build_vocab_map(pairs, bytes, "exact"));
  const auto span_pairs = toy.pairs("span");
  const auto exact_pairs = toy.pairs("exact");
  int64_t span_count = 0, exact_count = 0;
  for (size_t b = 0; b < span_pairs.size(); ++b) {
    span_count += static_cast<int64_t>(span_pairs[b].size());
    exact_count += static_cast<int64_t>(exact_pairs[b].size());
  }
  // Every byte of the student is a label position with a span pair; exact keeps only the bytes
  // that are whole teacher tokens (the odd-length tails and the end of turn).
  CHECK(span_count == toy.sb.label_tokens - static_cast<int64_t>(span_pairs.size()));
  CHECK(exact_count < span_count);
  for (const char* type : {"kl", "jsd"}) {
    const auto config = kl_config(type, 6);
    auto [parts, grad] = toy.run(config, span_pairs, nullptr, &projector);
    CHECK(parts.token > 0);
    for (int64_t i : {0, 11, 40, 77}) {
      const double eps = 1e-6;
      at::Tensor up = toy.head.clone(), down = toy.head.clone();
      up.view(-1)[i] += eps;
      down.view(-1)[i] -= eps;
      const double numeric = (toy.run(config, span_pairs, nullptr, &projector, nullptr, up).first.total -
                              toy.run(config, span_pairs, nullptr, &projector, nullptr, down).first.total) /
                             (2 * eps);
      INFO(type << " entry " << i);
      CHECK(numeric == Approx(grad.view(-1)[i].item<double>()).margin(1e-7));
    }
    // The cache's float top-k rows against the live teacher's: the same targets up to float rounding.
    auto [cached, cached_grad] = toy.run(config, span_pairs, nullptr, &projector, toy.cache(6));
    CHECK(cached.token == Approx(parts.token).epsilon(1e-6));
    CHECK(at::allclose(cached_grad, grad, 1e-5, 1e-7));
  }
}
