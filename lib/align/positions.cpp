#include "align/positions.h"

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>

#include "align/span.h"
#include "core/error.h"
#include "core/strings.h"

namespace lf {

namespace {

// Byte boundary -> the position whose prediction starts right after it.
std::map<int64_t, int64_t> boundary_positions(const TokenizedSequence& s) {
  std::map<int64_t, int64_t> out;
  if (s.prompt_length > 0) out[0] = s.prompt_length - 1;
  for (int64_t j = 0; j < s.content_tokens; ++j) {
    const int64_t end = s.content_offsets[j].second;
    if (end <= 0) continue;
    out[end] = s.prompt_length + j;  // later tokens with the same end (byte fallback pieces) win
  }
  return out;
}

bool is_label_position(const TokenizedSequence& s, int64_t p) {
  return p >= s.first_label_position() && p + 1 < s.length();
}

// The byte where the token predicted at position p ends; -1 when it is past the content (end of turn).
int64_t next_token_end(const TokenizedSequence& s, int64_t p) {
  const int64_t k = p + 1 - s.prompt_length;
  return k >= 0 && k < s.content_tokens ? s.content_offsets[k].second : -1;
}

PositionPairs by_offsets(const TokenizedSequence& student, const TokenizedSequence& teacher, bool exact) {
  const auto a = boundary_positions(student), b = boundary_positions(teacher);
  PositionPairs pairs;
  for (const auto& [byte, ps] : a) {
    auto it = b.find(byte);
    if (it == b.end()) continue;
    const int64_t pt = it->second;
    if (!is_label_position(student, ps) || !is_label_position(teacher, pt)) continue;
    if (exact && next_token_end(student, ps) != next_token_end(teacher, pt)) continue;
    if (!pairs.empty() && (ps <= pairs.back().first || pt <= pairs.back().second)) continue;
    pairs.emplace_back(ps, pt);
  }
  return pairs;
}

PositionPairs by_index(const TokenizedSequence& student, const TokenizedSequence& teacher) {
  PositionPairs pairs;
  const int64_t n = std::min(student.label_count(), teacher.label_count());
  for (int64_t i = 0; i < n; ++i) pairs.emplace_back(student.first_label_position() + i, teacher.first_label_position() + i);
  return pairs;
}

PositionPairs by_dtw(const TokenizedSequence& student, const TokenizedSequence& teacher, const Tokenizer& st,
                     const Tokenizer& tt) {
  // Response tokens (content and end-of-turn) of both, as bytes.
  const int64_t n = student.length() - student.prompt_length, m = teacher.length() - teacher.prompt_length;
  if (n <= 0 || m <= 0) return {};
  std::vector<std::string> a(n), b(m);
  for (int64_t i = 0; i < n; ++i) a[i] = st.id_to_bytes(student.ids[student.prompt_length + i]);
  for (int64_t j = 0; j < m; ++j) b[j] = tt.id_to_bytes(teacher.ids[teacher.prompt_length + j]);
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> cost(n + 1, std::vector<double>(m + 1, inf));
  cost[0][0] = 0;
  for (int64_t i = 1; i <= n; ++i)
    for (int64_t j = 1; j <= m; ++j) {
      const double d = static_cast<double>(edit_distance(a[i - 1], b[j - 1]));
      cost[i][j] = d + std::min({cost[i - 1][j], cost[i][j - 1], cost[i - 1][j - 1]});
    }
  // Walk back from the end; remember, for each student token, the first teacher token on the path.
  std::vector<int64_t> match(n, -1);
  int64_t i = n, j = m;
  while (i > 0 && j > 0) {
    match[i - 1] = j - 1;
    const double diag = cost[i - 1][j - 1], up = cost[i - 1][j], left = cost[i][j - 1];
    if (diag <= up && diag <= left) { --i; --j; }
    else if (up <= left) { --i; }
    else { --j; }
  }
  PositionPairs pairs;
  for (int64_t k = 0; k < n; ++k) {
    if (match[k] < 0) continue;
    // Token k of the response is predicted at prompt_length - 1 + k.
    const int64_t ps = student.prompt_length - 1 + k, pt = teacher.prompt_length - 1 + match[k];
    if (!is_label_position(student, ps) || !is_label_position(teacher, pt)) continue;
    if (!pairs.empty() && (ps <= pairs.back().first || pt <= pairs.back().second)) continue;
    pairs.emplace_back(ps, pt);
  }
  return pairs;
}

}  // namespace

PositionMethod parse_position_method(const std::string& name, const std::string& key) {
  if (name == "offsets") return PositionMethod::kOffsets;
  if (name == "exact") return PositionMethod::kExact;
  if (name == "dtw") return PositionMethod::kDtw;
  if (name == "index") return PositionMethod::kIndex;
  if (name == "span") return PositionMethod::kSpan;
  throw InputError(key + ": unknown method '" + name + "'", "one of offsets, exact, dtw, index, span");
}

PositionPairs align_positions(const TokenizedSequence& student, const TokenizedSequence& teacher, PositionMethod method,
                              const Tokenizer& student_tokenizer, const Tokenizer& teacher_tokenizer) {
  switch (method) {
    case PositionMethod::kOffsets: return by_offsets(student, teacher, /*exact=*/false);
    case PositionMethod::kExact: return by_offsets(student, teacher, /*exact=*/true);
    case PositionMethod::kIndex: return by_index(student, teacher);
    case PositionMethod::kDtw: return by_dtw(student, teacher, student_tokenizer, teacher_tokenizer);
    case PositionMethod::kSpan: return span_pairs(student, teacher);
  }
  throw std::logic_error("align_positions: no such method");
}

PositionPairs align_positions(const TokenizedSequence& student, const TokenizedSequence& teacher, const std::string& method,
                              const Tokenizer& student_tokenizer, const Tokenizer& teacher_tokenizer) {
  return align_positions(student, teacher, parse_position_method(method), student_tokenizer, teacher_tokenizer);
}

}  // namespace lf
