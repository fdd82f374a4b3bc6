// One example rendered with a model's chat template and tokenized with its tokenizer, truncated to
// the recipe's lengths, with what the loss (labels) and the alignment layer (offsets) need.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/examples.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lf {

struct Truncation {
  int64_t max_length = 2048;
  int64_t max_prompt_length = 1024;
};

struct TokenizedSequence {
  std::vector<int64_t> ids;     // prompt tokens, then response tokens
  int64_t prompt_length = 0;    // index of the first response token
  int64_t content_tokens = 0;   // how many response tokens are the assistant content (then end-of-turn tokens)
  // Byte offsets of the content tokens in the response content text (the same text for every model).
  std::vector<std::pair<int64_t, int64_t>> content_offsets;

  int64_t length() const { return static_cast<int64_t>(ids.size()); }
  // Positions whose next-token target is a response token: [first_label_position, length - 1).
  int64_t first_label_position() const { return prompt_length > 0 ? prompt_length - 1 : 0; }
  int64_t label_count() const { return length() - 1 - first_label_position(); }
};

// Prompt and response are tokenized separately, so response offsets are relative to the content
// and identical text gives identical boundaries in every model. Truncation: if the example is too
// long, the prompt keeps its last max_prompt_length tokens; if it is still too long, the response
// is cut at the end. A response cut away entirely is an InputError.
TokenizedSequence tokenize_example(const Example& example, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                   const Truncation& truncation);

}  // namespace lf
