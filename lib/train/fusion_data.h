// The fusion data set: every example tokenized by the student and by each teacher (each with its
// own chat template and tokenizer), the position alignment of each teacher to the student, and
// micro-batches of them.
#pragma once

#include <vector>

#include "align/positions.h"
#include "data/batch.h"
#include "data/examples.h"
#include "data/sequence.h"
#include "train/participants.h"

namespace lf {

struct MicroBatch {
  ModelBatch student;
  std::vector<ModelBatch> teachers;
  std::vector<std::vector<PositionPairs>> pairs;  // [teacher][row]
  std::vector<int64_t> lines;                     // data-file line of each row's example
  int64_t sequences() const { return static_cast<int64_t>(student.rows.size()); }
};

class FusionData {
 public:
  // An example that a model's truncation empties is an InputError naming file and line, or skipped
  // under skip_invalid (for every model, so all stay in step).
  FusionData(const ExampleSet& examples, const Participant& student, const std::vector<const Participant*>& teachers,
             const Truncation& truncation, const std::string& position_alignment, bool skip_invalid);

  int64_t size() const { return static_cast<int64_t>(student_.size()); }
  std::vector<int64_t> lengths() const;  // the student's, for length bucketing
  MicroBatch batch(const std::vector<int64_t>& indices) const;
  const TokenizedSequence& student_sequence(int64_t i) const { return student_[i]; }
  const Example& example(int64_t i) const { return examples_[i]; }

 private:
  std::vector<TokenizedSequence> student_;
  std::vector<Example> examples_;
  std::vector<int64_t> lines_;
  std::vector<std::vector<TokenizedSequence>> teachers_;  // [teacher][example]
  std::vector<std::vector<PositionPairs>> pairs_;          // [teacher][example]
  int64_t student_pad_ = 0;
  std::vector<int64_t> teacher_pad_;
};

}  // namespace lf
