// A compiled PCRE2 pattern (UTF + UCP, JIT when available) that lists its non-overlapping matches.
// tokenizer.json split patterns are Oniguruma syntax; the constructs real files use (\p{L}, (?i:...),
// (?!\S), possessive-free classes) mean the same in PCRE2 with UCP.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lf::tok {

class Regex {
 public:
  // Throws std::invalid_argument with PCRE2's message when `pattern` does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [start, end) byte ranges of all matches, left to right; `text` must be valid UTF-8. An empty match
  // advances one char, so the scan always ends.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  bool search(std::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

// The pattern that matches `literal` exactly (for tokenizer.json's {"String": ...} split patterns).
std::string regex_escape(std::string_view literal);

}  // namespace lf::tok
