// A 64-bit content hash (FNV-1a) for cache keys: tokenizer files, data files, logit caches.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lf {

uint64_t fnv1a64(std::string_view bytes, uint64_t seed = 0xcbf29ce484222325ull);
uint64_t hash_file(const std::string& path);  // InputError if it cannot be read
std::string hex64(uint64_t value);

}  // namespace lf
