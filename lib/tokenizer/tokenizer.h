// One tokenizer interface for every model logitfuse fuses, with two back ends: SentencePiece
// `.model` files (through the sentencepiece library) and Hugging Face `tokenizer.json` (our own
// BPE implementation, checked against the `tokenizers` library). Alignment needs more than ids:
// byte offsets into the text, and the raw bytes each token stands for.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lf {

struct Encoding {
  std::vector<int64_t> ids;
  // [start, end) byte offsets of each token in the UTF-8 input text, as `tokenizers` reports them.
  std::vector<std::pair<int64_t, int64_t>> offsets;
};

struct SpecialTokens {
  std::optional<int64_t> bos, eos, pad, unk;
  std::string bos_text, eos_text, pad_text, unk_text;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Special and added tokens written in `text` are recognised as such. With add_special_tokens the
  // tokenizer's own post-processing (e.g. a BOS in front) is applied, as `tokenizers` does by default.
  virtual Encoding encode(std::string_view text, bool add_special_tokens = false) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;

  // Number of ids the tokenizer can produce (base vocabulary plus added tokens).
  virtual int64_t vocab_size() const = 0;
  // The token as the vocabulary spells it ("Ġthe", "▁the", "<0x0A>", "<|im_end|>").
  virtual std::string id_to_token(int64_t id) const = 0;
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  // The bytes of text the token stands for ("Ġthe" and "▁the" -> " the", "<0x0A>" -> "\n"); for special
  // tokens, their text.
  virtual std::string id_to_bytes(int64_t id) const = 0;
  virtual bool is_special(int64_t id) const = 0;
  // Whether encoding with add_special_tokens puts the BOS id first (Gemma's and Llama's tokenizers do,
  // as `tokenizers` and transformers' tokenizer(text) show).
  bool prepends_bos() const;

  const SpecialTokens& special_tokens() const { return special_; }
  // Which back end: "sentencepiece" or "tokenizer.json".
  virtual std::string kind() const = 0;
  // The file it was loaded from (for cache keys and error messages).
  const std::string& source() const { return source_; }

 protected:
  SpecialTokens special_;
  std::string source_;
};

// `path` is a tokenizer file (`tokenizer.json`, `*.model`) or a model directory (tokenizer.json
// preferred, else tokenizer.model). BOS/EOS/PAD come from tokenizer_config.json /
// special_tokens_map.json beside the file when present. Unsupported components are InputErrors
// naming the component, never a silently different tokenization.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Back ends (used by load_tokenizer).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file);
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_file);

}  // namespace lf
