// UTF-8 and byte-level helpers shared by the tokenizer back ends (internal to lib/tokenizer).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/utf8.h"

namespace lf::tok {

// The code-point primitives live in core/utf8.h (the template engine uses them too).
using lf::utf8_append;
using lf::utf8_len;
using lf::utf8_next;

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
