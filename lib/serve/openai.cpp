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

// A body's optional "model" must name the served model (404 otherwise, as OpenAI answers).
void check_model(const ServeContext& context, const json& body) {
  if (!has(body, "model")) return;
  if (!body["model"].is_string()) bad("model", "expected a string");
  if (body["model"].get<std::string>() != context.model_name)
    throw ApiError(404, "The model '" + body["model"].get<std::string>() + "' does not exist (this server serves '" +
                            context.model_name + "')", "model", "NotFoundError");
}

std::vector<int64_t> read_ids(const ServeContext& context, const json& p, const std::string& where) {
  std::vector<int64_t> ids;
  ids.reserve(p.size());
  for (const auto& v : p) {
    if (!v.is_number_integer()) bad(where, "expected a string, token ids, or a list of either");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= context.session->set.vocab)
      bad(where, "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(context.session->set.vocab) + ")");
    ids.push_back(id);
  }
  if (ids.empty()) bad(where, "the prompt has no tokens");
  return ids;
}

// A completions prompt as OpenAI takes it: a string, token ids, a list of strings or a list of
// token-id lists (a batch: one choice per prompt, in order).
std::vector<PromptInput> read_prompts(const ServeContext& context, const json& body) {
  if (!body.contains("prompt")) bad("prompt", "required");
  const json& p = body["prompt"];
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  auto from_text = [&](const json& text) {
    PromptInput in;
    in.text = text.get<std::string>();
    // As transformers' tokenizer(text) starts it (Gemma's BOS, ...), as vLLM does for completions.
    in.ids = tokenizer.encode(in.text, /*add_special_tokens=*/true).ids;
    return in;
  };
  auto from_ids = [&](const json& list, const std::string& where) {
    PromptInput in;
    in.ids = read_ids(context, list, where);
    in.text = tokenizer.decode(in.ids);
    return in;
  };
  if (p.is_string()) return {from_text(p)};
  if (!p.is_array() || p.empty()) bad("prompt", "expected a string, token ids, or a non-empty list of either");
  if (p[0].is_number_integer()) return {from_ids(p, "prompt")};
  std::vector<PromptInput> out;
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string where = "prompt." + std::to_string(i);
    if (p[i].is_string()) out.push_back(from_text(p[i]));
    else if (p[i].is_array()) out.push_back(from_ids(p[i], where));
    else bad(where, "expected a string or token ids");
  }
  return out;
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

// Characters (code points) of UTF-8 text: OpenAI's text_offset counts what a client's string indexes.
int64_t characters(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Completions' logprobs object ({tokens, token_logprobs, top_logprobs, text_offset}), a token at a
// time; text_offset as vLLM counts it, each token's text length after the last.
struct CompletionLogprobs {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  int64_t offset = 0;
  void add(const std::string& token, json logprob, json top) {
    tokens.push_back(token);
    token_logprobs.push_back(std::move(logprob));
    top_logprobs.push_back(std::move(top));
    offsets.push_back(offset);
    offset += characters(token);
  }
  json done() const {
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", offsets}};
  }
};

// Generated tokens with their logprobs; `stop_token` (>= 0): the end-of-sequence token after them,
// whose logprobs are the last of `logprobs` (OpenAI and vLLM list it; its text is not in the answer).
void add_generated(CompletionLogprobs& out, const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                   const std::vector<TokenLogprobs>& logprobs, int64_t stop_token = -1) {
  std::vector<int64_t> all = ids;
  if (stop_token >= 0) all.push_back(stop_token);
  for (size_t i = 0; i < all.size() && i < logprobs.size(); ++i) {
    json top = json::object();
    for (const auto& [id, lp] : logprobs[i].top) top[token_text(tokenizer, id)] = lp;
    out.add(token_text(tokenizer, all[i]), logprobs[i].logprob, std::move(top));
  }
}

// The echoed prompt's tokens: the first with null logprobs (nothing predicts it), each later one with
// its logprob and the top `k` of its position plus itself (as OpenAI's legacy API and vLLM answer).
void add_prompt(CompletionLogprobs& out, const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                const PromptLogprobs* scored, int64_t k) {
  if (!scored || scored->ids.size() != ids.size()) throw std::logic_error("echo with logprobs without the prompt scored");
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto token_lp = scored->token_logprob.accessor<float, 1>();
  for (int64_t pos = 0; pos < T; ++pos) {
    const std::string token = token_text(tokenizer, ids[pos]);
    if (pos == 0) {
      out.add(token, nullptr, nullptr);
      continue;
    }
    json top = json::object();
    if (k > 0 && scored->top_ids.defined()) {
      const auto top_ids = scored->top_ids.accessor<int64_t, 2>();
      const auto top_lp = scored->top_logprobs.accessor<float, 2>();
      for (int64_t j = 0; j < std::min<int64_t>(k, scored->top_ids.size(1)); ++j)
        top[token_text(tokenizer, top_ids[pos - 1][j])] = static_cast<double>(top_lp[pos - 1][j]);
    }
    const double lp = token_lp[pos - 1];
    top[token] = lp;
    out.add(token, lp, std::move(top));
  }
}

// Logprobs of generated tokens: the completions shape (above) or the chat shape
// (content: [{token, logprob, bytes, top_logprobs}]).
json logprobs_json(const ApiRequest& request, const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                   const std::vector<TokenLogprobs>& logprobs, int64_t stop_token = -1) {
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
  CompletionLogprobs out;
  add_generated(out, tokenizer, ids, logprobs, stop_token);
  return out.done();
}

// vLLM's prompt_logprobs: null for the first token, then per position {"id": {logprob, rank,
// decoded_token}} over the top K and the prompt's own token.
json prompt_logprobs_json(const Tokenizer& tokenizer, const PromptLogprobs& p, int64_t k) {
  json out = json::array({nullptr});
  for (int64_t pos = 0; pos + 1 < static_cast<int64_t>(p.ids.size()); ++pos) {
    json entry = json::object();
    if (p.top_ids.defined())
      for (int64_t j = 0; j < std::min<int64_t>(k, p.top_ids.size(1)); ++j) {
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

json usage(int64_t prompt, int64_t completion) {
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
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

json parse_body(const std::string& text) {
  // Nesting depth, counted outside strings: '[' and '{' open, ']' and '}' close.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw ApiError(400, "the body nests arrays and objects more than " + std::to_string(kMaxJsonDepth) + " levels deep");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ApiError(400, "the body must be a JSON object");
  return body;
}

ApiRequest parse_request(const ServeContext& context, const std::string& text, bool chat) {
  const json body = parse_body(text);
  check_model(context, body);
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
    r.prompts.push_back({encode_messages(session, read_messages(body)), {}, 0});
    if (read_bool(body, "logprobs", false)) g.top_logprobs = read_int(body, "top_logprobs", 0, 0, kMaxTopLogprobs);
    else if (has(body, "top_logprobs")) bad("top_logprobs", "needs logprobs: true");
  } else {
    r.prompts = read_prompts(context, body);
    g.top_logprobs = read_int(body, "logprobs", -1, 0, kMaxTopLogprobs);
    r.echo = read_bool(body, "echo", false);
    r.prompt_logprobs = read_int(body, "prompt_logprobs", -1, 0, kMaxPromptLogprobs);
  }
  const char* max_key = has(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const std::optional<int64_t> asked =
      has(body, max_key) ? std::optional<int64_t>(read_int(body, max_key, 0, 0, std::numeric_limits<int32_t>::max()))
                         : std::nullopt;
  if (asked == 0 && (chat || !(r.echo || r.prompt_logprobs >= 0)))
    bad(max_key, "0 is only for /v1/completions with echo or prompt_logprobs (scoring the prompt)");
  if (asked == 0 && r.stream) bad("stream", "a scoring request (max_tokens 0) is not streamed");
  for (size_t i = 0; i < r.prompts.size(); ++i) {
    PromptInput& in = r.prompts[i];
    const std::string where = chat ? "messages" : r.prompts.size() > 1 ? "prompt." + std::to_string(i) : "prompt";
    if (in.ids.empty()) bad(where, "the prompt has no tokens");
    const int64_t prompt = static_cast<int64_t>(in.ids.size());
    // A prompt that is only scored may fill the context; one that generates leaves room for a token.
    if (prompt > context.max_context || (prompt == context.max_context && asked != 0))
      bad(where, "the prompt has " + std::to_string(prompt) + " tokens; this model's context is " +
                     std::to_string(context.max_context) + " (prompt and completion together)");
    const int64_t room = context.max_context - prompt;
    in.max_tokens = asked ? *asked : std::min(session.options.max_new_tokens, room);
    if (in.max_tokens > room)
      bad(max_key, std::to_string(prompt) + " prompt tokens" + (r.prompts.size() > 1 ? " (" + where + ")" : "") + " + " +
                       std::to_string(in.max_tokens) + " to generate exceed this model's context of " +
                       std::to_string(context.max_context));
  }
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

GenerationParams ApiRequest::params_for(size_t i) const {
  GenerationParams p = generation;
  p.prompt = prompts.at(i).ids;
  p.max_tokens = prompts.at(i).max_tokens;
  return p;
}

int64_t ApiRequest::score_k() const {
  const int64_t echoed = echo && generation.top_logprobs >= 0 ? generation.top_logprobs : -1;
  return std::max(echoed, prompt_logprobs);
}

json completion_response(const ServeContext& context, const ApiRequest& request, const std::string& id,
                         const std::vector<Generated>& outs, const std::vector<const PromptLogprobs*>& prompts) {
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  json choices = json::array();
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const Generated& out = outs[i];
    const PromptInput& in = request.prompts.at(i);
    const PromptLogprobs* prompt = i < prompts.size() ? prompts[i] : nullptr;
    prompt_tokens += static_cast<int64_t>(in.ids.size());
    completion_tokens += static_cast<int64_t>(out.ids.size());
    json choice = {{"index", i}, {"finish_reason", out.finish_reason.empty() ? json(nullptr) : json(out.finish_reason)}};
    if (request.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", out.text}};
      choice["logprobs"] = logprobs_json(request, tokenizer, out.ids, out.logprobs);
    } else {
      choice["text"] = (request.echo ? in.text : std::string()) + out.text;
      if (request.echo && request.generation.top_logprobs >= 0) {
        CompletionLogprobs lp;
        add_prompt(lp, tokenizer, in.ids, prompt, request.generation.top_logprobs);
        add_generated(lp, tokenizer, out.ids, out.logprobs, out.stop_token);
        choice["logprobs"] = lp.done();
      } else {
        choice["logprobs"] = logprobs_json(request, tokenizer, out.ids, out.logprobs, out.stop_token);
      }
      if (prompt && request.prompt_logprobs >= 0) choice["prompt_logprobs"] = prompt_logprobs_json(tokenizer, *prompt, request.prompt_logprobs);
    }
    if (request.return_token_ids || request.prompt_logprobs >= 0) choice["prompt_token_ids"] = in.ids;
    if (request.return_token_ids) choice["token_ids"] = out.ids;
    choices.push_back(std::move(choice));
  }
  return {{"id", id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", choices},
          {"usage", usage(prompt_tokens, completion_tokens)}};
}

json stream_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id, size_t index,
                  const std::string& text, const std::vector<int64_t>& ids, const std::vector<TokenLogprobs>& logprobs,
                  const std::string& finish_reason, bool first, const PromptLogprobs* prompt) {
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  json choice = {{"index", index}, {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (request.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
    choice["logprobs"] = logprobs_json(request, tokenizer, ids, logprobs);
  } else {
    const PromptInput& in = request.prompts.at(index);
    const bool echoed = first && request.echo;
    choice["text"] = (echoed ? in.text : std::string()) + text;
    if (echoed && request.generation.top_logprobs >= 0) {
      CompletionLogprobs lp;
      add_prompt(lp, tokenizer, in.ids, prompt, request.generation.top_logprobs);
      add_generated(lp, tokenizer, ids, logprobs);
      choice["logprobs"] = lp.done();
    } else {
      choice["logprobs"] = logprobs_json(request, tokenizer, ids, logprobs);
    }
  }
  if (request.return_token_ids) choice["token_ids"] = ids;
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", json::array({choice})}};
}

json usage_chunk(const ServeContext& context, const ApiRequest& request, const std::string& id, int64_t completion_tokens) {
  int64_t prompt_tokens = 0;
  for (const auto& p : request.prompts) prompt_tokens += static_cast<int64_t>(p.ids.size());
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", unix_now()},
          {"model", context.model_name},
          {"choices", json::array()},
          {"usage", usage(prompt_tokens, completion_tokens)}};
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

namespace lf::serve {


json tokenize_response(const ServeContext& context, const std::string& text) {
  const json body = parse_body(text);
  check_model(context, body);
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  std::vector<int64_t> ids;
  if (has(body, "messages")) {
    if (!read_bool(body, "add_generation_prompt", true))
      bad("add_generation_prompt", "false is not yet available (a conversation is tokenized as a chat request's prompt)");
    if (read_bool(body, "continue_final_message", false)) bad("continue_final_message", "not yet available");
    ids = encode_messages(*context.session, read_messages(body));
  } else {
    if (!has(body, "prompt") || !body["prompt"].is_string()) bad("prompt", "expected a string (or messages)");
    ids = tokenizer.encode(body["prompt"].get<std::string>(), read_bool(body, "add_special_tokens", true)).ids;
  }
  json out = {{"count", ids.size()}, {"max_model_len", context.max_context}, {"tokens", ids}, {"token_strs", nullptr}};
  if (read_bool(body, "return_token_strs", false)) {
    json strs = json::array();
    for (int64_t id : ids) strs.push_back(tokenizer.id_to_token(id));
    out["token_strs"] = strs;
  }
  return out;
}

json detokenize_response(const ServeContext& context, const std::string& text) {
  const json body = parse_body(text);
  check_model(context, body);
  if (!has(body, "tokens") || !body["tokens"].is_array()) bad("tokens", "expected a list of token ids");
  std::vector<int64_t> ids;
  for (const auto& v : body["tokens"]) {
    if (!v.is_number_integer()) bad("tokens", "expected a list of token ids");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= context.session->set.vocab)
      bad("tokens", "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(context.session->set.vocab) + ")");
    ids.push_back(id);
  }
  return {{"prompt", context.session->set.tokenizer->decode(ids)}};
}

// vLLM answers with the tokenizer's configuration (tokenizer_config.json as transformers reads it);
// here: its special tokens, the chat template the server renders with, and the context.
json tokenizer_info_response(const ServeContext& context) {
  const Tokenizer& tokenizer = *context.session->set.tokenizer;
  const SpecialTokens& special = tokenizer.special_tokens();
  auto text_or_null = [](const std::optional<int64_t>& id, const std::string& text) { return id ? json(text) : json(nullptr); };
  json out = {{"tokenizer_class", "logitfuse:" + tokenizer.kind()},
              {"bos_token", text_or_null(special.bos, special.bos_text)},
              {"eos_token", text_or_null(special.eos, special.eos_text)},
              {"pad_token", text_or_null(special.pad, special.pad_text)},
              {"unk_token", text_or_null(special.unk, special.unk_text)},
              {"add_bos_token", tokenizer.prepends_bos()},
              {"model_max_length", context.max_context},
              {"vocab_size", tokenizer.vocab_size()}};
  const ChatTemplate& chat = context.session->chat_template;
  out["chat_template"] = chat.jinja ? json(chat.jinja_source) : json(nullptr);
  return out;
}

}  // namespace lf::serve
