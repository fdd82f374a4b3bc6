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

// One example tokenized by the student and by each teacher, each teacher aligned to the student.
struct PreparedExample {
  TokenizedSequence student;
  std::vector<TokenizedSequence> teachers;  // [teacher]
  std::vector<PositionPairs> pairs;         // [teacher]
  int64_t line = 0;
};

// The recipe's data.max_length and data.max_prompt_length: how every model's tokens of an example
// are cut, for training, on-policy completions and logits caches alike.
inline Truncation recipe_truncation(const Recipe& recipe) {
  return {recipe.data.max_length, recipe.data.max_prompt_length};
}

// A response that truncation empties (for any model) is an InputError without the location.
PreparedExample prepare_example(const Example& example, const Participant& student,
                                const std::vector<const Participant*>& teachers, const Truncation& truncation,
                                PositionMethod position_alignment);

// The micro-batch of these rows; it points into them, so they must outlive it.
MicroBatch assemble_batch(const std::vector<const PreparedExample*>& rows, int64_t student_pad,
                          const std::vector<int64_t>& teacher_pads);

class FusionData {
 public:
  // An example that a model's truncation empties is an InputError naming file and line, or skipped
  // under skip_invalid (for every model, so all stay in step).
  FusionData(const ExampleSet& examples, const Participant& student, const std::vector<const Participant*>& teachers,
             const Truncation& truncation, PositionMethod position_alignment, bool skip_invalid);

  int64_t size() const { return static_cast<int64_t>(prepared_.size()); }
  std::vector<int64_t> lengths() const;  // the student's, for length bucketing
  MicroBatch batch(const std::vector<int64_t>& indices) const;
  const TokenizedSequence& student_sequence(int64_t i) const { return prepared_[i].student; }
  const Example& example(int64_t i) const { return examples_[i]; }
  // How many of the student's response (label) positions the alignment pairs with teacher `t`: the
  // share of the data that carries that teacher's token-level signal.
  struct Coverage {
    int64_t paired = 0, positions = 0;
  };
  Coverage coverage(size_t t) const;

 private:
  std::vector<PreparedExample> prepared_;
  std::vector<Example> examples_;  // the source of each prepared example (on-policy completions rewrite it)
  int64_t student_pad_ = 0;
  std::vector<int64_t> teacher_pad_;
};

}  // namespace lf
