// What the two back ends share beyond the public interface: setting the special tokens and source,
// reading BOS/EOS/PAD/UNK from the Hugging Face config files beside the tokenizer file, and checking
// input text (internal to lib/tokenizer).
#pragma once

#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace lf::tok {

class TokenizerBase : public Tokenizer {
 public:
  void set_special_tokens(SpecialTokens s) { special_ = std::move(s); }
  void set_source(std::string s) { source_ = std::move(s); }

 protected:
  // InputError naming the tokenizer file when `id` is outside the vocabulary.
  void check_id(int64_t id) const;
};

// The word marker of SentencePiece-style vocabularies ('▁' unless a tokenizer.json says otherwise)
// back to the space it stands for.
std::string metaspace_to_spaces(std::string_view piece, std::string_view marker = "\xE2\x96\x81");

// Fills the tokenizer's special tokens from tokenizer_config.json, then special_tokens_map.json, in
// the directory of `file`; tokens neither names keep the values of `fallback`.
void load_special_tokens(TokenizerBase& tokenizer, const std::string& file, const SpecialTokens& fallback);

// A key of tokenizer_config.json beside `file` (e.g. add_bos_token), if the file and key exist and hold a bool.
std::optional<bool> config_flag(const std::string& file, const std::string& key);

// Throws InputError when `text` is not valid UTF-8 (offsets and regexes need whole chars).
void check_utf8(std::string_view text, const std::string& source);

}  // namespace lf::tok
