// The template engine alone (lib/template/jinja.h, linked without the tokenizer: only core and
// template): a Jinja source parsed, then rendered with the variables chat templates are given.
#include "fuzz_common.h"
#include "template/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<lf::jinja::Template> parsed;
  if (!lf::fuzz::expect_input_error_or_ok([&] { parsed = std::make_unique<lf::jinja::Template>(source); })) return 0;
  const nlohmann::json context = {
      {"messages", {{{"role", "system"}, {"content", "Be brief."}},
                    {{"role", "user"}, {"content", "What is 2+2?"}},
                    {{"role", "assistant"}, {"content", "4"}},
                    {{"role", "user"}, {"content", "Und 3+3? \xC3\xA9\xE2\x82\xAC"}}}},
      {"add_generation_prompt", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
      {"tools", nlohmann::json::array()}, {"enable_thinking", false}};
  lf::fuzz::expect_input_error_or_ok([&] { (void)parsed->render(context); });
  return 0;
}
