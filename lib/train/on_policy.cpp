#include "train/on_policy.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "decode/generate.h"
#include "decode/session.h"

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
    o.eos_ids = stop_token_ids(*student.tokenizer, student.chat_template);
    o.pad_id = student.pad_id();
    o.tokenizer = student.tokenizer.get();
    completions = generate(set, prompts, o);
    student.model->train();
  }

  auto out = std::make_unique<OnPolicyBatch>();
  const size_t S = teachers.size();
  out->teachers.resize(S);
  std::vector<int64_t> lines;
  for (size_t r = 0; r < indices.size(); ++r) {
    Example ex = data.example(indices[r]);
    ex.messages.back().content = completions[r].text;
    std::vector<TokenizedSequence> mine;
    try {
      if (completions[r].text.empty()) throw InputError("empty completion");
      mine.push_back(tokenize_example(ex, *student.tokenizer, student.chat_template, options.truncation));
      for (const auto* t : teachers) mine.push_back(tokenize_example(ex, *t->tokenizer, t->chat_template, options.truncation));
    } catch (const InputError&) {
      ++out->dropped;  // nothing to distil on this row
      continue;
    }
    out->student.push_back(std::move(mine[0]));
    for (size_t s = 0; s < S; ++s) out->teachers[s].push_back(std::move(mine[s + 1]));
    lines.push_back(ex.line);
  }
  if (out->student.empty()) return nullptr;

  // Collate only now: the vectors above no longer grow, so the row pointers stay valid.
  std::vector<const TokenizedSequence*> rows;
  for (const auto& seq : out->student) rows.push_back(&seq);
  out->micro.student = collate(rows, student.pad_id());
  out->micro.lines = lines;
  for (size_t s = 0; s < S; ++s) {
    std::vector<const TokenizedSequence*> teacher_rows;
    std::vector<PositionPairs> pairs;
    for (size_t r = 0; r < out->student.size(); ++r) {
      teacher_rows.push_back(&out->teachers[s][r]);
      pairs.push_back(align_positions(out->student[r], out->teachers[s][r], options.position_alignment,
                                      *student.tokenizer, *teachers[s]->tokenizer));
    }
    out->micro.teachers.push_back(collate(teacher_rows, teachers[s]->pad_id()));
    out->micro.pairs.push_back(std::move(pairs));
  }
  return out;
}

}  // namespace lf
