#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"
#include "tokenizer/text_util.h"
#include "tokenizer/tokenizer_base.h"
#include "tokenizer/vocab_size.h"

namespace fs = std::filesystem;

namespace lf {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const std::string file = resolve_tokenizer_file(path);
  if (ends_with(file, ".json")) return load_hf_tokenizer(file);
  return load_sentencepiece_tokenizer(file);
}

bool Tokenizer::prepends_bos() const {
  if (!special_.bos) return false;
  const Encoding e = encode("", /*add_special_tokens=*/true);
  return !e.ids.empty() && e.ids.front() == *special_.bos;
}

namespace tok {

namespace {

std::optional<nlohmann::json> read_json_beside(const std::string& file, const char* name) {
  const fs::path path = fs::path(file).parent_path() / name;
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path.string() + ": not valid JSON: " + e.what());
  }
}

// A token entry: "text", {"content": "text", ...}, or null/absent.
std::optional<std::string> token_text(const nlohmann::json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

void load_special_tokens(TokenizerBase& tokenizer, const std::string& file, const SpecialTokens& fallback) {
  SpecialTokens special = fallback;
  const auto config = read_json_beside(file, "tokenizer_config.json");
  const auto map = read_json_beside(file, "special_tokens_map.json");
  struct Slot {
    const char* key;
    std::optional<int64_t>* id;
    std::string* text;
  };
  for (const Slot& slot : {Slot{"bos_token", &special.bos, &special.bos_text}, Slot{"eos_token", &special.eos, &special.eos_text},
                           Slot{"pad_token", &special.pad, &special.pad_text}, Slot{"unk_token", &special.unk, &special.unk_text}}) {
    std::optional<std::string> text;
    if (config) text = token_text(*config, slot.key);
    if (!text && map) text = token_text(*map, slot.key);
    if (!text) continue;
    const auto id = tokenizer.token_to_id(*text);
    if (!id)
      throw InputError(file + ": " + slot.key + " \"" + *text + "\" from the tokenizer config is not in the vocabulary");
    *slot.id = id;
    *slot.text = *text;
  }
  tokenizer.set_special_tokens(std::move(special));
}

std::optional<bool> config_flag(const std::string& file, const std::string& key) {
  const auto config = read_json_beside(file, "tokenizer_config.json");
  if (!config || !config->is_object() || !config->contains(key) || !(*config)[key].is_boolean()) return std::nullopt;
  return (*config)[key].get<bool>();
}

void check_utf8(std::string_view text, const std::string& source) {
  const size_t bad = utf8_invalid_at(text);
  if (bad != std::string_view::npos)
    throw InputError("text is not valid UTF-8 at byte " + std::to_string(bad) + " (tokenizer " + source + ")");
}

void TokenizerBase::check_id(int64_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InputError("token id " + std::to_string(id) + " is outside the vocabulary of " + source_ + " (size " +
                     std::to_string(vocab_size()) + ")");
}

std::string metaspace_to_spaces(std::string_view piece, std::string_view marker) {
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = piece.find(marker, at)) != std::string_view::npos; at = hit + marker.size())
    out.append(piece, at, hit - at) += ' ';
  out.append(piece, at, std::string_view::npos);
  return out;
}

}  // namespace tok
}  // namespace lf
