#include "tokenizer/piece.h"

#include <algorithm>

#include "tokenizer/text_util.h"

namespace lf::tok {

Piece Piece::slice(size_t b, size_t e) const {
  Piece out;
  out.text.assign(text, b, e - b);
  out.align.assign(align.begin() + static_cast<std::ptrdiff_t>(b), align.begin() + static_cast<std::ptrdiff_t>(e));
  return out;
}

Piece make_piece(std::string_view text, size_t b, size_t e) {
  Piece p;
  p.text.assign(text.data() + b, e - b);
  p.align.resize(e - b);
  size_t i = b;
  while (i < e) {
    const size_t n = std::min(utf8_len(static_cast<unsigned char>(text[i])), e - i);
    const Span span{static_cast<uint32_t>(i), static_cast<uint32_t>(i + n)};
    for (size_t k = 0; k < n; ++k) p.align[i - b + k] = span;
    i += n;
  }
  return p;
}

void prepend(Piece& p, std::string_view s) {
  if (p.empty() || s.empty()) return;
  const Span first = p.align[0];
  p.text.insert(0, s);
  p.align.insert(p.align.begin(), s.size(), first);
}

void replace_ranges(Piece& p, const std::vector<std::pair<size_t, size_t>>& ranges, std::string_view content) {
  if (ranges.empty()) return;
  Piece out;
  out.text.reserve(p.text.size());
  out.align.reserve(p.align.size());
  size_t prev = 0;
  for (const auto& [b, e] : ranges) {
    out.text.append(p.text, prev, b - prev);
    out.align.insert(out.align.end(), p.align.begin() + static_cast<std::ptrdiff_t>(prev),
                     p.align.begin() + static_cast<std::ptrdiff_t>(b));
    if (e > b) {
      out.text.append(content);
      out.align.insert(out.align.end(), content.size(), p.align[e - 1]);
    }
    prev = e;
  }
  out.text.append(p.text, prev, std::string::npos);
  out.align.insert(out.align.end(), p.align.begin() + static_cast<std::ptrdiff_t>(prev), p.align.end());
  p = std::move(out);
}

void replace_literal(Piece& p, std::string_view pattern, std::string_view content) {
  if (pattern.empty()) return;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t at = p.text.find(pattern); at != std::string::npos; at = p.text.find(pattern, at + pattern.size()))
    ranges.emplace_back(at, at + pattern.size());
  replace_ranges(p, ranges, content);
}

void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                 bool invert, std::vector<Piece>& out) {
  // The text as alternating (range, is_match) parts, as tokenizers' Pattern::find_matches gives them.
  struct Part {
    size_t b, e;
    bool is_match;
  };
  std::vector<Part> parts;
  parts.reserve(2 * matches.size() + 1);
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < p.text.size()) parts.push_back({prev, p.text.size(), invert});

  std::vector<Part> kept;  // with is_match now meaning "remove"
  kept.reserve(parts.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto part : parts) kept.push_back({part.b, part.e, false});
      break;
    case SplitBehavior::kRemoved:
      kept = parts;
      break;
    case SplitBehavior::kContiguous:
      for (auto part : parts) {
        if (part.is_match == previous_match && !kept.empty()) kept.back().e = part.e;
        else kept.push_back({part.b, part.e, false});
        previous_match = part.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (auto part : parts) {
        if (part.is_match && !previous_match && !kept.empty()) kept.back().e = part.e;
        else kept.push_back({part.b, part.e, false});
        previous_match = part.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) kept.back().b = it->b;
        else kept.push_back({it->b, it->e, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const auto& part : kept)
    if (!part.is_match && part.e > part.b) out.push_back(p.slice(part.b, part.e));
}

}  // namespace lf::tok
