#include "tokenizer/chat_template.h"

#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/hash.h"
#include "core/strings.h"
#include "io/file.h"
#include "template/jinja.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

std::map<std::string, ChatTemplate> make_presets() {
  std::map<std::string, ChatTemplate> p;
  auto& chatml = p["chatml"];  // Qwen2/Qwen3
  chatml.system_prefix = "<|im_start|>system\n";
  chatml.user_prefix = "<|im_start|>user\n";
  chatml.assistant_prefix = "<|im_start|>assistant\n";
  chatml.system_suffix = chatml.user_suffix = chatml.assistant_suffix = "<|im_end|>\n";

  auto& llama2 = p["llama2"];
  llama2.add_bos = llama2.add_eos = true;
  llama2.user_prefix = "[INST] ";
  llama2.user_suffix = " [/INST]";
  llama2.assistant_prefix = " ";
  llama2.system_in_first_user = true;
  llama2.system_in_user_format = "<<SYS>>\n{system}\n<</SYS>>\n\n{user}";

  auto& llama3 = p["llama3"];
  llama3.user_prefix = "<|start_header_id|>user<|end_header_id|>\n\n";
  llama3.assistant_prefix = "<|start_header_id|>assistant<|end_header_id|>\n\n";
  llama3.system_suffix = llama3.user_suffix = llama3.assistant_suffix = "<|eot_id|>";
  llama3.add_bos = true;  // <|begin_of_text|> is Llama-3's BOS; the system prefix does not repeat it
  llama3.system_prefix = "<|start_header_id|>system<|end_header_id|>\n\n";

  auto& mistral = p["mistral"];
  mistral.add_bos = mistral.add_eos = true;
  mistral.user_prefix = "[INST] ";
  mistral.user_suffix = " [/INST]";
  mistral.system_in_first_user = true;

  auto& phi3 = p["phi3"];
  phi3.system_prefix = "<|system|>\n";
  phi3.user_prefix = "<|user|>\n";
  phi3.assistant_prefix = "<|assistant|>\n";
  phi3.system_suffix = phi3.user_suffix = phi3.assistant_suffix = "<|end|>\n";

  auto& phi4 = p["phi4"];
  phi4.system_prefix = "<|im_start|>system<|im_sep|>";
  phi4.user_prefix = "<|im_start|>user<|im_sep|>";
  phi4.assistant_prefix = "<|im_start|>assistant<|im_sep|>";
  phi4.system_suffix = phi4.user_suffix = phi4.assistant_suffix = "<|im_end|>";

  auto& plain = p["plain"];  // prompt and response as they are, EOS after the response
  plain.system_suffix = "\n";
  plain.add_eos = true;
  plain.bos_as_tokenizer = true;
  for (auto& [name, t] : p) t.name = name;
  return p;
}

const std::map<std::string, ChatTemplate>& presets() {
  static const auto p = make_presets();
  return p;
}

nlohmann::json read_json(const fs::path& path) {
  if (!fs::exists(path)) return nlohmann::json::object();
  try {
    return nlohmann::json::parse(read_text_file(path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path.string() + ": not valid JSON: " + e.what());
  }
}

// The special tokens a template sees (transformers passes its special_tokens_map): strings, or
// {"content": ...} objects, from tokenizer_config.json, else special_tokens_map.json.
nlohmann::json special_tokens(const std::string& model_dir) {
  nlohmann::json out = nlohmann::json::object();
  for (const char* file : {"special_tokens_map.json", "tokenizer_config.json"}) {
    const nlohmann::json j = read_json(fs::path(model_dir) / file);
    if (!j.is_object()) continue;
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
      if (!j.contains(key)) continue;
      const auto& v = j[key];
      if (v.is_string()) out[key] = v;
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) out[key] = v["content"];
      else if (v.is_null()) out.erase(key);
    }
  }
  return out;
}

// The chat template text a model ships: chat_template.jinja, or tokenizer_config.json's chat_template.
std::string shipped_template(const std::string& model_dir) {
  const fs::path jinja = fs::path(model_dir) / "chat_template.jinja";
  if (fs::exists(jinja)) return read_text_file(jinja.string());
  const nlohmann::json j = read_json(fs::path(model_dir) / "tokenizer_config.json");
  if (!j.is_object() || !j.contains("chat_template")) return {};
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())  // [{name, template}, ...]: the default one
    for (const auto& item : t)
      if (item.value("name", "") == "default") return item.value("template", "");
  return {};
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = text.find(from, pos)) != std::string::npos; pos += to.size()) text.replace(pos, from.size(), to);
  return text;
}

// Renders all turns before index `end` into text; an earlier assistant turn ends with `eos_text` when
// the template puts EOS after each assistant turn (the tokenizer reads the text back as the EOS id).
std::string render_turns(const ChatTemplate& t, const std::vector<Message>& messages, size_t end,
                         const std::string& eos_text) {
  std::string out, pending_system;
  bool first_user = true;
  for (size_t i = 0; i < end; ++i) {
    const Message& m = messages[i];
    if (m.role == "system") {
      if (t.system_in_first_user) pending_system = m.content;
      else out += t.system_prefix + m.content + t.system_suffix;
    } else if (m.role == "user") {
      std::string content = m.content;
      if (first_user && !pending_system.empty())
        content = replace_all(replace_all(t.system_in_user_format, "{system}", pending_system), "{user}", m.content);
      first_user = false;
      out += t.user_prefix + content + t.user_suffix;
    } else {
      out += t.assistant_prefix + m.content + t.assistant_suffix;
      if (t.add_eos) out += eos_text;
    }
  }
  return out;
}

void check_roles(const std::vector<Message>& messages) {
  for (const auto& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw InputError("message role '" + m.role + "' is not one of system, user, assistant");
}

}  // namespace

std::vector<std::string> chat_template_presets() {
  std::vector<std::string> names;
  for (const auto& [name, _] : presets()) names.push_back(name);
  return names;
}

ChatTemplate resolve_chat_template(const std::string& name, const std::string& model_dir,
                                   const std::map<std::string, ChatTemplate>& custom, const nlohmann::json& kwargs) {
  const bool has_kwargs = kwargs.is_object() && !kwargs.empty();
  if (!kwargs.is_object() && !kwargs.is_null()) throw InputError("chat_template_kwargs: expected a mapping of names");
  if (has_kwargs && name != "auto")
    throw InputError("chat_template_kwargs are template variables, and chat template '" + name + "' has none",
                     "use chat_template: auto (the model's own Jinja template) or drop chat_template_kwargs");
  if (auto it = custom.find(name); it != custom.end()) return it->second;
  if (auto it = presets().find(name); it != presets().end()) return it->second;
  if (name != "auto") {
    std::vector<std::string> known = chat_template_presets();
    for (const auto& [n, _] : custom) known.push_back(n);
    const std::string guess = closest_match(name, known);
    throw InputError("chat template '" + name + "' is unknown",
                     guess.empty() ? "use auto or one of " + join(known, ", ") : "did you mean '" + guess + "'?");
  }
  const std::string text = shipped_template(model_dir);
  if (text.empty())
    throw InputError(model_dir + ": chat_template auto: the model ships no chat template",
                     "set chat_template to one of " + join(chat_template_presets(), ", ") +
                         " or to a custom template defined under chat_templates in the recipe");
  ChatTemplate t = jinja_chat_template(text, special_tokens(model_dir));
  if (has_kwargs) {
    t.kwargs = kwargs;
    t.name += ":" + hex64(fnv1a64(kwargs.dump())).substr(0, 8);  // another rendering, another cache key
  }
  return t;
}

ChatTemplate jinja_chat_template(const std::string& source, const nlohmann::json& special_tokens) {
  ChatTemplate t;
  // The name keys logit caches: it changes when the template text does.
  t.name = "jinja:" + hex64(fnv1a64(source)).substr(0, 12);
  t.jinja = std::make_shared<const jinja::Template>(source);
  t.jinja_source = source;
  t.special_tokens = special_tokens;
  // The end-of-turn text after an assistant turn, for stop tokens: from a one-turn dummy conversation.
  try {
    t.assistant_suffix = render_chat(t, {{"user", "Hi"}, {"assistant", "Hello"}}).response_suffix;
  } catch (const InputError&) {
    t.assistant_suffix.clear();  // a template that rejects the dummy: EOS alone stops generation
  }
  return t;
}

namespace {

nlohmann::json messages_json(const std::vector<Message>& messages, size_t end) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < end; ++i) out.push_back({{"role", messages[i].role}, {"content", messages[i].content}});
  return out;
}

std::string py_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

RenderedChat render_jinja_training(const ChatTemplate& t, const std::vector<Message>& messages) {
  const std::string prompt = render_jinja_chat(t, messages_json(messages, messages.size() - 1), true);
  const std::string full = render_jinja_chat(t, messages_json(messages, messages.size()), false);
  const char* hint = "use a preset chat template (one of chatml, llama2, llama3, mistral, phi3, phi4, plain) for this model";
  if (full.compare(0, prompt.size(), prompt) != 0)
    throw InputError("chat template " + t.name + ": the conversation without its last assistant turn, rendered with the "
                     "generation prompt, is not the start of the whole conversation's rendering (the template renders the "
                     "history differently once the answer is there), so the response's tokens cannot be located", hint);
  const std::string& content = messages.back().content;
  RenderedChat out;
  // Where the content sits: render once more with a marker for it. Unless the template's logic
  // depends on the content (e.g. splitting off <think>), the marker rendering differs from the real
  // one only there, which locates the content even when it also occurs in the template's own text.
  std::vector<Message> marked = messages;
  const std::string marker = "\x1e\x1flogitfuse-response\x1f\x1e";
  marked.back().content = marker;
  const std::string with_marker = render_jinja_chat(t, messages_json(marked, marked.size()), false);
  const size_t at = with_marker.find(marker);
  if (at != std::string::npos && at >= prompt.size() && with_marker.find(marker, at + 1) == std::string::npos) {
    const std::string before = with_marker.substr(0, at), after = with_marker.substr(at + marker.size());
    if (full.size() >= before.size() + after.size() && full.compare(0, before.size(), before) == 0 &&
        full.compare(full.size() - after.size(), after.size(), after) == 0) {
      const std::string rendered = full.substr(before.size(), full.size() - before.size() - after.size());
      if (!rendered.empty() && (rendered == content || rendered == py_strip(content))) {
        out.prompt = before;
        out.response = rendered;
        out.response_suffix = after;
        return out;
      }
    }
  }
  // Otherwise search the rest of the rendering for the content as it is, then stripped.
  const std::string rest = full.substr(prompt.size());
  size_t pos = content.empty() ? std::string::npos : rest.find(content);
  std::string response = content;
  if (pos == std::string::npos) {  // templates may strip or trim the content
    response = py_strip(content);
    pos = response.empty() ? std::string::npos : rest.find(response);
  }
  if (pos == std::string::npos)
    throw InputError("chat template " + t.name + ": the final assistant message" +
                         (py_strip(content).empty() ? std::string(" is empty") : std::string(" does not appear in the template's rendering")) +
                         ", so the response's tokens cannot be located",
                     hint);
  out.prompt = prompt + rest.substr(0, pos);
  out.response = response;
  out.response_suffix = rest.substr(pos + response.size());
  return out;
}

}  // namespace

std::string render_jinja_chat(const ChatTemplate& t, const nlohmann::json& messages, bool add_generation_prompt,
                              const nlohmann::json& kwargs) {
  if (!t.jinja) throw InputError("chat template '" + t.name + "' is a preset, not a Jinja template");
  // The variables apply_chat_template passes: the special tokens, messages, tools, documents,
  // add_generation_prompt, then the caller's keywords (which win).
  nlohmann::json context = t.special_tokens;
  context["messages"] = messages;
  context["tools"] = nullptr;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  for (const auto& [k, v] : t.kwargs.items()) context[k] = v;
  if (kwargs.is_object())
    for (const auto& [k, v] : kwargs.items()) context[k] = v;
  return t.jinja->render(context);
}

RenderedChat render_chat(const ChatTemplate& t, const std::vector<Message>& messages, const std::string& eos_text) {
  check_roles(messages);
  if (messages.empty() || messages.back().role != "assistant")
    throw InputError("a training conversation must end with an assistant message");
  if (t.jinja) return render_jinja_training(t, messages);
  RenderedChat out;
  out.bos = t.add_bos;
  out.prompt = render_turns(t, messages, messages.size() - 1, eos_text) + t.assistant_prefix;
  out.response = messages.back().content;
  out.response_suffix = t.assistant_suffix;
  out.eos = t.add_eos;
  return out;
}

RenderedChat render_generation_prompt(const ChatTemplate& t, const std::vector<Message>& messages,
                                      const std::string& eos_text) {
  check_roles(messages);
  RenderedChat out;
  if (t.jinja) {
    out.prompt = render_jinja_chat(t, messages_json(messages, messages.size()), true);
    return out;
  }
  out.bos = t.add_bos;
  out.prompt = render_turns(t, messages, messages.size(), eos_text) + t.assistant_prefix;
  return out;
}

std::optional<int64_t> leading_bos(const RenderedChat& chat, const ChatTemplate& t, const Tokenizer& tokenizer) {
  const auto& bos = tokenizer.special_tokens().bos;
  if (chat.bos) {
    if (!bos)
      throw InputError("chat template '" + t.name + "' needs a BOS token, and tokenizer " + tokenizer.source() + " has none");
    return bos;
  }
  if (adds_tokenizer_bos(t, tokenizer)) return bos;
  return std::nullopt;
}

bool adds_tokenizer_bos(const ChatTemplate& chat_template, const Tokenizer& tokenizer) {
  return chat_template.bos_as_tokenizer && tokenizer.prepends_bos();
}

}  // namespace lf
