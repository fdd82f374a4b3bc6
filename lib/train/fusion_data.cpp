#include "train/fusion_data.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lf {

FusionData::FusionData(const ExampleSet& examples, const Participant& student, const std::vector<const Participant*>& teachers,
                       const Truncation& truncation, const std::string& position_alignment, bool skip_invalid) {
  const size_t S = teachers.size();
  teachers_.resize(S);
  pairs_.resize(S);
  student_pad_ = student.pad_id();
  for (const auto* t : teachers) teacher_pad_.push_back(t->pad_id());
  int64_t skipped = 0;
  for (const Example& ex : examples.examples) {
    std::vector<TokenizedSequence> mine;
    try {
      mine.push_back(tokenize_example(ex, *student.tokenizer, student.chat_template, truncation));
      for (const auto* t : teachers) mine.push_back(tokenize_example(ex, *t->tokenizer, t->chat_template, truncation));
    } catch (const InputError& e) {
      if (!skip_invalid)
        throw InputError(examples.path + ":" + std::to_string(ex.line) + ": " + e.what(), "or set data.skip_invalid: true");
      ++skipped;
      continue;
    }
    for (size_t s = 0; s < S; ++s) {
      pairs_[s].push_back(align_positions(mine[0], mine[s + 1], position_alignment, *student.tokenizer, *teachers[s]->tokenizer));
      teachers_[s].push_back(std::move(mine[s + 1]));
    }
    student_.push_back(std::move(mine[0]));
    examples_.push_back(ex);
    lines_.push_back(ex.line);
  }
  if (skipped > 0) spdlog::warn("{}: skipped {} example(s) that truncation left without a response", examples.path, skipped);
  if (student_.empty()) throw InputError(examples.path + ": no usable examples");
}

std::vector<int64_t> FusionData::lengths() const {
  std::vector<int64_t> out;
  for (const auto& s : student_) out.push_back(s.length());
  return out;
}

MicroBatch FusionData::batch(const std::vector<int64_t>& indices) const {
  MicroBatch mb;
  std::vector<const TokenizedSequence*> rows;
  for (int64_t i : indices) {
    rows.push_back(&student_[i]);
    mb.lines.push_back(lines_[i]);
  }
  mb.student = collate(rows, student_pad_);
  for (size_t s = 0; s < teachers_.size(); ++s) {
    std::vector<const TokenizedSequence*> teacher_rows;
    std::vector<PositionPairs> pairs;
    for (int64_t i : indices) {
      teacher_rows.push_back(&teachers_[s][i]);
      pairs.push_back(pairs_[s][i]);
    }
    mb.teachers.push_back(collate(teacher_rows, teacher_pad_[s]));
    mb.pairs.push_back(std::move(pairs));
  }
  return mb;
}

}  // namespace lf
