// SentencePiece `.model` back end, through the sentencepiece library. The library does not recognise
// control symbols (<s>, </s>) or <unk> written in the text, so the text is split on them first and
// each remaining run encoded on its own (as transformers' slow Llama tokenizer does); user-defined
// symbols the library matches itself.
#include <sentencepiece_processor.h>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/text_util.h"
#include "tokenizer/tokenizer_base.h"

namespace lf {
namespace tok {
namespace {

class SentencePieceTokenizer final : public TokenizerBase {
 public:
  sentencepiece::SentencePieceProcessor sp;
  AddedTokenMatcher specials;  // control symbols and <unk>, by their piece text
  std::vector<uint8_t> special;
  bool add_bos = true, add_eos = false;

  Encoding encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text, source_);
    Encoding enc;
    if (add_special_tokens && add_bos && special_.bos) enc.ids.push_back(*special_.bos), enc.offsets.emplace_back(0, 0);
    std::vector<TextPart> parts;
    specials.split(text, parts);
    for (const TextPart& part : parts) {
      if (part.id >= 0) {
        enc.ids.push_back(part.id);
        enc.offsets.emplace_back(part.b, part.e);
        continue;
      }
      const auto proto = sp.EncodeAsImmutableProto(text.substr(part.b, part.e - part.b));
      for (const auto& piece : proto.pieces()) {
        enc.ids.push_back(piece.id());
        enc.offsets.emplace_back(part.b + piece.begin(), part.b + piece.end());
      }
    }
    if (add_special_tokens && add_eos && special_.eos) enc.ids.push_back(*special_.eos), enc.offsets.emplace_back(0, 0);
    return enc;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (!run.empty()) out += sp.DecodeIds(run);
      run.clear();
    };
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab_size()) continue;  // embedding padding rows
      if (special[id]) {
        flush();
        if (!skip_special_tokens) out += sp.IdToPiece(static_cast<int>(id));
      } else {
        run.push_back(static_cast<int>(id));
      }
    }
    flush();
    return out;
  }

  int64_t vocab_size() const override { return sp.GetPieceSize(); }

  std::string id_to_token(int64_t id) const override {
    check_id(id);
    return sp.IdToPiece(static_cast<int>(id));
  }

  std::optional<int64_t> token_to_id(std::string_view token) const override {
    const int id = sp.PieceToId(token);
    // PieceToId answers unk_id for unknown pieces; only the unk piece itself maps there.
    if (id == sp.unk_id() && token != sp.IdToPiece(id)) return std::nullopt;
    return id;
  }

  std::string id_to_bytes(int64_t id) const override {
    check_id(id);
    const std::string& piece = sp.IdToPiece(static_cast<int>(id));
    if (sp.IsByte(static_cast<int>(id))) {
      const int byte = parse_byte_piece(piece);
      if (byte >= 0) return std::string(1, static_cast<char>(byte));
    }
    if (special[id]) return piece;
    return metaspace_to_spaces(piece);
  }

  bool is_special(int64_t id) const override {
    check_id(id);
    return special[id] != 0;
  }

  std::string kind() const override { return "sentencepiece"; }

};

}  // namespace
}  // namespace tok

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file) {
  using namespace tok;
  auto tok = std::make_unique<SentencePieceTokenizer>();
  tok->set_source(model_file);
  // The library throws for some malformed models (a zero-length piece: darts' "failed to insert
  // key"; found by fuzz_sentencepiece) instead of returning a status.
  sentencepiece::util::Status status;
  try {
    status = tok->sp.Load(model_file);
  } catch (const std::exception& e) {
    throw InputError(model_file + ": not a SentencePiece model: " + e.what());
  }
  if (!status.ok()) throw InputError(model_file + ": not a SentencePiece model: " + status.ToString());
  const int n = tok->sp.GetPieceSize();
  tok->special.assign(n, 0);
  for (int id = 0; id < n; ++id) {
    if (!tok->sp.IsControl(id) && !tok->sp.IsUnknown(id)) continue;
    tok->special[id] = 1;
    AddedToken t;
    t.content = tok->sp.IdToPiece(id);
    t.id = id;
    tok->specials.add(std::move(t));
  }
  SpecialTokens fallback;
  auto fill = [&](int id, std::optional<int64_t>& slot, std::string& text) {
    if (id >= 0 && id < n) slot = id, text = tok->sp.IdToPiece(id);
  };
  fill(tok->sp.bos_id(), fallback.bos, fallback.bos_text);
  fill(tok->sp.eos_id(), fallback.eos, fallback.eos_text);
  fill(tok->sp.pad_id(), fallback.pad, fallback.pad_text);
  fill(tok->sp.unk_id(), fallback.unk, fallback.unk_text);
  load_special_tokens(*tok, model_file, fallback);
  // transformers' Llama/Mistral tokenizers put BOS (not EOS) in front unless the config says otherwise.
  tok->add_bos = config_flag(model_file, "add_bos_token").value_or(true);
  tok->add_eos = config_flag(model_file, "add_eos_token").value_or(false);
  return tok;
}

}  // namespace lf
