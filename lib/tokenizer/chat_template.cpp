#include "tokenizer/chat_template.h"

#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"

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
  for (auto& [name, t] : p) t.name = name;
  return p;
}

const std::map<std::string, ChatTemplate>& presets() {
  static const auto p = make_presets();
  return p;
}

// The chat template text a model ships: tokenizer_config.json's chat_template, or chat_template.jinja.
std::string shipped_template(const std::string& model_dir) {
  const fs::path jinja = fs::path(model_dir) / "chat_template.jinja";
  if (fs::exists(jinja)) return read_text_file(jinja.string());
  const fs::path config = fs::path(model_dir) / "tokenizer_config.json";
  if (!fs::exists(config)) return {};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(config.string() + ": not valid JSON: " + e.what());
  }
  if (!j.contains("chat_template")) return {};
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())  // [{name, template}, ...]: the default one
    for (const auto& item : t)
      if (item.value("name", "") == "default") return item.value("template", "");
  return {};
}

std::string recognise(const std::string& text) {
  auto has = [&](const char* s) { return text.find(s) != std::string::npos; };
  if (has("<|im_start|>") && has("<|im_sep|>")) return "phi4";
  if (has("<|im_start|>")) return "chatml";
  if (has("<|start_header_id|>")) return "llama3";
  if (has("<|user|>") && has("<|end|>")) return "phi3";
  if (has("[INST]") && has("<<SYS>>")) return "llama2";
  if (has("[INST]")) return "mistral";
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
                                   const std::map<std::string, ChatTemplate>& custom) {
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
  const std::string found = recognise(text);
  if (found.empty())
    throw InputError(model_dir + ": chat_template auto: " +
                         (text.empty() ? std::string("the model ships no chat template")
                                       : std::string("the model's chat template is not one logitfuse recognises")),
                     "set chat_template to one of " + join(chat_template_presets(), ", ") +
                         " or to a custom template defined under chat_templates in the recipe");
  return presets().at(found);
}

RenderedChat render_chat(const ChatTemplate& t, const std::vector<Message>& messages, const std::string& eos_text) {
  check_roles(messages);
  if (messages.empty() || messages.back().role != "assistant")
    throw InputError("a training conversation must end with an assistant message");
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
  out.bos = t.add_bos;
  out.prompt = render_turns(t, messages, messages.size(), eos_text) + t.assistant_prefix;
  return out;
}

}  // namespace lf
