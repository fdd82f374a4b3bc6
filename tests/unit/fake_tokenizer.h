// A CPU fake behind the Tokenizer interface: fixed-width byte chunks (width 1 = bytes, 2 = byte
// pairs, ...), so two instances of different widths tokenize the same text genuinely differently.
// Ids: 0 <s>, 1 </s>, 2 <pad>, 3 <|im_end|> (special), then chunks numbered as they are first seen.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lf::test {

class ChunkTokenizer : public Tokenizer {
 public:
  explicit ChunkTokenizer(size_t width, std::string name = "fake") : width_(width) {
    for (const char* s : {"<s>", "</s>", "<pad>", "<|im_end|>"}) add(s);
    special_.bos = 0;
    special_.eos = 1;
    special_.pad = 2;
    special_.bos_text = "<s>";
    special_.eos_text = "</s>";
    source_ = name;
  }
  Encoding encode(std::string_view text, bool) const override {
    Encoding e;
    size_t i = 0;
    while (i < text.size()) {
      if (text.substr(i, 10) == "<|im_end|>") {
        e.ids.push_back(3);
        e.offsets.emplace_back(i, i + 10);
        i += 10;
        continue;
      }
      size_t n = std::min(width_, text.size() - i);
      const size_t special = text.find("<|im_end|>", i);
      if (special != std::string_view::npos && special < i + n) n = special - i;
      e.ids.push_back(const_cast<ChunkTokenizer*>(this)->add(std::string(text.substr(i, n))));
      e.offsets.emplace_back(i, i + n);
      i += n;
    }
    return e;
  }
  std::string decode(const std::vector<int64_t>& ids, bool) const override {
    std::string out;
    for (auto id : ids) out += tokens_.at(id);
    return out;
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  std::string id_to_token(int64_t id) const override { return tokens_.at(id); }
  std::optional<int64_t> token_to_id(std::string_view token) const override {
    auto it = ids_.find(std::string(token));
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  std::string id_to_bytes(int64_t id) const override { return tokens_.at(id); }
  bool is_special(int64_t id) const override { return id < 4; }
  std::string kind() const override { return "fake"; }

  int64_t add(const std::string& token) {
    auto it = ids_.find(token);
    if (it != ids_.end()) return it->second;
    ids_[token] = static_cast<int64_t>(tokens_.size());
    tokens_.push_back(token);
    return ids_[token];
  }

 private:
  size_t width_;
  std::vector<std::string> tokens_;
  std::map<std::string, int64_t> ids_;
};

}  // namespace lf::test
