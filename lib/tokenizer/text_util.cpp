#include "tokenizer/text_util.h"

namespace lf::tok {

namespace {

// Length of the valid sequence at `i`, or 0 with `valid_prefix` = how many bytes form a maximal
// invalid subpart (the unit that from_utf8_lossy replaces by one U+FFFD).
size_t valid_sequence(std::string_view s, size_t i, size_t& valid_prefix) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return 0;
    valid_prefix = k + 1;
  }
  return n;
}

}  // namespace

size_t utf8_invalid_at(std::string_view s) {
  size_t i = 0, prefix = 0;
  while (i < s.size()) {
    const size_t n = valid_sequence(s, i, prefix);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0, prefix = 0;
  while (i < bytes.size()) {
    const size_t n = valid_sequence(bytes, i, prefix);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += prefix;
    } else {
      out.append(bytes.data() + i, n);
      i += n;
    }
  }
  return out;
}

bool is_unicode_whitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

ByteLevelMap::ByteLevelMap() {
  char_to_byte.fill(-1);
  // Printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100.. in byte order.
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : next++;
    byte_to_utf8[b].clear();
    utf8_append(byte_to_utf8[b], static_cast<uint32_t>(cp));
    char_to_byte[cp] = static_cast<int16_t>(b);
  }
}

const ByteLevelMap& byte_level_map() {
  static const ByteLevelMap map;
  return map;
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto& map = byte_level_map();
  const size_t mark = out.size();
  size_t i = 0;
  while (i < token.size()) {
    const uint32_t cp = utf8_next(token, i);
    if (cp >= map.char_to_byte.size() || map.char_to_byte[cp] < 0) {
      out.resize(mark);
      return false;
    }
    out += static_cast<char>(map.char_to_byte[cp]);
  }
  return true;
}

int parse_byte_piece(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int value = 0;
  for (size_t k = 3; k < 5; ++k) {
    const char c = token[k];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    value = value * 16 + d;
  }
  return value;
}

}  // namespace lf::tok
