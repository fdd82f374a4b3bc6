#include "tokenizer/unicode_normalize.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <stdexcept>

#include "tokenizer/text_util.h"

namespace lf::tok {

namespace {

struct Normalizers {
  const icu::Normalizer2* nfd = nullptr;   // canonical decomposition mappings
  const icu::Normalizer2* nfkd = nullptr;  // compatibility decomposition mappings
  const icu::Normalizer2* nfc = nullptr;   // pairwise canonical composition
  Normalizers() {
    UErrorCode status = U_ZERO_ERROR;
    nfd = icu::Normalizer2::getNFDInstance(status);
    nfkd = icu::Normalizer2::getNFKDInstance(status);
    nfc = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU normalizer data unavailable: ") + u_errorName(status));
  }
};

const Normalizers& normalizers() {
  static const Normalizers n;
  return n;
}

struct Item {
  uint32_t cp;
  int change;
  uint8_t ccc;
};

// `tokenizers` normalizes with Unicode 9.0 tables (unicode-normalization-alignments 0.1.12): a char
// assigned later (U+32FF SQUARE ERA NAME REIWA, Unicode 12.1, for one) has no decomposition, combining
// class 0 and takes part in no composition there. ICU knows newer Unicode, so those chars are held back.
bool after_unicode_9(uint32_t cp) {
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(cp), age);
  return age[0] > 9;
}

uint8_t ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  const uint8_t ccc = u_getCombiningClass(static_cast<UChar32>(cp));
  return ccc != 0 && after_unicode_9(cp) ? 0 : ccc;
}

// unicode-normalization-alignments' Decompositions: each char's full decomposition (first piece change
// 0, later pieces +1), each run of non-starters stably sorted by combining class.
void decompose(std::string_view text, bool compat, std::vector<Item>& out) {
  const icu::Normalizer2& norm = compat ? *normalizers().nfkd : *normalizers().nfd;
  thread_local icu::UnicodeString mapping;
  size_t pending = 0;  // start of the run of non-starters still to sort
  auto push = [&](uint32_t cp, int change) {
    const uint8_t ccc = ccc_of(cp);
    if (ccc == 0) {
      std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(pending), out.end(),
                       [](const Item& a, const Item& b) { return a.ccc < b.ccc; });
      pending = out.size();
    }
    out.push_back({cp, change, ccc});
  };
  size_t i = 0;
  while (i < text.size()) {
    const uint32_t cp = utf8_next(text, i);
    if (cp < 0xA0 || !norm.getDecomposition(static_cast<UChar32>(cp), mapping) || after_unicode_9(cp)) {
      push(cp, 0);
      continue;
    }
    int change = 0;
    for (int32_t k = 0; k < mapping.length(); k = mapping.moveIndex32(k, 1)) {
      push(static_cast<uint32_t>(mapping.char32At(k)), change);
      change = 1;
    }
  }
  std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(pending), out.end(),
                   [](const Item& a, const Item& b) { return a.ccc < b.ccc; });
}

// The primary composite of a + b, or -1 (ICU returns only canonical, non-excluded compositions).
int32_t compose(uint32_t a, uint32_t b) {
  const int32_t r = normalizers().nfc->composePair(static_cast<UChar32>(a), static_cast<UChar32>(b));
  return r >= 0 && after_unicode_9(static_cast<uint32_t>(r)) ? -1 : r;
}

// unicode-normalization-alignments' Recompositions state machine over the decomposed items; a
// composition of k and c carries change k + c - 1.
void recompose(const std::vector<Item>& in, std::vector<Item>& out) {
  bool has_composee = false, has_last = false;
  Item composee{0, 0, 0};
  uint8_t last_ccc = 0;
  std::vector<Item> buffer;
  auto flush_buffer = [&] {
    out.insert(out.end(), buffer.begin(), buffer.end());
    buffer.clear();
  };
  for (const Item& c : in) {
    if (!has_composee) {
      if (c.ccc != 0) {
        out.push_back(c);
      } else {
        composee = c;
        has_composee = true;
      }
      continue;
    }
    if (has_last && last_ccc >= c.ccc) {  // c is blocked from the composee
      if (c.ccc == 0) {
        out.push_back(composee);
        flush_buffer();
        composee = c;
        has_last = false;
      } else {
        buffer.push_back(c);
        last_ccc = c.ccc;
      }
      continue;
    }
    const int32_t r = compose(composee.cp, c.cp);
    if (r >= 0) {
      composee = {static_cast<uint32_t>(r), composee.change + c.change - 1, ccc_of(static_cast<uint32_t>(r))};
      continue;
    }
    if (!has_last && c.ccc == 0) {
      out.push_back(composee);
      composee = c;
      continue;
    }
    buffer.push_back(c);
    last_ccc = c.ccc;
    has_last = true;
  }
  if (has_composee) out.push_back(composee);
  flush_buffer();
}

bool is_ascii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

}  // namespace

bool parse_normal_form(const std::string& type, NormalForm& form) {
  if (type == "NFC") form = NormalForm::kNFC;
  else if (type == "NFD") form = NormalForm::kNFD;
  else if (type == "NFKC") form = NormalForm::kNFKC;
  else if (type == "NFKD") form = NormalForm::kNFKD;
  else return false;
  return true;
}

std::vector<std::pair<uint32_t, int>> normalize_with_changes(std::string_view text, NormalForm form) {
  const bool compat = form == NormalForm::kNFKC || form == NormalForm::kNFKD;
  const bool compose_back = form == NormalForm::kNFC || form == NormalForm::kNFKC;
  std::vector<Item> decomposed, composed;
  decompose(text, compat, decomposed);
  if (compose_back) recompose(decomposed, composed);
  const std::vector<Item>& items = compose_back ? composed : decomposed;
  std::vector<std::pair<uint32_t, int>> out;
  out.reserve(items.size());
  for (const Item& item : items) out.emplace_back(item.cp, item.change);
  return out;
}

void unicode_normalize(Piece& p, NormalForm form) {
  if (p.empty() || is_ascii(p.text)) return;  // ASCII is in every form, each char aligned to itself
  const auto chars = normalize_with_changes(p.text, form);
  // Byte start of each input char, and one past the end.
  std::vector<size_t> starts;
  starts.reserve(p.text.size() + 1);
  for (size_t i = 0; i < p.text.size();) {
    starts.push_back(i);
    i += std::min(utf8_len(static_cast<unsigned char>(p.text[i])), p.text.size() - i);
  }
  starts.push_back(p.text.size());
  Piece out;
  out.text.reserve(p.text.size() + p.text.size() / 2);
  out.align.reserve(out.text.capacity());
  size_t next = 0;  // the next input char to consume
  for (const auto& [cp, change] : chars) {
    Span span;
    if (change > 0) {
      // Inserted: the range of the byte just before the next input char (NormalizedString::transform).
      span = next == 0 ? Span{p.align[0].first, p.align[0].first} : p.align[starts[next] - 1];
    } else {
      span = p.align[starts[std::min(next, starts.size() - 2)]];
      next += static_cast<size_t>(1 - change);
    }
    const size_t before = out.text.size();
    utf8_append(out.text, cp);
    out.align.insert(out.align.end(), out.text.size() - before, span);
  }
  p = std::move(out);
}

}  // namespace lf::tok
