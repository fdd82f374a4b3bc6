#include "train/on_policy.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "decode/generate.h"

namespace lf {

std::unique_ptr<OnPolicyBatch> make_on_policy_batch(const FusionData& data, const std::vector<int64_t>& indices,
                                                    const Participant& student,
                                                    const std::vector<const Participant*>& teachers,
                                                    const OnPolicyOptions& options) {
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i : indices) {
    const TokenizedSequence& seq = data.student_sequence(i);
    prompts.emplace_back(seq.ids.begin(), seq.ids.begin() + seq.prompt_length);
  }
  std::vector<Completion> completions;
  {
    at::NoGradGuard no_grad;
    student.model->eval();
    ModelSet set;
    set.large = DecodingModel{student.name, student.dir, student.model, student.device};
    set.fusion.strategy = "large_only";
    set.vocab = student.vocab;
    set.tokenizer = student.tokenizer;
    set.model_dir = student.dir;
    set.device = student.device;
    GenerateOptions o;
    o.max_new_tokens = options.max_new_tokens;
    o.batch_size = static_cast<int64_t>(prompts.size());
    o.eos_ids = options.eos_ids;
    o.pad_id = student.pad_id();
    o.tokenizer = student.tokenizer.get();
    completions = generate(set, prompts, o);
    student.model->train();
  }

  auto out = std::make_unique<OnPolicyBatch>();
  for (size_t r = 0; r < indices.size(); ++r) {
    if (completions[r].text.empty()) {
      ++out->dropped;  // nothing to distil on this row
      continue;
    }
    Example ex = data.example(indices[r]);
    ex.messages.back().content = completions[r].text;
    try {
      out->rows.push_back(prepare_example(ex, student, teachers, options.truncation, options.position_alignment));
    } catch (const InputError&) {
      ++out->dropped;  // truncation left no response
    }
  }
  if (out->rows.empty()) return nullptr;
  // Assembled only now: the rows no longer grow, so the batch's pointers into them stay valid.
  std::vector<const PreparedExample*> rows;
  for (const auto& row : out->rows) rows.push_back(&row);
  std::vector<int64_t> teacher_pads;
  for (const auto* t : teachers) teacher_pads.push_back(t->pad_id());
  out->micro = assemble_batch(rows, student.pad_id(), teacher_pads);
  return out;
}

}  // namespace lf
