#include "align/span.h"

#include <optional>
#include <utility>

namespace lf {

namespace {

// The content token of `s` that contains byte `o`, or -1.
int64_t token_at(const TokenizedSequence& s, int64_t o, int64_t from) {
  for (int64_t k = std::max<int64_t>(from, 0); k < s.content_tokens; ++k) {
    const auto [c, f] = s.content_offsets[k];
    if (c <= o && o < f) return k;
    if (c > o) return -1;
  }
  return -1;
}

bool is_label_position(const TokenizedSequence& s, int64_t p) { return p >= s.first_label_position() && p + 1 < s.length(); }

constexpr size_t kMemoLimit = 1 << 20;

}  // namespace

PositionPairs span_pairs(const TokenizedSequence& student, const TokenizedSequence& teacher) {
  PositionPairs pairs;
  int64_t kt = 0;
  for (int64_t ps = student.first_label_position(); ps + 1 < student.length(); ++ps) {
    const int64_t ks = ps + 1 - student.prompt_length;
    int64_t pt = -1;
    if (ks < student.content_tokens) {
      const auto [o, e] = student.content_offsets[ks];
      if (e <= o) continue;
      const int64_t k = token_at(teacher, o, kt);
      if (k < 0) continue;
      kt = k;
      pt = teacher.prompt_length - 1 + k;
    } else if (ks == student.content_tokens) {
      pt = teacher.prompt_length - 1 + teacher.content_tokens;  // both predict their end of turn
    } else {
      break;  // the rest of a multi-token end of turn has no counterpart
    }
    if (!is_label_position(teacher, pt)) continue;
    pairs.emplace_back(ps, pt);
  }
  return pairs;
}

SpanProjector::SpanProjector(const Tokenizer& student, const Tokenizer& teacher, VocabMap exact_map)
    : student_(student), teacher_(teacher), exact_(std::move(exact_map)), student_index_(bytes_index(student)) {
  teacher_bytes_.resize(teacher.vocab_size());
  for (int64_t id = 0; id < teacher.vocab_size(); ++id)
    if (!teacher.is_special(id)) teacher_bytes_[id] = teacher.id_to_bytes(id);
}

int64_t SpanProjector::first_piece(const std::string& bytes) const {
  if (bytes.empty()) return -1;
  if (auto it = student_index_.find(bytes); it != student_index_.end()) return it->second;
  if (auto it = memo_.find(bytes); it != memo_.end()) return it->second;
  int64_t id = -1;
  try {
    const Encoding enc = student_.encode(bytes, false);
    if (!enc.ids.empty()) id = enc.ids.front();
  } catch (const std::exception&) {
    // Text the student cannot encode (a split UTF-8 character, say) places no mass.
  }
  // Bounded: the texts are alternatives' continuations, which keep coming over a long run.
  if (memo_.size() >= kMemoLimit) memo_.clear();
  memo_.emplace(bytes, id);
  return id;
}

namespace {

// Where a span starts: the student token's end offset `e`, the teacher token's end `f`, its bytes `tb`
// and their already-written part `pre` (before the student token's start). nullopt: no target here.
struct SpanStart {
  bool end_of_turn = false;
  int64_t e = 0, f = 0;
  std::string pre, tb;
};

std::optional<SpanStart> span_start(const Tokenizer& student_tokenizer, const std::vector<std::string>& teacher_bytes,
                                    const TokenizedSequence& student, const TokenizedSequence& teacher, int64_t ps,
                                    int64_t pt) {
  SpanStart s;
  const int64_t ks = ps + 1 - student.prompt_length;
  const int64_t kt = pt + 1 - teacher.prompt_length;
  s.end_of_turn = ks == student.content_tokens;
  if (s.end_of_turn) {
    if (kt != teacher.content_tokens) return std::nullopt;
    return s;
  }
  if (ks < 0 || ks >= student.content_tokens || kt < 0 || kt >= teacher.content_tokens) return std::nullopt;
  const auto [o, end] = student.content_offsets[ks];
  s.e = end;
  if (static_cast<int64_t>(student_tokenizer.id_to_bytes(student.ids[ps + 1]).size()) != s.e - o) return std::nullopt;
  s.f = teacher.content_offsets[kt].second;
  s.tb = teacher_bytes.at(teacher.ids[pt + 1]);
  // The token's bytes end where its offsets end; what lies before byte o is already written.
  const int64_t pre_len = static_cast<int64_t>(s.tb.size()) - (s.f - o);
  if (s.f <= o || pre_len < 0) return std::nullopt;
  s.pre = s.tb.substr(0, pre_len);
  return s;
}

}  // namespace

SpanTarget SpanProjector::project(const TokenizedSequence& student, const TokenizedSequence& teacher, int64_t ps,
                                  int64_t pt, const TeacherRows& rows) const {
  SpanTarget out;
  std::optional<SpanStart> start = span_start(student_, teacher_bytes_, student, teacher, ps, pt);
  if (!start) return out;
  int64_t kt = pt + 1 - teacher.prompt_length;
  const int64_t s_id = student.ids[ps + 1];
  const bool end_of_turn = start->end_of_turn;
  const int64_t e = start->e;
  int64_t f = start->f;
  std::string pre = std::move(start->pre);  // the committed part of the current teacher token
  std::string tb = std::move(start->tb);    // the bytes of the current teacher token

  std::string written;  // text from the student token's start, written along the teacher's path
  double path = 1.0;    // mass reaching this step (unnormalised on the first step)
  const int64_t vt = static_cast<int64_t>(teacher_bytes_.size());
  for (int64_t p = pt, step = 0;; ++p, ++step) {
    const int64_t r = p - teacher.first_label_position();
    if (r < 0 || r >= rows.rows) break;
    const int64_t actual = teacher.ids[p + 1];
    const bool reaches = end_of_turn || f >= e;
    const bool whole = pre.empty() && written.empty();
    std::vector<std::pair<int64_t, double>> entries;
    double placed = 0, on_path = 0;
    const double* probs = rows.probs + r * rows.width;
    const int64_t* ids = rows.ids ? rows.ids + r * rows.width : nullptr;
    for (int64_t i = 0; i < rows.width; ++i) {
      const double pv = probs[i];
      const int64_t v = ids ? ids[i] : i;
      if (!(pv > 0) || v < 0 || v >= vt) continue;
      if (v == actual) {
        on_path = pv;
        placed += pv;
        if (reaches) entries.emplace_back(s_id, pv);
        continue;
      }
      int64_t u = -1;
      const std::string& bv = teacher_bytes_[v];
      if (whole) {
        u = v < static_cast<int64_t>(exact_.to_student.size()) ? exact_.to_student[v] : -1;
        if (u < 0) u = first_piece(bv);
      } else if (bv.empty()) {
        // A special token after written text (the teacher ends the turn there): the student would
        // start the written text with its first piece.
        if (pre.empty()) u = first_piece(written);
      } else if (bv.size() > pre.size() && bv.compare(0, pre.size(), pre) == 0) {
        u = first_piece(written + bv.substr(pre.size()));
      }
      if (u < 0) continue;
      placed += pv;
      entries.emplace_back(u, pv);
    }
    if (!(placed > 0)) break;
    const double scale = step == 0 ? 1.0 : path / placed;
    for (const auto& [u, m] : entries) {
      out.ids.push_back(u);
      out.mass.push_back(m * scale);
    }
    if (reaches || !(on_path > 0)) break;
    path = step == 0 ? on_path : path * on_path / placed;
    // Go on to the teacher's next token, with this one's uncommitted bytes written.
    written += tb.substr(pre.size());
    pre.clear();
    if (++kt >= teacher.content_tokens) break;
    const auto [c, next_f] = teacher.content_offsets[kt];
    tb = teacher_bytes_.at(teacher.ids[p + 2]);
    if (c != f || static_cast<int64_t>(tb.size()) != next_f - c) break;
    f = next_f;
  }
  return out;
}

}  // namespace lf
