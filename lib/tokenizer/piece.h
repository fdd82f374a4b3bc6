// A piece of text on its way through normalizers and pre-tokenizers, with, for every byte, the
// [start, end) byte range of the original text it came from. This is `tokenizers`' NormalizedString
// alignment model: a char that replaces or is inserted after another inherits that char's range, so
// token offsets come out exactly as `tokenizers` reports them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lf::tok {

using Span = std::pair<uint32_t, uint32_t>;

struct Piece {
  std::string text;
  std::vector<Span> align;  // one per byte of `text`

  bool empty() const { return text.empty(); }
  // Bytes [b, e) of this piece, alignment kept.
  Piece slice(size_t b, size_t e) const;
  // Original range of bytes [b, e) of the piece: first byte's start, last byte's end.
  Span original(size_t b, size_t e) const { return {align[b].first, align[e - 1].second}; }
};

// The piece for original bytes [b, e) of `text`: every byte aligned to the whole char holding it.
Piece make_piece(std::string_view text, size_t b, size_t e);

// NormalizedString::prepend: the new chars share the first char's range. No-op on an empty piece.
void prepend(Piece& p, std::string_view s);
// NormalizedString::replace of every non-overlapping match range by `content` (the content shares the
// range of the last replaced char, as in `tokenizers`).
void replace_ranges(Piece& p, const std::vector<std::pair<size_t, size_t>>& ranges, std::string_view content);
// All occurrences of the literal `pattern`.
void replace_literal(Piece& p, std::string_view pattern, std::string_view content);

// How a split keeps its delimiters (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `p` given match ranges (sorted, non-overlapping), appending non-empty parts to `out`.
void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                 bool invert, std::vector<Piece>& out);

}  // namespace lf::tok
