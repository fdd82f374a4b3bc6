// How many token ids a tokenizer can produce, from `tokenizer.json` or a SentencePiece `.model`,
// without loading a full tokenizer: what `init-model --tokenizer` needs to size the embedding.
#pragma once

#include <cstdint>
#include <string>

namespace lf {

// `path` is a tokenizer file or a model directory (tokenizer.json preferred, else tokenizer.model).
int64_t tokenizer_vocab_size(const std::string& path);

// The tokenizer file that `path` designates (same preference), or InputError.
std::string resolve_tokenizer_file(const std::string& path);

}  // namespace lf
