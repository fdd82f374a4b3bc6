// `logitfuse tokenize`: token ids and byte offsets of texts, one JSON line each.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lf::app {

namespace {

std::string json_text(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void print_encoding(const Encoding& enc, const Tokenizer* decoder, const std::string& prefix = {}) {
  // Hand-built: nlohmann's dump of nested arrays is several times slower than the encoding itself.
  std::string line = "{" + prefix + "\"ids\": [";
  for (size_t i = 0; i < enc.ids.size(); ++i) (line += i ? ", " : "") += std::to_string(enc.ids[i]);
  line += "], \"offsets\": [";
  for (size_t i = 0; i < enc.offsets.size(); ++i) {
    if (i) line += ", ";
    line += "[" + std::to_string(enc.offsets[i].first) + ", " + std::to_string(enc.offsets[i].second) + "]";
  }
  line += "]";
  if (decoder) line += ", \"decoded\": " + json_text(decoder->decode(enc.ids));
  line += "}\n";
  std::cout << line;
}

std::vector<Message> to_messages(const nlohmann::json& messages) {
  std::vector<Message> out;
  for (const auto& m : messages) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string())
      throw InputError("expected each message to be an object with string \"role\" and \"content\" fields");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

// One conversation through the chat template: its text (what apply_chat_template(..., tokenize=False)
// returns for a model's own template) and, with `split`, the training split of render_chat.
void print_chat(const nlohmann::json& j, const ChatTemplate& t, const Tokenizer& tokenizer, const Tokenizer* decoder,
                bool split) {
  if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array())
    throw InputError("expected an object with a \"messages\" list (and optionally \"add_generation_prompt\")");
  const bool add_generation_prompt = j.value("add_generation_prompt", false);
  nlohmann::json kwargs = nlohmann::json::object();
  for (const auto& [k, v] : j.items())
    if (k != "messages" && k != "add_generation_prompt") kwargs[k] = v;
  std::string text, fields;
  if (t.jinja) {
    text = render_jinja_chat(t, j["messages"], add_generation_prompt, kwargs);
  } else {  // a preset: its BOS/EOS flags spelled with the tokenizer's texts
    const std::vector<Message> messages = to_messages(j["messages"]);
    const SpecialTokens& special = tokenizer.special_tokens();
    const RenderedChat chat = add_generation_prompt ? render_generation_prompt(t, messages, special.eos_text)
                                                    : render_chat(t, messages, special.eos_text);
    text = (chat.bos ? special.bos_text : "") + chat.prompt + chat.response + chat.response_suffix + (chat.eos ? special.eos_text : "");
  }
  if (split) {
    const RenderedChat chat = render_chat(t, to_messages(j["messages"]), tokenizer.special_tokens().eos_text);
    fields += "\"prompt\": " + json_text(chat.prompt) + ", \"response\": " + json_text(chat.response) +
              ", \"response_suffix\": " + json_text(chat.response_suffix) + ", ";
  }
  print_encoding(tokenizer.encode(text), decoder, "\"text\": " + json_text(text) + ", " + fields);
}

}  // namespace

void add_tokenize(CLI::App& root) {
  struct Options {
    std::string tokenizer, text, input, chat_template;
    bool add_special_tokens = false, decode = false, split = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("tokenize", "Token ids and byte offsets of texts, one JSON line each");
  cmd->add_option("--tokenizer", opt->tokenizer, "tokenizer.json, tokenizer.model or a model directory")->required();
  auto* text_opt = cmd->add_option("--text", opt->text, "one text");
  auto* input_opt = cmd->add_option("--input", opt->input, "JSONL with a 'text' field");
  text_opt->excludes(input_opt);
  cmd->add_flag("--add-special-tokens", opt->add_special_tokens,
                "apply the tokenizer's post-processing (e.g. BOS in front), as tokenizers' encode() does by default. "
                "Off by default: ids then cover exactly the text, which is what alignment needs. Special tokens "
                "written in the text are recognised either way");
  cmd->add_flag("--decode", opt->decode,
                "also print \"decoded\": the ids decoded back to text (special tokens kept), for round-trip checks");
  auto* chat_opt = cmd->add_option(
      "--chat-template", opt->chat_template,
      "render each --input line's {\"messages\": [...], \"add_generation_prompt\": bool, other template variables} "
      "with this chat template (a preset name, or auto: the template the tokenizer's directory ships) and print its "
      "\"text\" with the ids");
  chat_opt->needs(input_opt);
  cmd->add_flag("--training-split", opt->split,
                "with --chat-template: also print the training split of a conversation ending with an assistant turn "
                "(\"prompt\", \"response\", \"response_suffix\"), as training renders it")
      ->needs(chat_opt);
  cmd->callback([opt, text_opt, input_opt, chat_opt] {
    if (text_opt->count() == 0 && input_opt->count() == 0) throw InputError("tokenize: give --text or --input");
    const auto tokenizer = load_tokenizer(opt->tokenizer);
    const Tokenizer* decoder = opt->decode ? tokenizer.get() : nullptr;
    std::ios::sync_with_stdio(false);
    if (chat_opt->count() > 0) {
      namespace fs = std::filesystem;
      const fs::path source(opt->tokenizer);
      const std::string dir = fs::is_directory(source) ? source.string() : source.parent_path().string();
      const ChatTemplate t = resolve_chat_template(opt->chat_template, dir.empty() ? "." : dir);
      for_each_jsonl_line(opt->input, [&](const nlohmann::json& j, int64_t) { print_chat(j, t, *tokenizer, decoder, opt->split); });
      std::cout.flush();
      return;
    }
    if (text_opt->count() > 0) {
      print_encoding(tokenizer->encode(opt->text, opt->add_special_tokens), decoder);
      return;
    }
    for_each_jsonl_line(opt->input, [&](const nlohmann::json& j, int64_t) {
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw InputError("expected an object with a string \"text\" field");
      print_encoding(tokenizer->encode(j["text"].get<std::string>(), opt->add_special_tokens), decoder);
    });
    std::cout.flush();
  });
}

}  // namespace lf::app
