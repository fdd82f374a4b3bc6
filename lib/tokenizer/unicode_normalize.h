// The NFC, NFD, NFKC and NFKD normalizers of tokenizer.json, with `tokenizers`' byte alignment.
//
// The forms themselves come from ICU. The alignment follows `tokenizers`' NormalizedString::transform
// fed by unicode-normalization-alignments: every output char carries a `change` (0: it replaces one
// input char; -n: it replaces n + 1 input chars, a composition; +1: it is inserted, a later piece of a
// decomposition). The input chars are consumed in order, so an output char takes the original range
// of the first input char it replaces (a composed "é" from "e\u0301" gets the range of "e"), and an
// inserted char the range of the input char consumed just before it. Canonical reordering makes this
// positional rather than a char-by-char provenance, which is exactly what `tokenizers` reports.
// Chars assigned after Unicode 9.0, which `tokenizers`' tables predate, are left as they are.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/piece.h"

namespace lf::tok {

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

// The form named by a tokenizer.json normalizer type ("NFC", ...); false when `type` is none of them.
bool parse_normal_form(const std::string& type, NormalForm& form);

// The normalized chars of `text` (valid UTF-8), each with its `change` as described above.
std::vector<std::pair<uint32_t, int>> normalize_with_changes(std::string_view text, NormalForm form);

// Normalizes `p` in place, its alignment carried as `tokenizers` carries it.
void unicode_normalize(Piece& p, NormalForm form);

}  // namespace lf::tok
