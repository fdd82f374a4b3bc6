#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include "core/error.h"
#include "test_helpers.h"
#include "tokenizer/text_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_normalize.h"

using Catch::Matchers::Contains;
using lf::Encoding;
using lf::InputError;
using nlohmann::json;

namespace {

using Offsets = std::vector<std::pair<int64_t, int64_t>>;

// A tokenizer.json with a tiny BPE model; `patch` overrides top-level keys.
json bpe_spec(const json& vocab, const json& merges, const json& patch = json::object()) {
  json spec = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", json::array()},
               {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr}, {"decoder", nullptr},
               {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                          {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                          {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
  for (const auto& [key, value] : patch.items()) spec[key] = value;
  return spec;
}

// Byte-level vocabulary: the 256 byte chars plus `extra` tokens, merges given by the caller.
json byte_level_vocab(const std::vector<std::string>& extra) {
  json vocab = json::object();
  const auto& map = lf::tok::byte_level_map();
  for (int b = 0; b < 256; ++b) vocab[map.byte_to_utf8[b]] = b;
  for (const auto& token : extra) vocab[token] = static_cast<int>(vocab.size());
  return vocab;
}

json byte_level_spec(const std::vector<std::string>& extra, const json& merges, bool add_prefix_space = false) {
  return bpe_spec(byte_level_vocab(extra), merges,
                  {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space},
                                      {"trim_offsets", true}, {"use_regex", true}}},
                   {"decoder", {{"type", "ByteLevel"}}}});
}

std::unique_ptr<lf::Tokenizer> load(const lf::test::TempDir& dir, const json& spec) {
  return lf::load_tokenizer(dir.file("tokenizer.json", spec.dump()));
}

std::vector<std::string> tokens_of(const lf::Tokenizer& tok, const Encoding& enc) {
  std::vector<std::string> out;
  for (int64_t id : enc.ids) out.push_back(tok.id_to_token(id));
  return out;
}

std::string load_error(const lf::test::TempDir& dir, const json& spec) {
  try {
    load(dir, spec);
  } catch (const InputError& e) {
    return e.one_line();
  }
  FAIL("expected an InputError");
  return {};
}

}  // namespace

TEST_CASE("tokenizer: BPE applies merges by rank and leftmost first", "[tokenizer]") {
  lf::test::TempDir dir;
  const json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}};
  // "b c" outranks "a b": "abc" becomes a + bc, and "ab c" never applies.
  auto tok = load(dir, bpe_spec(vocab, {"b c", "a b", "ab c", "a a"}));
  CHECK(tokens_of(*tok, tok->encode("abc")) == std::vector<std::string>{"a", "bc"});
  // Equal ranks: the leftmost pair merges first ("aaa" -> aa + a).
  CHECK(tokens_of(*tok, tok->encode("aaa")) == std::vector<std::string>{"aa", "a"});
  auto ranked = load(dir, bpe_spec(vocab, json::array({json::array({"a", "b"}), json::array({"ab", "c"})})));
  CHECK(tokens_of(*ranked, ranked->encode("abc")) == std::vector<std::string>{"abc"});
  CHECK(ranked->encode("abc").offsets == Offsets{{0, 3}});
}

TEST_CASE("tokenizer: unknown chars become unk and fuse_unk joins them", "[tokenizer]") {
  lf::test::TempDir dir;
  const json vocab = {{"<unk>", 0}, {"a", 1}};
  json spec = bpe_spec(vocab, json::array());
  spec["model"]["unk_token"] = "<unk>";
  auto plain = load(dir, spec);
  CHECK(plain->encode("axya").ids == std::vector<int64_t>{1, 0, 0, 1});
  spec["model"]["fuse_unk"] = true;
  auto fused = load(dir, spec);
  const Encoding enc = fused->encode("axéa");
  CHECK(enc.ids == std::vector<int64_t>{1, 0, 1});
  CHECK(enc.offsets == Offsets{{0, 1}, {1, 4}, {4, 5}});
}

TEST_CASE("tokenizer: byte-level offsets cover whole chars and id_to_bytes undoes the byte map", "[tokenizer]") {
  lf::test::TempDir dir;
  auto tok = load(dir, byte_level_spec({"Ġh", "Ġhi"}, {"Ġ h", "Ġh i"}));
  const Encoding enc = tok->encode("é hi");
  // 'é' is two byte tokens, each with the char's offsets; " hi" is one token.
  REQUIRE(enc.ids.size() == 3);
  CHECK(enc.offsets == Offsets{{0, 2}, {0, 2}, {2, 5}});
  CHECK(tok->id_to_token(enc.ids[2]) == "Ġhi");
  CHECK(tok->id_to_bytes(enc.ids[2]) == " hi");
  CHECK(tok->id_to_bytes(enc.ids[0]) + tok->id_to_bytes(enc.ids[1]) == "é");
  CHECK(tok->decode(enc.ids) == "é hi");
  // A lone byte of a multi-byte char decodes to U+FFFD, as from_utf8_lossy does.
  CHECK(tok->decode({enc.ids[0]}) == "\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: add_prefix_space aligns the added space to the first char", "[tokenizer]") {
  lf::test::TempDir dir;
  auto tok = load(dir, byte_level_spec({"Ġh", "Ġhi"}, {"Ġ h", "Ġh i"}, true));
  const Encoding enc = tok->encode("hi");
  CHECK(tokens_of(*tok, enc) == std::vector<std::string>{"Ġhi"});
  CHECK(enc.offsets == Offsets{{0, 2}});
}

TEST_CASE("tokenizer: added tokens split the text and honour lstrip and rstrip and single_word", "[tokenizer]") {
  lf::test::TempDir dir;
  json spec = byte_level_spec({}, json::array());
  spec["added_tokens"] = {
      {{"id", 300}, {"content", "<|eot|>"}, {"special", true}, {"normalized", false}, {"lstrip", true}, {"rstrip", true},
       {"single_word", false}},
      {{"id", 301}, {"content", "cat"}, {"special", false}, {"normalized", false}, {"lstrip", false},
       {"rstrip", false}, {"single_word", true}}};
  auto tok = load(dir, spec);
  CHECK(tok->vocab_size() == 302);
  const Encoding enc = tok->encode("a  <|eot|>  b");
  REQUIRE(enc.ids.size() == 3);
  CHECK(enc.ids[1] == 300);
  CHECK(enc.offsets[1] == std::pair<int64_t, int64_t>{1, 12});  // both space runs taken by the token
  CHECK(tok->is_special(300));
  CHECK_FALSE(tok->is_special(301));
  CHECK(tok->id_to_bytes(300) == "<|eot|>");
  CHECK(tok->decode(enc.ids, true) == "ab");
  // single_word: "cat" alone is the added token, inside "concat" it is not.
  CHECK(tok->encode("a cat").ids.back() == 301);
  const auto inside = tok->encode("concat").ids;
  CHECK(std::find(inside.begin(), inside.end(), 301) == inside.end());
}

TEST_CASE("tokenizer: SentencePiece-style BPE with byte fallback and Prepend/Replace normalizers", "[tokenizer]") {
  lf::test::TempDir dir;
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"▁", 2}, {"h", 3}, {"i", 4}, {"▁h", 5}, {"▁hi", 6}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 7 + b;
  }
  json spec = bpe_spec(vocab, {"▁ h", "▁h i"},
                       {{"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "▁"}},
                                                                              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
                        {"post_processor", {{"type", "TemplateProcessing"},
                                            {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                                            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
                        {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                                                                         {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                                         {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}}});
  spec["model"]["byte_fallback"] = true;
  spec["model"]["unk_token"] = "<unk>";
  spec["added_tokens"] = {{{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}}};
  auto tok = load(dir, spec);
  const Encoding enc = tok->encode("hi 中");
  // "▁hi", "▁", then the three bytes of 中 each carrying the char's offsets.
  CHECK(tokens_of(*tok, enc) == std::vector<std::string>{"▁hi", "▁", "<0xE4>", "<0xB8>", "<0xAD>"});
  CHECK(enc.offsets == Offsets{{0, 2}, {2, 3}, {3, 6}, {3, 6}, {3, 6}});
  CHECK(tok->decode(enc.ids) == "hi 中");
  CHECK(tok->id_to_bytes(enc.ids[0]) == " hi");
  CHECK(tok->id_to_bytes(enc.ids[2]) == "\xE4");
  const Encoding with_bos = tok->encode("hi", true);
  CHECK(with_bos.ids == std::vector<int64_t>{1, 6});
  CHECK(with_bos.offsets == Offsets{{0, 0}, {0, 2}});
  // An incomplete byte sequence decodes to one U+FFFD per byte.
  CHECK(tok->decode({7 + 0xE4, 7 + 0xB8}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: special tokens come from tokenizer_config.json", "[tokenizer]") {
  lf::test::TempDir dir;
  json spec = byte_level_spec({}, json::array());
  spec["added_tokens"] = {{{"id", 256}, {"content", "<bos>"}, {"special", true}, {"normalized", false}},
                          {{"id", 257}, {"content", "<eos>"}, {"special", true}, {"normalized", false}}};
  dir.file("tokenizer_config.json", R"({"bos_token": "<bos>", "eos_token": {"content": "<eos>", "lstrip": false}, "pad_token": null})");
  auto tok = load(dir, spec);
  CHECK(tok->special_tokens().bos == 256);
  CHECK(tok->special_tokens().eos_text == "<eos>");
  CHECK(tok->special_tokens().eos == 257);
  CHECK_FALSE(tok->special_tokens().pad.has_value());
  CHECK(tok->kind() == "tokenizer.json");
  CHECK(tok->token_to_id("<eos>") == 257);
  CHECK_FALSE(tok->token_to_id("nope").has_value());
}

TEST_CASE("tokenizer: unsupported components and malformed files are input errors naming them", "[tokenizer]") {
  lf::test::TempDir dir;
  const json base = byte_level_spec({}, json::array());
  json lowercase = base;
  lowercase["normalizer"] = {{"type", "Lowercase"}};
  CHECK_THAT(load_error(dir, lowercase), Contains("normalizer Lowercase") && Contains("tokenizer.json"));
  json wordpiece = base;
  wordpiece["model"]["type"] = "WordPiece";
  CHECK_THAT(load_error(dir, wordpiece), Contains("WordPiece"));
  json dropout = base;
  dropout["model"]["dropout"] = 0.1;
  CHECK_THAT(load_error(dir, dropout), Contains("dropout"));
  json missing_merge = bpe_spec({{"a", 0}}, {"a b"});
  CHECK_THAT(load_error(dir, missing_merge), Contains("a b"));
  CHECK_THROWS_AS(lf::load_tokenizer(dir.file("tokenizer.json", "{\"model\": ")), InputError);
  auto tok = load(dir, base);
  CHECK_THROWS_AS(tok->encode("bad \xC3\x28 utf8"), InputError);
  CHECK_THROWS_AS(tok->id_to_token(100000), InputError);
}

TEST_CASE("tokenizer: utf8_lossy replaces maximal invalid subparts", "[tokenizer]") {
  using lf::tok::utf8_lossy;
  CHECK(utf8_lossy("ok") == "ok");
  CHECK(utf8_lossy("\xE4\xB8") == "\xEF\xBF\xBD");          // truncated 3-byte sequence: one replacement
  CHECK(utf8_lossy("\xFF" "a") == "\xEF\xBF\xBD" "a");
  CHECK(utf8_lossy("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate: byte by byte
}

TEST_CASE("tokenizer: SentencePiece models split on control symbols and keep byte offsets", "[tokenizer]") {
  lf::test::TempDir dir;
  std::string corpus;
  for (int i = 0; i < 50; ++i) corpus += "hello world, the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
  const auto input = dir.file("corpus.txt", corpus);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + input + " --model_prefix=" + (dir / "sp") +
      " --vocab_size=320 --model_type=bpe --byte_fallback=true --hard_vocab_limit=false --minloglevel=2");
  INFO(status.ToString());
  REQUIRE(status.ok());
  auto tok = lf::load_tokenizer(dir / "sp.model");
  CHECK(tok->kind() == "sentencepiece");
  REQUIRE(tok->special_tokens().bos.has_value());
  const int64_t bos = *tok->special_tokens().bos;
  const std::string text = "hello<s>world é";
  const Encoding enc = tok->encode(text);
  auto it = std::find(enc.ids.begin(), enc.ids.end(), bos);
  REQUIRE(it != enc.ids.end());
  CHECK(enc.offsets[it - enc.ids.begin()] == std::pair<int64_t, int64_t>{5, 8});
  CHECK(tok->is_special(bos));
  CHECK(tok->decode(enc.ids, true) == "helloworld é");
  std::string bytes;
  for (int64_t id : tok->encode("hello world é").ids) bytes += tok->id_to_bytes(id);
  CHECK(bytes == " hello world é");
  CHECK(tok->encode("hi", true).ids.front() == bos);
}

TEST_CASE("tokenizer: Unicode normal forms keep the alignment tokenizers gives", "[tokenizer]") {
  using lf::tok::NormalForm;
  using lf::tok::Piece;
  using lf::tok::Span;
  auto normalize = [](const std::string& text, NormalForm form) {
    Piece p = lf::tok::make_piece(text, 0, text.size());
    lf::tok::unicode_normalize(p, form);
    return p;
  };
  // e + combining acute composes to U+00E9, aligned to the "e" alone; the next char keeps its own range.
  Piece p = normalize("e\xCC\x81x", NormalForm::kNFC);
  CHECK(p.text == "\xC3\xA9x");
  CHECK(p.align == std::vector<Span>{{0, 1}, {0, 1}, {3, 4}});
  // NFD: U+00E9 becomes e + U+0301, both pieces aligned to the whole precomposed char.
  p = normalize("a\xC3\xA9", NormalForm::kNFD);
  CHECK(p.text == "ae\xCC\x81");
  CHECK(p.align == std::vector<Span>{{0, 1}, {1, 3}, {1, 3}, {1, 3}});
  // NFKC: the ligature U+FB01 becomes "fi", full-width digits ASCII, superscript two a plain 2.
  p = normalize("\xEF\xAC\x81\xEF\xBC\x91\xC2\xB2", NormalForm::kNFKC);
  CHECK(p.text == "fi12");
  CHECK(p.align == std::vector<Span>{{0, 3}, {0, 3}, {3, 6}, {6, 8}});
  // Hangul: a syllable splits into jamo under NFD, and jamo compose back under NFC.
  p = normalize("\xEA\xB0\x81", NormalForm::kNFD);  // U+AC01
  CHECK(p.text == "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8");
  CHECK(p.align == std::vector<Span>(9, Span{0, 3}));
  p = normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", NormalForm::kNFC);
  CHECK(p.text == "\xEA\xB0\x81");
  CHECK(p.align == std::vector<Span>(3, Span{0, 3}));
  // Canonical reordering: alignment is positional, as in tokenizers (U+0316 below sorts before U+0301 above).
  p = normalize("x\xCC\x81\xCC\x96", NormalForm::kNFD);
  CHECK(p.text == "x\xCC\x96\xCC\x81");
  CHECK(p.align == std::vector<Span>{{0, 1}, {1, 3}, {1, 3}, {3, 5}, {3, 5}});
  // ASCII is untouched in every form.
  for (auto form : {NormalForm::kNFC, NormalForm::kNFD, NormalForm::kNFKC, NormalForm::kNFKD})
    CHECK(normalize("plain text", form).text == "plain text");
}

TEST_CASE("tokenizer: an NFC tokenizer.json gives ids and offsets of the original text", "[tokenizer]") {
  lf::test::TempDir dir;
  // U+00E9 is one byte-level token; NFC maps "e" + U+0301 onto it.
  json spec = byte_level_spec({"\xC3\x83\xC2\xA9"}, json::array({"\xC3\x83 \xC2\xA9"}));
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
  auto tok = load(dir, spec);
  const Encoding enc = tok->encode("caf" "e\xCC\x81!");
  CHECK(tokens_of(*tok, enc) == std::vector<std::string>{"c", "a", "f", "\xC3\x83\xC2\xA9", "!"});
  CHECK(enc.offsets == Offsets{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {6, 7}});
  spec["normalizer"] = {{"type", "NFKD"}};
  auto nfkd = load(dir, spec);
  CHECK(nfkd->decode(nfkd->encode("\xEF\xAC\x81").ids) == "fi");
}
