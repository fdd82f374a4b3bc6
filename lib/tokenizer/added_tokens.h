// Added tokens of tokenizer.json (and the control symbols of SentencePiece models): found in the text
// before the model sees it, leftmost-longest like tokenizers' Aho-Corasick matcher, with the
// single_word / lstrip / rstrip rules of AddedVocabulary::find_matches.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lf::tok {

struct AddedToken {
  std::string content;  // what is matched (for normalized tokens: the normalized content)
  int64_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false;
};

// One part of a text: an added token (id >= 0) or a run of other text (id < 0), byte range [b, e).
struct TextPart {
  size_t b, e;
  int64_t id;
};

class AddedTokenMatcher {
 public:
  void add(AddedToken token);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into parts; parts cover the text in order (stripped spaces belong to their token).
  void split(std::string_view text, std::vector<TextPart>& parts) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t token = -1;  // index into tokens_ of the token ending here
  };
  // Longest token starting at `at`, or -1.
  int32_t longest_at(std::string_view text, size_t at, size_t& end) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_{Node{}};
  bool first_byte_[256] = {};
};

}  // namespace lf::tok
