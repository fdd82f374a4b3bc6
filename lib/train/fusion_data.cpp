#include "train/fusion_data.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lf {

PreparedExample prepare_example(const Example& example, const Participant& student,
                                const std::vector<const Participant*>& teachers, const Truncation& truncation,
                                PositionMethod position_alignment) {
  PreparedExample out;
  out.line = example.line;
  out.student = tokenize_example(example, *student.tokenizer, student.chat_template, truncation);
  for (const auto* t : teachers) out.teachers.push_back(tokenize_example(example, *t->tokenizer, t->chat_template, truncation));
  for (size_t s = 0; s < teachers.size(); ++s)
    out.pairs.push_back(align_positions(out.student, out.teachers[s], position_alignment, *student.tokenizer,
                                        *teachers[s]->tokenizer));
  return out;
}

MicroBatch assemble_batch(const std::vector<const PreparedExample*>& rows, int64_t student_pad,
                          const std::vector<int64_t>& teacher_pads) {
  MicroBatch mb;
  std::vector<const TokenizedSequence*> student_rows;
  for (const auto* row : rows) {
    student_rows.push_back(&row->student);
    mb.lines.push_back(row->line);
  }
  mb.student = collate(student_rows, student_pad);
  for (size_t s = 0; s < teacher_pads.size(); ++s) {
    std::vector<const TokenizedSequence*> teacher_rows;
    std::vector<PositionPairs> pairs;
    for (const auto* row : rows) {
      teacher_rows.push_back(&row->teachers[s]);
      pairs.push_back(row->pairs[s]);
    }
    mb.teachers.push_back(collate(teacher_rows, teacher_pads[s]));
    mb.pairs.push_back(std::move(pairs));
  }
  return mb;
}

FusionData::FusionData(const ExampleSet& examples, const Participant& student, const std::vector<const Participant*>& teachers,
                       const Truncation& truncation, PositionMethod position_alignment, bool skip_invalid) {
  student_pad_ = student.pad_id();
  for (const auto* t : teachers) teacher_pad_.push_back(t->pad_id());
  int64_t skipped = 0;
  for (const Example& ex : examples.examples) {
    try {
      prepared_.push_back(prepare_example(ex, student, teachers, truncation, position_alignment));
    } catch (const InputError& e) {
      if (!skip_invalid)
        throw InputError(examples.path + ":" + std::to_string(ex.line) + ": " + e.what(), "or set data.skip_invalid: true");
      ++skipped;
      continue;
    }
    examples_.push_back(ex);
  }
  if (skipped > 0) spdlog::warn("{}: skipped {} example(s) that truncation left without a response", examples.path, skipped);
  if (prepared_.empty()) throw InputError(examples.path + ": no usable examples");
}

std::vector<int64_t> FusionData::lengths() const {
  std::vector<int64_t> out;
  for (const auto& p : prepared_) out.push_back(p.student.length());
  return out;
}

FusionData::Coverage FusionData::coverage(size_t t) const {
  Coverage c;
  for (const auto& p : prepared_) {
    c.paired += static_cast<int64_t>(p.pairs[t].size());
    c.positions += p.student.label_count();
  }
  return c;
}

MicroBatch FusionData::batch(const std::vector<int64_t>& indices) const {
  std::vector<const PreparedExample*> rows;
  for (int64_t i : indices) rows.push_back(&prepared_[i]);
  return assemble_batch(rows, student_pad_, teacher_pad_);
}

}  // namespace lf
