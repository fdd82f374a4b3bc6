// Chat templates: how each model family wraps a conversation in text and special tokens.
// Presets for the families logitfuse fuses, custom templates from the recipe, and `auto`, which
// renders the model's own Jinja template (tokenizer_config.json's chat_template or
// chat_template.jinja) as transformers' apply_chat_template does (lib/template/jinja.h).
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lf {

namespace jinja {
class Template;
}
class Tokenizer;

struct ChatTemplate {
  std::string name;
  std::string system_prefix, system_suffix;
  std::string user_prefix, user_suffix;
  std::string assistant_prefix, assistant_suffix;
  bool add_bos = false;               // the tokenizer's BOS id first
  // The tokenizer's BOS id first where its own post-processing puts one first (`plain`: text starts
  // as transformers' tokenizer(text) starts it, e.g. Gemma's <bos>; a model reads text without it wrong).
  bool bos_as_tokenizer = false;
  bool add_eos = false;               // the tokenizer's EOS id after each assistant turn
  bool system_in_first_user = false;  // Llama-2/Mistral style: the system text opens the first user turn
  std::string system_in_user_format = "{system}\n\n{user}";

  // The model's own template (`auto` on a model that ships one); when set, the fields above are
  // unused except assistant_suffix, which holds the end-of-turn text the template writes after an
  // assistant turn (for stop tokens). The template writes BOS/EOS as text, so the flags stay false.
  std::shared_ptr<const jinja::Template> jinja;
  std::string jinja_source;
  nlohmann::json special_tokens = nlohmann::json::object();  // bos_token, eos_token, ... as the template sees them
  // chat_template_kwargs of the recipe or generation config: more template variables (Qwen3's
  // enable_thinking, ...), as apply_chat_template(**kwargs) passes them; Jinja templates only.
  nlohmann::json kwargs = nlohmann::json::object();
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

// Whether `chat_template` (bos_as_tokenizer, e.g. `plain`) starts text with `tokenizer`'s BOS because
// its post-processor does (Gemma): the tokenization, and the logits caches keyed by it, depend on this.
bool adds_tokenizer_bos(const ChatTemplate& chat_template, const Tokenizer& tokenizer);

// The BOS id a rendering starts with for `tokenizer`, if any (see ChatTemplate::add_bos and
// bos_as_tokenizer); InputError if the template needs one and the tokenizer has none.
std::optional<int64_t> leading_bos(const RenderedChat& chat, const ChatTemplate& chat_template, const Tokenizer& tokenizer);

// Names of the presets: chatml, llama2, llama3, mistral, phi3, phi4, plain.
std::vector<std::string> chat_template_presets();

// A preset by name, or a custom template from `custom` (the recipe's chat_templates section).
// "auto" needs `model_dir`: the model's own Jinja template (chat_template.jinja, else
// tokenizer_config.json's chat_template, a string or the "default" of a [{name, template}] list),
// with bos_token/eos_token/... from tokenizer_config.json (or special_tokens_map.json); a model that
// ships none is an InputError saying how to choose a preset. A template using a construct outside
// the supported Jinja subset is an InputError naming it.
// `kwargs` (a JSON object) become template variables of a Jinja template; with a preset or a custom
// template they are an InputError (those have no variables).
ChatTemplate resolve_chat_template(const std::string& name, const std::string& model_dir,
                                   const std::map<std::string, ChatTemplate>& custom = {},
                                   const nlohmann::json& kwargs = nlohmann::json::object());

// A chat template from Jinja source and the special tokens it sees (what `auto` builds from a model
// directory); InputError naming the construct if the source is outside the supported subset.
ChatTemplate jinja_chat_template(const std::string& source, const nlohmann::json& special_tokens);

// Renders a conversation that ends with an assistant turn; InputError if it does not. With a
// template that ends assistant turns with EOS (add_eos), earlier assistant turns (multi-turn data,
// in-context examples) end with `eos_text`, the tokenizer's EOS spelling; the last one's EOS is the
// `eos` flag. A Jinja template renders twice: the history with the generation prompt (P) and the
// whole conversation (F); F must start with P, and the final assistant content (as the template
// wrote it, e.g. stripped) is located in the rest: what precedes it joins the prompt, what follows
// is the response suffix. So prompt + response + response_suffix == F.
RenderedChat render_chat(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                         const std::string& eos_text = {});

// The prompt for generation: the conversation (ending with a user turn) plus the assistant prefix.
RenderedChat render_generation_prompt(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                                      const std::string& eos_text = {});

// A Jinja template's rendering of `messages` (JSON objects with role, content and whatever else the
// template reads) with add_generation_prompt and extra keyword variables (e.g. enable_thinking), as
// apply_chat_template(..., tokenize=False) returns it. InputError for a preset.
std::string render_jinja_chat(const ChatTemplate& chat_template, const nlohmann::json& messages,
                              bool add_generation_prompt, const nlohmann::json& kwargs = nlohmann::json::object());

}  // namespace lf
