// The BPE model of tokenizer.json: vocabulary, ranked merges, unknown-token and byte-fallback rules,
// exactly as `tokenizers`' models::bpe::BPE applies them to one pre-tokenized word.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace lf::tok {

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // "" = none
  std::string end_of_word_suffix;         // "" = none
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

// One output token of a word: its id and how many bytes of the word it covers.
struct WordToken {
  int32_t id;
  uint32_t len;
};

class Bpe {
 public:
  // `merges` are (left, right) token texts in rank order. Throws std::invalid_argument naming a merge
  // whose parts or result are not in the vocabulary.
  Bpe(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options);

  // Appends the tokens of `word` to `out`. Repeated words come from a cache.
  void tokenize(std::string_view word, std::vector<WordToken>& out) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  const BpeOptions& options() const { return options_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    uint32_t len;
    int32_t prev, next;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* find_merge(int32_t a, int32_t b) const;
  void initial_symbols(std::string_view word, std::vector<Symbol>& symbols) const;
  void merge_all(std::vector<Symbol>& symbols) const;
  void tokenize_uncached(std::string_view word, std::vector<WordToken>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  int32_t byte_ids_[256];  // id of "<0xNN>" for byte fallback, -1 if absent

  static constexpr size_t kCacheCapacity = 100000;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<WordToken>> cache_;
};

}  // namespace lf::tok
