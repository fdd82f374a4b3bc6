// OpenAI's wire format for serve: request bodies of /v1/completions and /v1/chat/completions read and
// checked (a bad one is an ApiError with OpenAI's error object), and responses and stream chunks
// written, plus vLLM's extensions a teacher client reads (prompt_logprobs, return_token_ids).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "decode/session.h"
#include "serve/engine.h"

namespace lf::serve {

// An HTTP error answered as {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = {}, std::string type = {});
  int status;
  std::string param, type;
  nlohmann::json body() const;
};

// What the server answers with: its session (models, tokenizer, chat template), its name and limits.
struct ServeContext {
  Session* session = nullptr;
  std::string model_name;
  int64_t max_context = 0;  // prompt + generated tokens
};

// One prompt of a request: its token ids, its text (what `echo` returns) and its token budget.
struct PromptInput {
  std::vector<int64_t> ids;
  std::string text;
  int64_t max_tokens = 0;  // the request's max_tokens, or what fits this prompt's context when it gives none
};

struct ApiRequest {
  bool chat = false;
  bool stream = false, include_usage = false;
  bool echo = false;
  bool return_token_ids = false;
  int64_t prompt_logprobs = -1;     // vLLM: top-K logprobs at every prompt position (-1: none)
  std::vector<PromptInput> prompts;  // completions: one or a batch (one choice each); chat: one
  GenerationParams generation;      // shared by the prompts; `prompt` and `max_tokens` are set per prompt
  // The engine's parameters for prompt `i`.
  GenerationParams params_for(size_t i) const;
  // The top-K that scoring the prompt needs (echo with logprobs, prompt_logprobs), -1 when none.
  int64_t score_k() const;
};

// Parses and checks a request body against the server (model name, context, fusion).
ApiRequest parse_request(const ServeContext& context, const std::string& body, bool chat);

// Parses a request body as JSON, refusing (400) a body nested deeper than kMaxJsonDepth before the
// parser sees it (nlohmann's value type copies and compares recursively: 200,000 levels overflowed
// the stack) and anything but an object.
constexpr int kMaxJsonDepth = 64;
nlohmann::json parse_body(const std::string& body);

// vLLM's tokenizer endpoints (what lm-evaluation-harness's remote tokenizer reads).
nlohmann::json tokenize_response(const ServeContext& context, const std::string& body);
nlohmann::json detokenize_response(const ServeContext& context, const std::string& body);
nlohmann::json tokenizer_info_response(const ServeContext& context);

// Response objects; `id` is the request's id ("cmpl-..."/"chatcmpl-...").
struct Generated {
  std::vector<int64_t> ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per id, when asked (then one more for stop_token)
  std::string finish_reason;
  int64_t stop_token = -1;  // the end-of-sequence token that ended it, when logprobs are asked
};
// One choice per prompt (`outs[i]`, `prompts[i]`: its prompt scoring or nullptr), usage summed.
nlohmann::json completion_response(const ServeContext& context, const ApiRequest& request, const std::string& id,
                                   const std::vector<Generated>& outs, const std::vector<const PromptLogprobs*>& prompts);
// One streamed chunk of choice `index` for a token (text may be empty), and the last one
// (finish_reason set). With echo, the first chunk of a completions choice carries its prompt's text
// (and its logprobs, `prompt` when asked).
nlohmann::json stream_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id, size_t index,
                            const std::string& text, const std::vector<int64_t>& ids,
                            const std::vector<TokenLogprobs>& logprobs, const std::string& finish_reason, bool first,
                            const PromptLogprobs* prompt = nullptr);
nlohmann::json usage_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id,
                           int64_t completion_tokens);
nlohmann::json models_response(const ServeContext& context);

}  // namespace lf::serve
