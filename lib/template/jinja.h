// A Jinja2 subset for chat templates: renders a model's own template as transformers'
// apply_chat_template does (ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
// loopcontrols extension, HF's {% generation %} tag, and the globals raise_exception, namespace,
// dict, range, strftime_now; tojson as HF overrides it). What real templates use is here: text,
// {{ }}, {% %}, {# #} with whitespace control; if/elif/else, for (loop.*, else, unpacking, an `if`
// filter, break/continue), set (also ns.attr and block sets), macro; Python-like expressions,
// filters, tests, str/dict methods. Anything else is an InputError (exit 2) naming the construct
// and its template line. Pure C++ and nlohmann-json: no LibTorch here.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace lf::jinja {

struct Program;

class Template {
 public:
  // Parses `source`; InputError "chat template line N: ..." on a syntax error or unsupported tag.
  explicit Template(const std::string& source);
  // Renders with the variables of `context` (a JSON object: messages, add_generation_prompt,
  // bos_token, eos_token, any extra keyword such as enable_thinking). A template's
  // raise_exception(...) and every runtime error are InputErrors naming the line.
  std::string render(const nlohmann::json& context) const;

 private:
  std::shared_ptr<const Program> program_;
};

}  // namespace lf::jinja
