// Vocabulary mapping from a teacher's token ids to a student's (method.md §3), for the KL family
// of token losses: `exact` (same bytes after undoing byte-level and SentencePiece spellings) and
// `mined` (closest token by edit distance for the rest). Computed once per tokenizer pair and
// cached on disk, keyed by the hashes of the two tokenizer files.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lf {

struct VocabMap {
  std::vector<int64_t> to_student;  // indexed by teacher id: student id, or -1 where none
  int64_t exact = 0;                // teacher ids mapped by identical bytes
  int64_t mined = 0;                // teacher ids mapped by edit distance
};

// A tokenizer's non-special tokens by their bytes; a byte-fallback token (<0x41>) yields to a real
// token with the same bytes.
std::unordered_map<std::string, int64_t> bytes_index(const Tokenizer& tokenizer);

// method: exact | mined.
VocabMap build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method);

// As build_vocab_map, through a cache file in `cache_dir` (created if needed; "" disables the cache).
VocabMap load_or_build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method,
                                 const std::string& cache_dir);

}  // namespace lf
