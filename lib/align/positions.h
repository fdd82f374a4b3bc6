// Position alignment between a student's and a teacher's tokenization of the same example
// (method.md §3): which student position and which teacher position predict the same next text.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/sequence.h"
#include "tokenizer/tokenizer.h"

namespace lf {

// (student position, teacher position) pairs, both strictly increasing, every position a label
// position of its sequence (its next-token target is a response token).
using PositionPairs = std::vector<std::pair<int64_t, int64_t>>;

// method: offsets | exact | dtw | index | span.
//  offsets: positions align where the two tokenizations have a token boundary at the same byte of
//           the response text (0 included); the last token before each common boundary predicts it.
//  exact:   the offsets pairs whose predicted tokens are also the same text (they end at the same
//           byte too, or both are the end of the turn), so a teacher→student vocabulary map points
//           at the student's own next token; what the KL family needs across tokenizers.
//  dtw:     FuseLLM's dynamic-programming alignment of the response tokens' byte strings with edit
//           distance as the cost; each student token is paired with its first matched teacher token.
//  index:   the i-th response prediction of both (DSKD/ULD style).
//  span:    every student label position with the teacher position whose token contains the
//           student token's first byte (span.h); the KL family then projects the teacher's
//           distribution onto the student's next token there.
enum class PositionMethod { kOffsets, kExact, kDtw, kIndex, kSpan };
// The recipe's word (alignment.positions, align --method) as the enum; InputError naming `key` otherwise.
PositionMethod parse_position_method(const std::string& name, const std::string& key = "alignment.positions");
PositionPairs align_positions(const TokenizedSequence& student, const TokenizedSequence& teacher, PositionMethod method,
                              const Tokenizer& student_tokenizer, const Tokenizer& teacher_tokenizer);
// The same, the method by its word (a convenience for the CLI and the tests).
PositionPairs align_positions(const TokenizedSequence& student, const TokenizedSequence& teacher,
                              const std::string& method, const Tokenizer& student_tokenizer,
                              const Tokenizer& teacher_tokenizer);

}  // namespace lf
