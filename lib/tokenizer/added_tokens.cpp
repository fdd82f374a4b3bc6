#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/regex.h"
#include "tokenizer/text_util.h"

namespace lf::tok {

void AddedTokenMatcher::add(AddedToken token) {
  if (token.content.empty()) return;
  int32_t node = 0;
  for (unsigned char c : token.content) {
    auto& next = trie_[node].next;
    auto it = std::find_if(next.begin(), next.end(), [c](const auto& p) { return p.first == c; });
    if (it != next.end()) {
      node = it->second;
    } else {
      const int32_t child = static_cast<int32_t>(trie_.size());
      trie_[node].next.emplace_back(c, child);
      trie_.emplace_back();
      node = child;
    }
  }
  if (trie_[node].token >= 0) {
    tokens_[trie_[node].token] = std::move(token);  // same content twice: the later entry wins
  } else {
    trie_[node].token = static_cast<int32_t>(tokens_.size());
    first_byte_[static_cast<unsigned char>(token.content[0])] = true;
    tokens_.push_back(std::move(token));
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t at, size_t& end) const {
  int32_t node = 0, best = -1;
  for (size_t i = at; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const auto& next = trie_[node].next;
    auto it = std::find_if(next.begin(), next.end(), [c](const auto& p) { return p.first == c; });
    if (it == next.end()) break;
    node = it->second;
    if (trie_[node].token >= 0) {
      best = trie_[node].token;
      end = i + 1;
    }
  }
  return best;
}

namespace {

// The regexes tokenizers' AddedVocabulary uses (Rust regex \w and \s, spelled out for PCRE2).
const Regex& word_at_start() {
  static const Regex re(R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
  return re;
}
const Regex& word_at_end() {
  static const Regex re(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]$)");
  return re;
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<TextPart>& parts) const {
  parts.clear();
  size_t start_offset = 0;  // end of the last emitted token
  size_t scan = 0;          // where the leftmost-longest search resumes (ignores rstrip, as Aho-Corasick does)
  while (scan < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[scan])]) {
      ++scan;
      continue;
    }
    size_t stop = 0;
    const int32_t index = longest_at(text, scan, stop);
    if (index < 0) {
      ++scan;
      continue;
    }
    size_t start = scan;
    scan = stop;
    const AddedToken& token = tokens_[index];
    if (token.single_word) {
      const bool start_space = start == 0 || !word_at_end().search(text.substr(0, start));
      const bool stop_space = stop == text.size() || !word_at_start().search(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (start < start_offset) continue;  // inside spaces a previous token's rstrip took
    if (token.lstrip) {
      // Back over the whitespace before the token, not past the previous token.
      size_t b = start;
      while (b > start_offset) {
        size_t k = b - 1;
        while (k > start_offset && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        size_t tmp = k;
        if (!is_unicode_whitespace(utf8_next(text, tmp))) break;
        b = k;
      }
      start = b;
    }
    if (token.rstrip) {
      size_t e = stop;
      while (e < text.size()) {
        size_t tmp = e;
        if (!is_unicode_whitespace(utf8_next(text, tmp))) break;
        e = tmp;
      }
      stop = e;
    }
    if (start > start_offset) parts.push_back({start_offset, start, -1});
    parts.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) parts.push_back({start_offset, text.size(), -1});
}

}  // namespace lf::tok
