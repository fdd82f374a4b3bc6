// Chat templates: how each model family wraps a conversation in text and special tokens.
// Presets for the families logitfuse fuses, custom templates from the recipe, and `auto`, which
// recognises the preset from the model's tokenizer_config.json.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace lf {

struct ChatTemplate {
  std::string name;
  std::string system_prefix, system_suffix;
  std::string user_prefix, user_suffix;
  std::string assistant_prefix, assistant_suffix;
  bool add_bos = false;               // the tokenizer's BOS id first
  bool add_eos = false;               // the tokenizer's EOS id after each assistant turn
  bool system_in_first_user = false;  // Llama-2/Mistral style: the system text opens the first user turn
  std::string system_in_user_format = "{system}\n\n{user}";
};

struct Message {
  std::string role;  // system | user | assistant
  std::string content;
};

// A conversation rendered for one model: the prompt text (everything before the final assistant
// turn, including its prefix) and the response parts. BOS/EOS are flags, not text, so that the
// tokenizer's ids are used whatever their spelling.
struct RenderedChat {
  bool bos = false;
  std::string prompt;
  std::string response;         // the final assistant content, the text that alignment works on
  std::string response_suffix;  // end-of-turn text after it (e.g. "<|im_end|>\n")
  bool eos = false;
};

// Names of the presets: chatml, llama2, llama3, mistral, phi3, phi4, plain.
std::vector<std::string> chat_template_presets();

// A preset by name, or a custom template from `custom` (the recipe's chat_templates section).
// "auto" needs `model_dir`: the template is recognised from its tokenizer_config.json (or
// chat_template.jinja); an unrecognised one is an InputError saying how to choose.
ChatTemplate resolve_chat_template(const std::string& name, const std::string& model_dir,
                                   const std::map<std::string, ChatTemplate>& custom = {});

// Renders a conversation that ends with an assistant turn; InputError if it does not. With a
// template that ends assistant turns with EOS (add_eos), earlier assistant turns (multi-turn data,
// in-context examples) end with `eos_text`, the tokenizer's EOS spelling; the last one's EOS is the
// `eos` flag.
RenderedChat render_chat(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                         const std::string& eos_text = {});

// The prompt for generation: the conversation (ending with a user turn) plus the assistant prefix.
RenderedChat render_generation_prompt(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                                      const std::string& eos_text = {});

}  // namespace lf
