// Span-level alignment for the KL family (alignment.positions: span; docs/training.md, "Span
// alignment"): every response position of the student gets the teacher's distribution over the
// student's own next token, so positions where the two tokenizers cut the same text differently
// keep the teacher's signal instead of dropping it (`exact`) or asking for the teacher's token
// (`offsets`).
//
// For a student token s starting at byte o and ending at byte e of the response, the teacher
// token t_j covering byte o (bytes [c, f)) has already written text[c, o) (the committed part).
// The teacher's next-token distribution at t_j, conditioned on that part, is pushed onto student
// ids: an alternative v ≠ t_j continues the text with the rest of its bytes r, which the student
// would start with first_piece(r); the actual token t_j leads to s when f ≥ e, and otherwise the
// walk goes on to the teacher's next position with the text text[o, f) already written (chain
// rule along the teacher's tokenization of the response). Probabilities are the teacher's top-k
// (or full) distribution at each of its positions; mass that cannot be placed (an alternative
// ending exactly at o, a special token with no student counterpart) is left out of that step's
// normalisation. With identical tokenizers every step is one token and this is the exact
// vocabulary map's KL, term for term.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "align/positions.h"
#include "align/vocab_map.h"
#include "data/sequence.h"
#include "tokenizer/tokenizer.h"

namespace lf {

// One sequence's teacher distributions at its label positions, row r = position − first label
// position: `probs` [rows, width], `ids` the same shape, or null when row i is the full
// vocabulary (column = id).
struct TeacherRows {
  const double* probs = nullptr;
  const int64_t* ids = nullptr;
  int64_t rows = 0, width = 0;
};

// The teacher's (unnormalised) mass on student ids at one student position; empty: no signal.
// Masses sum to the teacher mass the first step could place; the loss normalises each row.
struct SpanTarget {
  std::vector<int64_t> ids;
  std::vector<double> mass;
};

// The (student position, teacher position) pairs of span alignment: each student label position
// with the teacher position that predicts the teacher token containing the student token's first
// byte (the end-of-turn prediction paired with the teacher's). Positions whose token offsets do not
// describe its bytes (byte-fallback pieces of one character) are left out.
PositionPairs span_pairs(const TokenizedSequence& student, const TokenizedSequence& teacher);

class SpanProjector {
 public:
  // `exact_map`: teacher id -> student id for whole tokens (build_vocab_map(..., "exact")), which
  // also links the special tokens.
  SpanProjector(const Tokenizer& student, const Tokenizer& teacher, VocabMap exact_map);

  // The target of student position `ps`, paired with teacher position `pt` by span_pairs.
  SpanTarget project(const TokenizedSequence& student, const TokenizedSequence& teacher, int64_t ps, int64_t pt,
                     const TeacherRows& rows) const;

  // The student token its tokenizer starts `bytes` with: the token with exactly these bytes, else
  // the first token of its encoding; -1 for empty text or text it cannot encode. Memoised.
  int64_t first_piece(const std::string& bytes) const;

 private:
  const Tokenizer& student_;
  const Tokenizer& teacher_;
  VocabMap exact_;
  std::unordered_map<std::string, int64_t> student_index_;
  std::vector<std::string> teacher_bytes_;  // "" for special tokens
  mutable std::unordered_map<std::string, int64_t> memo_;
};

}  // namespace lf
