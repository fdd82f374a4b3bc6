// Everything a `generate` or `eval` run decodes with, built once from its config: the model set,
// the chat template, the tokenizer's stop ids and the generation options; plus the prompt and
// completion JSONL formats and the --trace writer.
#pragma once

#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "decode/config.h"
#include "decode/generate.h"
#include "decode/model_set.h"
#include "tokenizer/chat_template.h"

namespace lf {

struct Session {
  ModelSet set;
  ChatTemplate chat_template;
  GenerateOptions options;  // tokenizer points into set
  std::string strategy;     // for reports: the fusion strategy, or "model" for a plain model
  std::vector<Message> shots;  // in-context examples before every prompt (generation.shots)
};

// Loads the models (checking the shared vocabulary) and resolves the chat template.
std::unique_ptr<Session> open_session(const DecodingConfig& config);

// The prompt as the model sees it: the chat template's generation prompt, BOS if it asks for one;
// the in-context examples (`shots`, else the session's) as user/assistant turns before it.
std::vector<int64_t> encode_prompt(const Session& session, const std::string& prompt, const std::string& system = {},
                                   const std::vector<Message>* shots = nullptr);
// A conversation ending with a user turn, rendered with the generation prompt (serve's chat requests).
std::vector<int64_t> encode_messages(const Session& session, const std::vector<Message>& messages);

// The first `n` worked examples of a JSONL file ({"prompt", "response"} per line) as alternating
// user and assistant messages; fewer lines than `n`, or a malformed line, is an InputError naming it.
std::vector<Message> read_shots(const std::string& path, int64_t n);

// Stop ids: the tokenizer's EOS, and the first token of the template's end-of-turn text when it is
// a special token (e.g. <|im_end|> for chatml), since chat models end a turn with it.
std::vector<int64_t> stop_token_ids(const Tokenizer& tokenizer, const ChatTemplate& chat_template);

struct PromptRecord {
  std::string prompt, system;
  int64_t line = 0;
};

// JSONL {"prompt": str[, "system": str]} per line; a bad line is an InputError naming file:line.
std::vector<PromptRecord> read_prompts(const std::string& path);

// JSONL {"prompt", "completion", "prompt_ids", "completion_ids", "finish_reason"} per line, input order.
void write_completions(const std::string& path, const std::vector<PromptRecord>& prompts,
                       const std::vector<std::vector<int64_t>>& prompt_ids, const std::vector<Completion>& completions);

// A trace callback writing one JSON line per active row and step: {"prompt_index", "step", "token",
// "expert", "alpha", "J"} (expert by name; "all" for static; fields absent when not defined).
class TraceWriter {
 public:
  TraceWriter(const std::string& path, const ModelSet& set);
  void operator()(const TraceStep& step);

 private:
  std::ofstream out_;
  std::vector<std::string> expert_names_;
  std::string path_;
};

}  // namespace lf
