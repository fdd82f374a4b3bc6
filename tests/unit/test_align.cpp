#include <catch2/catch.hpp>

#include "align/positions.h"
#include "align/vocab_map.h"
#include "data/sequence.h"
#include "fake_tokenizer.h"
#include "test_helpers.h"

namespace {

lf::TokenizedSequence tokenize(const lf::Tokenizer& tok, const std::string& prompt, const std::string& response) {
  lf::Example ex{{{"user", prompt}, {"assistant", response}}, 1};
  return lf::tokenize_example(ex, tok, lf::resolve_chat_template("chatml", ""), {1000, 500});
}

}  // namespace

TEST_CASE("align: offsets pair positions at common token boundaries", "[align]") {
  lf::test::ChunkTokenizer bytes(1, "bytes"), pairs(2, "pairs"), triples(3, "triples");
  const std::string response = "abcdefg";
  auto s = tokenize(pairs, "q", response);    // ab|cd|ef|g  boundaries 2 4 6 7
  auto t = tokenize(triples, "q", response);  // abc|def|g   boundaries 3 6 7
  auto aligned = lf::align_positions(s, t, "offsets", pairs, triples);
  // Common boundaries: 0 (response start), 6 and 7 (content end, followed by <|im_end|>).
  REQUIRE(aligned.size() == 3);
  CHECK(aligned[0] == std::make_pair(s.prompt_length - 1, t.prompt_length - 1));
  CHECK(aligned[1] == std::make_pair(s.prompt_length + 2, t.prompt_length + 1));  // after "ef" / after "def"
  CHECK(aligned[2] == std::make_pair(s.prompt_length + 3, t.prompt_length + 2));  // after "g": predicts <|im_end|>
  // Against single bytes every boundary of the coarser tokenizer is common; pairs are monotone.
  auto b = tokenize(bytes, "q", response);
  auto fine = lf::align_positions(t, b, "offsets", triples, bytes);
  CHECK(fine.size() == 4);
  for (size_t i = 1; i < fine.size(); ++i) {
    CHECK(fine[i].first > fine[i - 1].first);
    CHECK(fine[i].second > fine[i - 1].second);
  }
  // Identical tokenizers align every label position but the last (its next token is past the end).
  auto self = lf::align_positions(s, s, "offsets", pairs, pairs);
  CHECK(static_cast<int64_t>(self.size()) == s.content_tokens + 1);
  // exact keeps the pairs whose next tokens are the same text: not 0 ("ab" vs "abc"), but 6 ("g")
  // and 7 (end of turn); with identical tokenizers it keeps everything.
  auto exact = lf::align_positions(s, t, "exact", pairs, triples);
  REQUIRE(exact.size() == 2);
  CHECK(exact[0] == aligned[1]);
  CHECK(exact[1] == aligned[2]);
  CHECK(lf::align_positions(s, s, "exact", pairs, pairs) == self);
}

TEST_CASE("align: index and dtw alignments are monotone label positions", "[align]") {
  lf::test::ChunkTokenizer pairs(2, "pairs"), triples(3, "triples");
  auto s = tokenize(pairs, "question", "the answer is 42");
  auto t = tokenize(triples, "question", "the answer is 42");
  for (const char* method : {"index", "dtw"}) {
    auto aligned = lf::align_positions(s, t, method, pairs, triples);
    REQUIRE_FALSE(aligned.empty());
    for (size_t i = 0; i < aligned.size(); ++i) {
      CHECK(aligned[i].first >= s.first_label_position());
      CHECK(aligned[i].first < s.length() - 1);
      CHECK(aligned[i].second >= t.first_label_position());
      CHECK(aligned[i].second < t.length() - 1);
      if (i) CHECK(aligned[i].first > aligned[i - 1].first);
      if (i) CHECK(aligned[i].second > aligned[i - 1].second);
    }
  }
  auto index = lf::align_positions(s, t, "index", pairs, triples);
  CHECK(static_cast<int64_t>(index.size()) == std::min(s.label_count(), t.label_count()));
}

TEST_CASE("align: exact and mined vocabulary maps and their cache", "[align]") {
  lf::test::ChunkTokenizer student(2, "student"), teacher(3, "teacher");
  for (const char* s : {"ab", "c", " x", "de"}) student.add(s);
  for (const char* s : {"ab", "abc", "x", "zzz", "de"}) teacher.add(s);
  auto exact = lf::build_vocab_map(teacher, student, "exact");
  CHECK(exact.to_student[*teacher.token_to_id("ab")] == *student.token_to_id("ab"));
  CHECK(exact.to_student[*teacher.token_to_id("abc")] == -1);
  CHECK(exact.to_student[1] == 1);  // EOS to EOS
  CHECK(exact.to_student[3] == 3);  // <|im_end|> by text
  auto mined = lf::build_vocab_map(teacher, student, "mined");
  CHECK(mined.to_student[*teacher.token_to_id("abc")] == *student.token_to_id("ab"));  // longest prefix
  CHECK(mined.to_student[*teacher.token_to_id("x")] == *student.token_to_id(" x"));    // leading space
  CHECK(mined.to_student[*teacher.token_to_id("zzz")] == -1);
  CHECK(mined.mined == 2);

  lf::test::TempDir dir;
  const auto tf = dir.file("teacher.json", "teacher tokenizer file"), sf = dir.file("student.json", "student file");
  struct Sourced : lf::test::ChunkTokenizer {
    Sourced(size_t w, std::string src) : ChunkTokenizer(w) { source_ = std::move(src); }
  };
  Sourced t2(3, tf), s2(2, sf);
  for (const char* s : {"ab", "c"}) s2.add(s);
  for (const char* s : {"ab", "abc"}) t2.add(s);
  auto first = lf::load_or_build_vocab_map(t2, s2, "mined", dir / "cache");
  auto second = lf::load_or_build_vocab_map(t2, s2, "mined", dir / "cache");
  CHECK(first.to_student == second.to_student);
  CHECK(std::distance(std::filesystem::directory_iterator(dir / "cache"), std::filesystem::directory_iterator()) == 1);
}

#include <sentencepiece_trainer.h>

#include <fstream>

TEST_CASE("align: real SentencePiece unigram and BPE tokenizers of the same text", "[align]") {
  lf::test::TempDir dir;
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i)
      corpus << "The quick brown fox number " << i << " jumps over " << (i * 7) % 101 << " lazy dogs, twice.\n";
  }
  for (const char* type : {"unigram", "bpe"}) {
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + (dir / "corpus.txt") + " --model_prefix=" + (dir / type) + " --model_type=" + type +
        " --vocab_size=" + (std::string(type) == "bpe" ? "330" : "400") +
        " --byte_fallback=true --hard_vocab_limit=false --minloglevel=2");
    INFO(status.ToString());
    REQUIRE(status.ok());
  }
  auto student = lf::load_tokenizer(dir / "unigram.model");
  auto teacher = lf::load_tokenizer(dir / "bpe.model");
  const std::string response = "The lazy fox jumps over 42 brown dogs, twice.";
  auto s = tokenize(*student, "question", response);
  auto t = tokenize(*teacher, "question", response);
  REQUIRE(s.content_tokens != t.content_tokens);  // genuinely different tokenizations

  auto pairs = lf::align_positions(s, t, "offsets", *student, *teacher);
  REQUIRE(pairs.size() >= 3);
  // The first pair predicts the start of the response; the last content boundary (the whole
  // response text) is common to both, so every response character lies in an aligned span.
  CHECK(pairs.front() == std::make_pair(s.prompt_length - 1, t.prompt_length - 1));
  CHECK(pairs.back() == std::make_pair(s.prompt_length + s.content_tokens - 1, t.prompt_length + t.content_tokens - 1));
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (i) CHECK(pairs[i].first > pairs[i - 1].first);
    if (i) CHECK(pairs[i].second > pairs[i - 1].second);
    // Both sides of a pair sit right after the same byte of the response.
    const int64_t js = pairs[i].first - s.prompt_length, jt = pairs[i].second - t.prompt_length;
    const int64_t end_s = js < 0 ? 0 : s.content_offsets[js].second, end_t = jt < 0 ? 0 : t.content_offsets[jt].second;
    CHECK(end_s == end_t);
  }
  // Word boundaries are shared by both (SentencePiece splits on whitespace): every space is aligned.
  int64_t spaces = 0;
  for (char c : response) spaces += c == ' ';
  CHECK(static_cast<int64_t>(pairs.size()) >= spaces + 1);

  // exact maps identical pieces: "▁The" in one is " The" bytes in both if both have it.
  auto map = lf::build_vocab_map(*teacher, *student, "exact");
  int64_t checked = 0;
  for (int64_t id = 0; id < teacher->vocab_size(); ++id) {
    if (map.to_student[id] < 0 || teacher->is_special(id)) continue;
    CHECK(student->id_to_bytes(map.to_student[id]) == teacher->id_to_bytes(id));
    ++checked;
  }
  CHECK(checked > 20);
  CHECK(map.to_student[*teacher->special_tokens().eos] == *student->special_tokens().eos);
}
