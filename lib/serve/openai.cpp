#include "serve/openai.h"

#include <ATen/ATen.h>

#include <chrono>
#include <random>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lf::serve {

using nlohmann::json;

namespace {

// Largest top_logprobs / logprobs OpenAI accepts; prompt_logprobs (a teacher's top-k) may go further.
constexpr int64_t kMaxTopLogprobs = 20;
constexpr int64_t kMaxPromptLogprobs = 1024;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, param.empty() ? message : "'" + param + "': " + message, param);
}

// Typed readers of optional fields: absent or null leaves the default.
bool has(const json& body, const char* key) { return body.contains(key) && !body[key].is_null(); }

bool read_bool(const json& body, const char* key, bool fallback) {
  if (!has(body, key)) return fallback;
  if (!body[key].is_boolean()) bad(key, "expected a boolean");
  return body[key].get<bool>();
}

int64_t read_int(const json& body, const char* key, int64_t fallback, int64_t min, int64_t max) {
  if (!has(body, key)) return fallback;
  if (!body[key].is_number_integer()) bad(key, "expected an integer");
  const int64_t v = body[key].get<int64_t>();
  if (v < min || v > max) bad(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "] (got " + std::to_string(v) + ")");
  return v;
}

double read_number(const json& body, const char* key, double fallback, double min, double max) {
  if (!has(body, key)) return fallback;
  if (!body[key].is_number()) bad(key, "expected a number");
  const double v = body[key].get<double>();
  if (!(v >= min && v <= max)) bad(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  return v;
}

std::string content_text(const json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad(where, "expected a string or an array of text parts");
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      bad(where, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<Message> read_messages(const json& body) {
  if (!body.contains("messages")) bad("messages", "required");
  const json& m = body["messages"];
  if (!m.is_array() || m.empty()) bad("messages", "expected a non-empty array");
  std::vector<Message> out;
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string where = "messages." + std::to_string(i);
    if (!m[i].is_object() || !m[i].contains("role") || !m[i]["role"].is_string()) bad(where, "expected {\"role\", \"content\"}");
    std::string role = m[i]["role"].get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant") bad(where + ".role", "unknown role '" + role + "'");
    out.push_back({role, content_text(m[i].contains("content") ? m[i]["content"] : json(), where + ".content")});
  }
  if (out.back().role != "user") bad("messages", "the last message must be the user's (the reply is generated after it)");
  return out;
}

// A completions prompt: a string, token ids, or a list holding exactly one of those.
std::vector<int64_t> read_prompt(const ServeContext& context, const json& body, std::string& text) {
  if (!body.contains("prompt")) bad("prompt", "required");
  json p = body["prompt"];
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array())) p = json(p[0]);
  if (p.is_string()) {
    text = p.get<std::string>();
    // As transformers' tokenizer(text) starts it (Gemma's BOS, ...), as vLLM does for completions.
    return tokenizer.encode(text, /*add_special_tokens=*/true).ids;
  }
  if (!p.is_array() || p.empty()) bad("prompt", "expected a string or a non-empty array of token ids (one prompt per request)");
  std::vector<int64_t> ids;
  for (const auto& v : p) {
    if (!v.is_number_integer()) bad("prompt", "expected a string or token ids (one prompt per request)");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= context.session->set.vocab)
      bad("prompt", "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(context.session->set.vocab) + ")");
    ids.push_back(id);
  }
  text = tokenizer.decode(ids);
  return ids;
}

std::vector<std::string> read_stop(const json& body, std::vector<std::string> fallback) {
  if (!has(body, "stop")) return fallback;
  const json& s = body["stop"];
  if (s.is_string()) return {s.get<std::string>()};
  if (!s.is_array()) bad("stop", "expected a string or an array of strings");
  std::vector<std::string> out;
  for (const auto& v : s) {
    if (!v.is_string()) bad("stop", "expected a string or an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

RequestFusion read_fusion(const ModelSet& set, const json& body) {
  RequestFusion fusion = default_fusion(set);
  if (!has(body, "fusion")) return fusion;
  const json& f = body["fusion"];
  const bool loaded_fusion = set.large && set.base && !set.experts.empty();
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) bad("fusion", what + " (this server runs strategy '" + set.fusion.strategy + "')");
  };
  if (f.is_string()) {
    const std::string s = f.get<std::string>();
    if (s == "off" || s == "large_only") {
      need(set.large.has_value(), "'off' needs the large model, which this server did not load");
      fusion.spec.strategy = "large_only";
      fusion.experts.clear();
    } else if (s != "default") {
      bad("fusion", "expected \"off\", \"default\" or an object {strategy, static_alpha, expert, multi_expert}");
    }
    return fusion;
  }
  if (!f.is_object()) bad("fusion", "expected \"off\", \"default\" or an object {strategy, static_alpha, expert, multi_expert}");
  for (const auto& [key, value] : f.items())
    if (key != "strategy" && key != "static_alpha" && key != "alpha" && key != "expert" && key != "multi_expert")
      bad("fusion." + key, "unknown field (known: strategy, static_alpha, expert, multi_expert)");
  if (has(f, "strategy")) {
    if (!f["strategy"].is_string()) bad("fusion.strategy", "expected a string");
    std::string s = f["strategy"].get<std::string>();
    if (s == "off") s = "large_only";
    if (s != "dynamic" && s != "static" && s != "large_only" && s != "expert_only")
      bad("fusion.strategy", "unknown strategy '" + s + "' (dynamic, static, large_only, expert_only, off)");
    fusion.spec.strategy = s;
  } else if (has(f, "static_alpha") || has(f, "alpha")) {
    fusion.spec.strategy = "static";
  }
  const std::string& s = fusion.spec.strategy;
  if (s == "dynamic" || s == "static") need(loaded_fusion, "strategy '" + s + "' needs the large, base and expert models");
  if (s == "large_only") need(set.large.has_value(), "strategy 'large_only' needs the large model");
  if (s == "expert_only") need(!set.experts.empty(), "strategy 'expert_only' needs an expert");
  for (const char* key : {"static_alpha", "alpha"})
    if (has(f, key)) {
      if (!f[key].is_number()) bad(std::string("fusion.") + key, "expected a number");
      fusion.spec.static_alpha = f[key].get<double>();
    }
  if (has(f, "multi_expert")) {
    if (!f["multi_expert"].is_string()) bad("fusion.multi_expert", "expected a string");
    const std::string m = f["multi_expert"].get<std::string>();
    if (m != "sum" && m != "active" && m != "closest" && m != "route")
      bad("fusion.multi_expert", "unknown criterion '" + m + "' (sum, active, closest, route)");
    fusion.spec.multi_expert = m;
  }
  if (s == "large_only") fusion.experts.clear();
  if (has(f, "expert")) {
    if (!f["expert"].is_string()) bad("fusion.expert", "expected an expert's name");
    const std::string name = f["expert"].get<std::string>();
    size_t i = 0;
    while (i < set.experts.size() && set.experts[i].name != name) ++i;
    if (i == set.experts.size()) bad("fusion.expert", "no expert named '" + name + "' is loaded");
    fusion.experts = {i};
  }
  return fusion;
}

// Refuses what the server does not do rather than ignoring it.
void refuse_unsupported(const json& body) {
  if (read_int(body, "n", 1, 1, 1) != 1) bad("n", "only n = 1 is supported");
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (read_number(body, key, 0.0, -2.0, 2.0) != 0.0) bad(key, "penalties are not supported (leave at 0)");
  if (has(body, "logit_bias") && !(body["logit_bias"].is_object() && body["logit_bias"].empty()))
    bad("logit_bias", "not supported");
  for (const char* key : {"tools", "functions", "response_format", "suffix"})
    if (has(body, key)) bad(key, "not supported");
  if (read_int(body, "best_of", 1, 1, 1) != 1) bad("best_of", "only best_of = 1 is supported");
}

std::string token_text(const Tokenizer& tokenizer, int64_t id) { return tokenizer.decode({id}); }

json bytes_of(const std::string& s) {
  json out = json::array();
  for (unsigned char c : s) out.push_back(static_cast<int>(c));
  return out;
}

// Logprobs of generated tokens: the completions shape (tokens, token_logprobs, top_logprobs,
// text_offset) or the chat shape (content: [{token, logprob, bytes, top_logprobs}]).
json logprobs_json(const ApiRequest& request, const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                   const std::vector<TokenLogprobs>& logprobs, int64_t text_offset) {
  if (request.generation.top_logprobs < 0 || logprobs.empty()) return nullptr;
  if (request.chat) {
    json content = json::array();
    for (size_t i = 0; i < ids.size() && i < logprobs.size(); ++i) {
      const std::string t = token_text(tokenizer, ids[i]);
      json top = json::array();
      for (const auto& [id, lp] : logprobs[i].top) {
        const std::string s = token_text(tokenizer, id);
        top.push_back({{"token", s}, {"logprob", lp}, {"bytes", bytes_of(s)}});
      }
      content.push_back({{"token", t}, {"logprob", logprobs[i].logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  for (size_t i = 0; i < ids.size() && i < logprobs.size(); ++i) {
    const std::string t = token_text(tokenizer, ids[i]);
    tokens.push_back(t);
    token_logprobs.push_back(logprobs[i].logprob);
    json top = json::object();
    for (const auto& [id, lp] : logprobs[i].top) top[token_text(tokenizer, id)] = lp;
    top_logprobs.push_back(top);
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(t.size());
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", offsets}};
}

// vLLM's prompt_logprobs: null for the first token, then per position {"id": {logprob, rank,
// decoded_token}} over the top K and the prompt's own token.
json prompt_logprobs_json(const Tokenizer& tokenizer, const PromptLogprobs& p) {
  json out = json::array({nullptr});
  for (int64_t pos = 0; pos + 1 < static_cast<int64_t>(p.ids.size()); ++pos) {
    json entry = json::object();
    if (p.top_ids.defined())
      for (int64_t j = 0; j < p.top_ids.size(1); ++j) {
        const int64_t id = p.top_ids[pos][j].item<int64_t>();
        entry[std::to_string(id)] = {{"logprob", p.top_logprobs[pos][j].item<double>()},
                                     {"rank", j + 1},
                                     {"decoded_token", token_text(tokenizer, id)}};
      }
    const int64_t id = p.ids[pos + 1];
    entry[std::to_string(id)] = {{"logprob", p.token_logprob[pos].item<double>()},
                                 {"rank", p.token_rank[pos].item<int64_t>()},
                                 {"decoded_token", token_text(tokenizer, id)}};
    out.push_back(entry);
  }
  return out;
}

json usage(const ApiRequest& request, int64_t completion_tokens) {
  const int64_t prompt = static_cast<int64_t>(request.generation.prompt.size());
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt + completion_tokens}};
}

}  // namespace

ApiError::ApiError(int status, std::string message, std::string param, std::string type)
    : std::runtime_error(std::move(message)), status(status), param(std::move(param)), type(std::move(type)) {
  if (this->type.empty())
    this->type = status == 404 ? "NotFoundError" : status == 429 ? "RateLimitError" : status >= 500 ? "InternalServerError" : "BadRequestError";
}

json ApiError::body() const {
  return {{"error", {{"message", what()}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)}, {"code", status}}}};
}

ApiRequest parse_request(const ServeContext& context, const std::string& text, bool chat) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ApiError(400, "the body must be a JSON object");
  if (has(body, "model")) {
    if (!body["model"].is_string()) bad("model", "expected a string");
    if (body["model"].get<std::string>() != context.model_name)
      throw ApiError(404, "The model '" + body["model"].get<std::string>() + "' does not exist (this server serves '" +
                              context.model_name + "')", "model", "NotFoundError");
  }
  refuse_unsupported(body);
  const Session& session = *context.session;
  ApiRequest r;
  r.chat = chat;
  r.stream = read_bool(body, "stream", false);
  if (has(body, "stream_options")) {
    if (!body["stream_options"].is_object()) bad("stream_options", "expected an object");
    r.include_usage = read_bool(body["stream_options"], "include_usage", false);
  }
  r.return_token_ids = read_bool(body, "return_token_ids", false);
  GenerationParams& g = r.generation;
  if (chat) {
    g.prompt = encode_messages(session, read_messages(body));
    if (read_bool(body, "logprobs", false)) g.top_logprobs = read_int(body, "top_logprobs", 0, 0, kMaxTopLogprobs);
    else if (has(body, "top_logprobs")) bad("top_logprobs", "needs logprobs: true");
  } else {
    g.prompt = read_prompt(context, body, r.prompt_text);
    g.top_logprobs = read_int(body, "logprobs", -1, 0, kMaxTopLogprobs);
    r.echo = read_bool(body, "echo", false);
    r.prompt_logprobs = read_int(body, "prompt_logprobs", -1, 0, kMaxPromptLogprobs);
  }
  if (g.prompt.empty()) bad(chat ? "messages" : "prompt", "the prompt has no tokens");
  const int64_t prompt = static_cast<int64_t>(g.prompt.size());
  if (prompt >= context.max_context && !(prompt == context.max_context && r.prompt_logprobs >= 0))
    bad(chat ? "messages" : "prompt", "the prompt has " + std::to_string(prompt) + " tokens; this model's context is " +
                                         std::to_string(context.max_context) + " (prompt and completion together)");
  const int64_t room = context.max_context - prompt;
  const int64_t fallback = std::min(session.options.max_new_tokens, room);
  const char* max_key = has(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  g.max_tokens = read_int(body, max_key, fallback, 0, std::numeric_limits<int32_t>::max());
  if (g.max_tokens == 0 && (chat || !r.echo)) bad(max_key, "0 is only for /v1/completions with echo (scoring the prompt)");
  if (g.max_tokens > room)
    bad(max_key, std::to_string(prompt) + " prompt tokens + " + std::to_string(g.max_tokens) +
                     " to generate exceed this model's context of " + std::to_string(context.max_context));
  if (g.max_tokens == 0 && r.stream) bad("stream", "a scoring request (max_tokens 0) is not streamed");
  // Sampling: the server's config for what the request leaves out.
  g.sampling = session.options.sampling;
  g.sampling.temperature = read_number(body, "temperature", g.sampling.temperature, 0.0, 2.0);
  g.sampling.top_p = read_number(body, "top_p", g.sampling.top_p, 0.0, 1.0);
  if (g.sampling.top_p <= 0) bad("top_p", "must be in (0, 1]");
  const int64_t top_k = read_int(body, "top_k", g.sampling.top_k, -1, std::numeric_limits<int32_t>::max());
  g.sampling.top_k = top_k < 0 ? 0 : top_k;
  if (has(body, "seed")) {
    g.sampling.seed = read_int(body, "seed", 0, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  } else if (g.sampling.temperature > 0) {
    static thread_local std::mt19937_64 random{std::random_device{}()};
    g.sampling.seed = static_cast<int64_t>(random() >> 1);
  }
  g.stop = read_stop(body, session.options.stop);
  g.ignore_eos = read_bool(body, "ignore_eos", false);
  g.fusion = read_fusion(session.set, body);
  return r;
}

json completion_response(const ServeContext& context, const ApiRequest& request, const std::string& id,
                         const Generated& out, const PromptLogprobs* prompt) {
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  json choice = {{"index", 0}, {"finish_reason", out.finish_reason.empty() ? json(nullptr) : json(out.finish_reason)}};
  if (request.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", out.text}};
    choice["logprobs"] = logprobs_json(request, tokenizer, out.ids, out.logprobs, 0);
  } else {
    const std::string echo = request.echo ? request.prompt_text : std::string();
    choice["text"] = echo + out.text;
    choice["logprobs"] = logprobs_json(request, tokenizer, out.ids, out.logprobs, static_cast<int64_t>(echo.size()));
    if (prompt) choice["prompt_logprobs"] = prompt_logprobs_json(tokenizer, *prompt);
  }
  if (request.return_token_ids || prompt) choice["prompt_token_ids"] = request.generation.prompt;
  if (request.return_token_ids) choice["token_ids"] = out.ids;
  return {{"id", id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", json::array({choice})},
          {"usage", usage(request, static_cast<int64_t>(out.ids.size()))}};
}

json stream_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id, const std::string& text,
                  const std::vector<int64_t>& ids, const std::vector<TokenLogprobs>& logprobs,
                  const std::string& finish_reason, bool first) {
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  json choice = {{"index", 0}, {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (request.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs_json(request, tokenizer, ids, logprobs, 0);
  if (request.return_token_ids) choice["token_ids"] = ids;
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", json::array({choice})}};
}

json usage_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id, int64_t completion_tokens) {
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", json::array()},
          {"usage", usage(request, completion_tokens)}};
}

json models_response(const ServeContext& context) {
  return {{"object", "list"},
          {"data", json::array({{{"id", context.model_name},
                                 {"object", "model"},
                                 {"created", unix_now()},
                                 {"owned_by", "logitfuse"},
                                 {"max_model_len", context.max_context}}})}};
}

}  // namespace lf::serve
