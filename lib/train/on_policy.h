// On-policy distillation data (loss.on_policy, recipe.h): the student's own greedy completions of a
// micro-batch's prompts, tokenized by the student and by every teacher and aligned exactly as the
// fusion data is, so the distillation terms run on them unchanged.
#pragma once

#include <memory>
#include <vector>

#include "train/fusion_data.h"
#include "train/participants.h"

namespace lf {

struct OnPolicyBatch {
  std::vector<PreparedExample> rows;  // owned: `micro` points into them (the struct is never moved)
  MicroBatch micro;
  int64_t dropped = 0;  // completions that were empty (the student ended at once)
};

struct OnPolicyOptions {
  int64_t max_new_tokens = 128;
  Truncation truncation;
  PositionMethod position_alignment = PositionMethod::kOffsets;
  std::vector<int64_t> eos_ids;  // the student's stop tokens (decode/session.h stop_token_ids)
};

// Generates (greedy, under no-grad, the student in eval mode and back in train mode afterwards) a
// completion of each example's prompt and prepares it for every model. Null when every completion
// was empty.
std::unique_ptr<OnPolicyBatch> make_on_policy_batch(const FusionData& data, const std::vector<int64_t>& indices,
                                                    const Participant& student,
                                                    const std::vector<const Participant*>& teachers,
                                                    const OnPolicyOptions& options);

}  // namespace lf
