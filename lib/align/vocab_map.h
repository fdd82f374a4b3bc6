// Vocabulary mapping from a teacher's token ids to a student's (method.md §3), for the KL family
// of token losses: `exact` (same bytes after undoing byte-level and SentencePiece spellings) and
// `mined` (closest token by edit distance for the rest). Computed once per tokenizer pair and
// cached on disk, keyed by the hashes of the two tokenizer files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lf {

struct VocabMap {
  std::vector<int64_t> to_student;  // indexed by teacher id: student id, or -1 where none
  int64_t exact = 0;                // teacher ids mapped by identical bytes
  int64_t mined = 0;                // teacher ids mapped by edit distance
};

// method: exact | mined.
VocabMap build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method);

// As build_vocab_map, through a cache file in `cache_dir` (created if needed; "" disables the cache).
VocabMap load_or_build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method,
                                 const std::string& cache_dir);

}  // namespace lf
