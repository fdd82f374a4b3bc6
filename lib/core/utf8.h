// UTF-8 code points: the primitives that the tokenizers (lib/tokenizer) and the template engine
// (lib/template) both build on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lf {

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

}  // namespace lf
