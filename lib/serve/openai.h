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

struct ApiRequest {
  bool chat = false;
  bool stream = false, include_usage = false;
  bool echo = false;
  bool return_token_ids = false;
  int64_t prompt_logprobs = -1;  // vLLM: top-K logprobs at every prompt position (-1: none)
  std::string prompt_text;       // the prompt as text (echo)
  GenerationParams generation;   // generation.max_tokens == 0: score the prompt only
};

// Parses and checks a request body against the server (model name, context, fusion).
ApiRequest parse_request(const ServeContext& context, const std::string& body, bool chat);

// Response objects; `id` is the request's id ("cmpl-..."/"chatcmpl-...").
struct Generated {
  std::vector<int64_t> ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per id, when asked
  std::string finish_reason;
};
nlohmann::json completion_response(const ServeContext& context, const ApiRequest& request, const std::string& id,
                                   const Generated& out, const PromptLogprobs* prompt);
// One streamed chunk for a token (text may be empty), and the last one (finish_reason set).
nlohmann::json stream_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id,
                            const std::string& text, const std::vector<int64_t>& ids,
                            const std::vector<TokenLogprobs>& logprobs, const std::string& finish_reason, bool first);
nlohmann::json usage_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id,
                           int64_t completion_tokens);
nlohmann::json models_response(const ServeContext& context);

}  // namespace lf::serve
