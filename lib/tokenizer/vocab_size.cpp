#include "tokenizer/vocab_size.h"

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"

namespace fs = std::filesystem;

namespace lf {

std::string resolve_tokenizer_file(const std::string& path) {
  if (fs::is_directory(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name)) return (fs::path(path) / name).string();
    throw InputError(path + ": no tokenizer.json or tokenizer.model in this directory");
  }
  if (!fs::exists(path)) throw InputError(path + ": no such tokenizer file");
  return path;
}

int64_t tokenizer_vocab_size(const std::string& path) {
  const std::string file = resolve_tokenizer_file(path);
  if (ends_with(file, ".json")) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(file));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(file + ": not valid JSON: " + e.what());
    }
    int64_t size = 0;
    if (!j.contains("model") || !j["model"].contains("vocab")) throw InputError(file + ": missing model.vocab");
    const auto& vocab = j["model"]["vocab"];
    if (vocab.is_object()) {
      for (const auto& id : vocab) size = std::max<int64_t>(size, id.get<int64_t>() + 1);
    } else if (vocab.is_array()) {
      size = static_cast<int64_t>(vocab.size());  // Unigram: [[piece, score], ...] in id order
    } else {
      throw InputError(file + ": model.vocab is neither a mapping nor a list");
    }
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& token : j["added_tokens"])
        if (token.contains("id")) size = std::max<int64_t>(size, token["id"].get<int64_t>() + 1);
    return size;
  }
  sentencepiece::SentencePieceProcessor processor;
  const auto status = processor.Load(file);
  if (!status.ok()) throw InputError(file + ": not a SentencePiece model: " + status.ToString());
  return processor.GetPieceSize();
}

}  // namespace lf
