#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "core/strings.h"
#include "tokenizer/vocab_size.h"

namespace lf {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const std::string file = resolve_tokenizer_file(path);
  if (ends_with(file, ".json")) return load_hf_tokenizer(file);
  return load_sentencepiece_tokenizer(file);
}

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file) {
  throw NotAvailable("SentencePiece tokenizers (" + model_file + ")");
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_file) {
  throw NotAvailable("tokenizer.json tokenizers (" + json_file + ")");
}

}  // namespace lf
