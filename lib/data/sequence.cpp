#include "data/sequence.h"

#include <algorithm>

#include "core/error.h"

namespace lf {

TokenizedSequence tokenize_example(const Example& example, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                   const Truncation& truncation) {
  const SpecialTokens& special = tokenizer.special_tokens();
  const RenderedChat chat = render_chat(chat_template, example.messages, special.eos_text);

  std::vector<int64_t> prompt;
  if (const auto bos = leading_bos(chat, chat_template, tokenizer)) prompt.push_back(*bos);
  const Encoding prompt_encoding = tokenizer.encode(chat.prompt);
  prompt.insert(prompt.end(), prompt_encoding.ids.begin(), prompt_encoding.ids.end());

  const Encoding content = tokenizer.encode(chat.response);
  std::vector<int64_t> response = content.ids;
  if (!chat.response_suffix.empty()) {
    const Encoding suffix = tokenizer.encode(chat.response_suffix);
    response.insert(response.end(), suffix.ids.begin(), suffix.ids.end());
  }
  if (chat.eos) {
    if (!special.eos) throw InputError("chat template '" + chat_template.name + "' needs an EOS token, and tokenizer " +
                                       tokenizer.source() + " has none");
    response.push_back(*special.eos);
  }

  int64_t prompt_keep = static_cast<int64_t>(prompt.size());
  int64_t response_keep = static_cast<int64_t>(response.size());
  if (prompt_keep + response_keep > truncation.max_length) {
    prompt_keep = std::min(prompt_keep, truncation.max_prompt_length);
    response_keep = std::min(response_keep, truncation.max_length - prompt_keep);
  }
  if (response_keep <= 0 || (prompt_keep == 0 && response_keep < 2))
    throw InputError("truncation to data.max_length=" + std::to_string(truncation.max_length) +
                     " leaves no response token to learn from");

  TokenizedSequence out;
  out.ids.assign(prompt.end() - prompt_keep, prompt.end());
  out.prompt_length = prompt_keep;
  out.ids.insert(out.ids.end(), response.begin(), response.begin() + response_keep);
  out.content_tokens = std::min<int64_t>(response_keep, static_cast<int64_t>(content.ids.size()));
  out.content_offsets.assign(content.offsets.begin(), content.offsets.begin() + out.content_tokens);
  return out;
}

}  // namespace lf
