// A SentencePiece `tokenizer.model` (a protobuf read by the sentencepiece library, then our
// byte-fallback and special-token handling). A model that loads encodes and decodes a fixed text.
#include "fuzz_common.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string file =
      lf::fuzz::write_scratch("tokenizer.model", std::string(reinterpret_cast<const char*>(data), size));
  lf::fuzz::expect_input_error_or_ok([&] {
    const auto tok = lf::load_sentencepiece_tokenizer(file);
    static const std::string kText = "Hello world!  <s> 12345 ünïcödé 漢字 \n\t don't";
    for (bool special : {false, true}) {
      const lf::Encoding enc = tok->encode(kText, special);
      if (enc.ids.size() != enc.offsets.size()) __builtin_trap();
      (void)tok->decode(enc.ids, special);
    }
    const int64_t n = tok->vocab_size();
    for (int64_t id : {int64_t{0}, n / 2, n - 1})
      if (id >= 0 && id < n) {
        (void)tok->id_to_token(id);
        (void)tok->id_to_bytes(id);
      }
  });
  return 0;
}
