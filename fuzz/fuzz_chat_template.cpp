// A model's own chat template (Jinja source from tokenizer_config.json or chat_template.jinja,
// template/jinja.h): parsed, then rendered as training and generation do with a fixed conversation.
#include "fuzz_common.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  lf::ChatTemplate chat;
  if (!lf::fuzz::expect_input_error_or_ok([&] {
        chat = lf::jinja_chat_template(source, {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
      }))
    return 0;
  const std::vector<lf::Message> conversation = {
      {"system", "Be brief."}, {"user", "What is 2+2?"}, {"assistant", "4"}, {"user", "And 3+3?"}, {"assistant", "6"}};
  lf::fuzz::expect_input_error_or_ok([&] { (void)lf::render_chat(chat, conversation, "</s>"); });
  lf::fuzz::expect_input_error_or_ok([&] {
    (void)lf::render_generation_prompt(chat, {conversation.begin(), conversation.end() - 1}, "</s>");
  });
  lf::fuzz::expect_input_error_or_ok([&] {
    (void)lf::render_jinja_chat(chat, {{{"role", "user"}, {"content", "Hi"}}}, true, {{"enable_thinking", false}});
  });
  return 0;
}
