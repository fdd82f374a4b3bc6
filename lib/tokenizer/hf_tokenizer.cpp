// Hugging Face tokenizer.json back end: added tokens, normalizers, pre-tokenizers, the BPE model and the
// post-processor, in the order and with the offset bookkeeping of the `tokenizers` library.
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hf_pipeline.h"
#include "tokenizer/text_util.h"
#include "tokenizer/tokenizer_base.h"

namespace lf {
namespace tok {
namespace {

using nlohmann::json;

class HfTokenizer final : public TokenizerBase {
 public:
  std::unique_ptr<Bpe> bpe;
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<DecoderStep> decoders;
  PostProcessor post;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized=false: matched in the input text
  AddedTokenMatcher normalized_matcher;  // normalized=true: matched in the normalized text
  std::vector<std::string> tokens;       // id -> token text
  std::vector<uint8_t> added, special;   // per id
  std::unordered_map<std::string, int64_t> added_ids;
  bool byte_level = false;                     // tokens are GPT-2 byte-level strings
  std::string metaspace = "\xE2\x96\x81";      // what stands for a space in SentencePiece-style vocabularies

  Encoding encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text, source_);
    Encoding enc;
    thread_local std::vector<TextPart> parts, sub_parts;
    thread_local std::vector<Piece> words;
    thread_local std::vector<WordToken> word_tokens;
    if (raw_matcher.empty()) parts.assign(1, TextPart{0, text.size(), -1});
    else raw_matcher.split(text, parts);
    const std::vector<TextPart> raw_parts = parts;  // sub-splitting below reuses the thread-local buffers
    for (const TextPart& part : raw_parts) {
      if (part.id >= 0) {
        enc.ids.push_back(part.id);
        enc.offsets.emplace_back(part.b, part.e);
        continue;
      }
      if (part.e == part.b) continue;
      Piece segment = make_piece(text, part.b, part.e);
      apply_normalizers(normalizers, segment);
      if (segment.empty()) continue;
      if (normalized_matcher.empty()) sub_parts.assign(1, TextPart{0, segment.text.size(), -1});
      else normalized_matcher.split(segment.text, sub_parts);
      for (const TextPart& sub : sub_parts) {
        if (sub.id >= 0) {
          const Span span = segment.original(sub.b, sub.e);
          enc.ids.push_back(sub.id);
          enc.offsets.emplace_back(span.first, span.second);
          continue;
        }
        words.clear();
        apply_pre_tokenizers(pre_tokenizers, sub_parts.size() == 1 ? std::move(segment) : segment.slice(sub.b, sub.e),
                             words);
        for (const Piece& word : words) {
          word_tokens.clear();
          try {
            bpe->tokenize(word.text, word_tokens);
          } catch (const std::invalid_argument& e) {
            // An unk_token missing from the vocabulary: tokenizers loads such a file too and fails
            // only on text that needs the unknown token, so the error comes here, naming the file.
            throw InputError(source_ + ": " + e.what(), "add the token to model.vocab or remove model.unk_token");
          }
          size_t at = 0;
          for (const WordToken& t : word_tokens) {
            const Span span = word.original(at, at + t.len);
            enc.ids.push_back(t.id);
            enc.offsets.emplace_back(span.first, span.second);
            at += t.len;
          }
        }
      }
    }
    if (post.trim_offsets) {
      std::vector<std::string> texts;
      texts.reserve(enc.ids.size());
      for (int64_t id : enc.ids) texts.push_back(tokens[id]);
      trim_byte_level_offsets(texts, enc.offsets, post.trim_add_prefix_space);
    }
    if (add_special_tokens && (!post.prefix_ids.empty() || !post.suffix_ids.empty())) {
      Encoding out;
      for (int64_t id : post.prefix_ids) out.ids.push_back(id), out.offsets.emplace_back(0, 0);
      out.ids.insert(out.ids.end(), enc.ids.begin(), enc.ids.end());
      out.offsets.insert(out.offsets.end(), enc.offsets.begin(), enc.offsets.end());
      for (int64_t id : post.suffix_ids) out.ids.push_back(id), out.offsets.emplace_back(0, 0);
      return out;
    }
    return enc;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> texts;
    texts.reserve(ids.size());
    for (int64_t id : ids) {
      // Ids outside the vocabulary (embedding padding rows) decode to nothing, as in tokenizers.
      if (id < 0 || id >= vocab_size() || (tokens[id].empty() && !added[id])) continue;
      if (skip_special_tokens && special[id]) continue;
      texts.push_back(tokens[id]);
    }
    return apply_decoders(decoders, std::move(texts));
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(tokens.size()); }

  std::string id_to_token(int64_t id) const override {
    check_id(id);
    return tokens[id];
  }

  std::optional<int64_t> token_to_id(std::string_view token) const override {
    const std::string key(token);
    if (auto it = added_ids.find(key); it != added_ids.end()) return it->second;
    if (auto it = bpe->vocab().find(key); it != bpe->vocab().end()) return it->second;
    return std::nullopt;
  }

  std::string id_to_bytes(int64_t id) const override {
    check_id(id);
    const std::string& t = tokens[id];
    if (added[id]) return t;
    if (byte_level) {
      std::string out;
      return byte_level_decode(t, out) ? out : t;
    }
    if (bpe->options().byte_fallback) {
      const int byte = parse_byte_piece(t);
      if (byte >= 0) return std::string(1, static_cast<char>(byte));
    }
    return metaspace_to_spaces(t, metaspace);
  }

  bool is_special(int64_t id) const override {
    check_id(id);
    return special[id] != 0;
  }

  std::string kind() const override { return "tokenizer.json"; }

};

json read_json(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file + ": cannot open tokenizer file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str());
  } catch (const json::exception& e) {
    throw InputError(file + ": not valid JSON: " + e.what());
  }
}

// Token ids index the tokenizer's tables: an id that is not a non-negative integer below this bound
// is refused (found by fuzz_tokenizer_json: a float id was cast to int, a negative one indexed out
// of bounds, a huge one allocated tables of that size). Real vocabularies are far smaller.
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;

int32_t token_id(const json& id, const std::string& what, const std::string& file) {
  if (!id.is_number_integer() || (id.is_number_unsigned() ? id.get<uint64_t>() > static_cast<uint64_t>(kMaxTokenId)
                                                           : id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId))
    throw InputError(file + ": " + what + " has id " + id.dump() + "; ids are integers from 0 to " +
                     std::to_string(kMaxTokenId));
  return static_cast<int32_t>(id.get<int64_t>());
}

std::optional<std::string> optional_string(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  return j[key].get<std::string>();
}

std::unique_ptr<Bpe> load_bpe(const json& model, const std::string& file) {
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (type != "BPE")
    throw InputError(file + ": model type " + (type.empty() ? std::string("(none)") : type) +
                         " is not supported by logitfuse's tokenizer.json reader",
                     "only BPE models are implemented");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0)
    throw InputError(file + ": BPE dropout is not supported (it makes tokenization random)");
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw InputError(file + ": model.vocab is not a mapping");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(model["vocab"].size());
  for (const auto& [token, id] : model["vocab"].items()) vocab.emplace(token, token_id(id, "vocabulary token \"" + token + "\"", file));
  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges")) {
    merges.reserve(model["merges"].size());
    for (const auto& m : model["merges"]) {
      if (m.is_string()) {
        const auto s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          throw InputError(file + ": merge \"" + s + "\" is not two tokens separated by one space");
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        throw InputError(file + ": merge " + m.dump() + " is neither \"a b\" nor [a, b]");
      }
    }
  }
  BpeOptions options;
  options.unk_token = optional_string(model, "unk_token");
  options.continuing_subword_prefix = optional_string(model, "continuing_subword_prefix").value_or("");
  options.end_of_word_suffix = optional_string(model, "end_of_word_suffix").value_or("");
  options.fuse_unk = model.value("fuse_unk", false);
  options.byte_fallback = model.value("byte_fallback", false);
  options.ignore_merges = model.value("ignore_merges", false);
  try {
    return std::make_unique<Bpe>(std::move(vocab), merges, std::move(options));
  } catch (const std::invalid_argument& e) {
    throw InputError(file + ": " + e.what());
  }
}

}  // namespace
}  // namespace tok

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_file) {
  using namespace tok;
  const json j = read_json(json_file);
  const std::string& file = json_file;
  if (!j.is_object() || !j.contains("model")) throw InputError(file + ": not a tokenizer.json (no \"model\")");
  for (const char* key : {"truncation", "padding"})
    if (j.contains(key) && !j[key].is_null())
      throw InputError(file + ": \"" + key + "\" is set; logitfuse does not apply tokenizer-level " + key,
                       std::string("set \"") + key + "\" to null in the file");
  auto tok = std::make_unique<HfTokenizer>();
  tok->set_source(file);
  try {
    tok->bpe = load_bpe(j["model"], file);
    tok->normalizers = parse_normalizer(j.value("normalizer", json()), file);
    tok->pre_tokenizers = parse_pre_tokenizer(j.value("pre_tokenizer", json()), file);
    tok->decoders = parse_decoder(j.value("decoder", json()), file);
    tok->post = parse_post_processor(j.value("post_processor", json()), file);

    int64_t size = 0;
    for (const auto& [token, id] : tok->bpe->vocab()) size = std::max<int64_t>(size, id + 1);
    const json added = j.value("added_tokens", json::array());
    for (const auto& a : added) size = std::max<int64_t>(size, token_id(a.at("id"), "added token " + a.value("content", json()).dump(), file) + 1);
    tok->tokens.assign(size, "");
    tok->added.assign(size, 0);
    tok->special.assign(size, 0);
    for (const auto& [token, id] : tok->bpe->vocab()) tok->tokens[id] = token;
    for (const auto& a : added) {
      AddedToken t;
      t.id = a.at("id").get<int64_t>();
      t.content = a.at("content").get<std::string>();
      t.single_word = a.value("single_word", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      const bool is_special = a.value("special", false);
      const bool normalized = a.value("normalized", !is_special);
      tok->tokens[t.id] = t.content;
      tok->added[t.id] = 1;
      tok->special[t.id] = is_special;
      tok->added_ids[t.content] = t.id;
      if (normalized && !tok->normalizers.empty()) {
        // tokenizers matches normalized added tokens by their normalized content.
        Piece p = make_piece(t.content, 0, t.content.size());
        apply_normalizers(tok->normalizers, p);
        t.content = p.text;
        tok->normalized_matcher.add(std::move(t));
      } else if (normalized) {
        tok->normalized_matcher.add(std::move(t));
      } else {
        tok->raw_matcher.add(std::move(t));
      }
    }
    for (const auto& step : tok->pre_tokenizers) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel) tok->byte_level = true;
      if (step.kind == PreTokenizerStep::Kind::kMetaspace) tok->metaspace = step.replacement;
    }
    for (const auto& step : tok->decoders)
      if (step.kind == DecoderStep::Kind::kByteLevel) tok->byte_level = true;
  } catch (const json::exception& e) {
    throw InputError(file + ": malformed tokenizer.json: " + e.what());
  }
  SpecialTokens fallback;
  if (auto unk = tok->bpe->options().unk_token) {
    if (auto id = tok->token_to_id(*unk)) fallback.unk = id, fallback.unk_text = *unk;
  }
  load_special_tokens(*tok, file, fallback);
  return tok;
}

}  // namespace lf
