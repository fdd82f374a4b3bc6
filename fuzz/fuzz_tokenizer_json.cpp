// A Hugging Face tokenizer: `tokenizer.json` (the model, normalizers, pre-tokenizers, added tokens,
// post-processor, decoder) with `tokenizer_config.json` beside it (special tokens, flags, the chat
// template that `auto` renders). Input: tokenizer.json NUL tokenizer_config.json (optional). A
// tokenizer that loads then encodes and decodes a fixed text, and its chat template (if any) renders.
#include "fuzz_common.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = lf::fuzz::split_parts(data, size, 2);
  const std::string file = lf::fuzz::write_scratch("tokenizer.json", parts[0]);
  if (parts.size() > 1)
    lf::fuzz::write_scratch("tokenizer_config.json", parts[1]);
  else
    lf::fuzz::remove_scratch("tokenizer_config.json");
  lf::fuzz::expect_input_error_or_ok([&] {
    const auto tok = lf::load_hf_tokenizer(file);
    static const std::string kText = "Hello world!  <s> 12345 ünïcödé 漢字 \n\t <|im_end|> don't";
    for (bool special : {false, true}) {
      const lf::Encoding enc = tok->encode(kText, special);
      if (enc.ids.size() != enc.offsets.size()) __builtin_trap();
      for (auto [b, e] : enc.offsets)
        if (b < 0 || e < b || e > static_cast<int64_t>(kText.size())) __builtin_trap();
      (void)tok->decode(enc.ids, special);
    }
    const int64_t n = tok->vocab_size();
    for (int64_t id : {int64_t{0}, n / 2, n - 1})
      if (id >= 0 && id < n) {
        (void)tok->id_to_token(id);
        (void)tok->id_to_bytes(id);
        (void)tok->is_special(id);
      }
  });
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::ChatTemplate chat = lf::resolve_chat_template("auto", lf::fuzz::scratch_dir());
    (void)lf::render_chat(chat, {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}}, "</s>");
  });
  return 0;
}
