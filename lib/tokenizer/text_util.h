// UTF-8 and byte-level helpers shared by the tokenizer back ends (internal to lib/tokenizer).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace lf::tok {

// Length of the UTF-8 sequence that starts with `lead` (1 for stray continuation bytes, so loops advance).
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at `i` (which must start a valid sequence) and advances `i`.
uint32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, uint32_t cp);

// Byte offset of the first invalid UTF-8 sequence, or npos when `s` is valid (no surrogates, no overlongs).
size_t utf8_invalid_at(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD. Decoders build bytes
// (byte-level tokens, <0xNN> pieces) that need not be valid text, and `tokenizers` repairs them so.
std::string utf8_lossy(std::string_view bytes);

// Unicode White_Space (Rust's char::is_whitespace), used where `tokenizers` tests chars itself.
bool is_unicode_whitespace(uint32_t cp);

// GPT-2's reversible byte <-> printable-char map used by the ByteLevel pre-tokenizer and decoder.
struct ByteLevelMap {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its char ("Ġ" for ' ')
  std::array<int16_t, 324> char_to_byte;      // code point (< 324) -> byte, -1 if not a mapped char
  ByteLevelMap();
};
const ByteLevelMap& byte_level_map();

// "Ġthe" -> " the"; false when a char is not in the map (the caller then keeps the text as is, as
// `tokenizers`' ByteLevel decoder does).
bool byte_level_decode(std::string_view token, std::string& out);

// "<0x0A>" -> 0x0A, or -1 when `token` is not a byte-fallback piece.
int parse_byte_piece(std::string_view token);

}  // namespace lf::tok
