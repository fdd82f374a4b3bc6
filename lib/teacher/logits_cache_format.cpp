#include "teacher/logits_cache_format.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lf {

nlohmann::json cache_spec_json(const CacheSpec& s) {
  return {{"teacher", s.teacher},         {"data_hash", s.data_hash},
          {"tokenizer_hash", s.tokenizer_hash}, {"model_fingerprint", s.model_fingerprint},
          {"chat_template", s.chat_template}, {"max_length", s.max_length},
          {"max_prompt_length", s.max_prompt_length}, {"k", s.k},
          {"temperatures", s.temperatures}};
}

std::vector<std::string> check_cache_manifest(const std::string& text, const std::string& dir, const CacheSpec& expected) {
  const std::string manifest_path = (std::filesystem::path(dir) / "manifest.json").string();
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(manifest_path + ": not valid JSON: " + e.what());
  }
  if (!manifest.is_object()) throw InputError(manifest_path + ": not a JSON object");
  const nlohmann::json want = cache_spec_json(expected);
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (it.key() == "teacher") continue;
    if (!manifest.contains(it.key()) || manifest[it.key()] != *it)
      throw InputError(dir + ": stale or mismatched logits cache: " + it.key() + " is " +
                           (manifest.contains(it.key()) ? manifest[it.key()].dump() : std::string("missing")) +
                           " in the cache, " + it->dump() + " for this recipe",
                       "re-run logitfuse cache-logits with this recipe");
  }
  // A manifest that matches the spec but lacks a usable shard list is damaged, not stale.
  const auto shards = manifest.find("shards");
  if (shards == manifest.end() || !shards->is_array())
    throw InputError(manifest_path + ": missing list 'shards'", "re-run logitfuse cache-logits with this recipe");
  std::vector<std::string> out;
  for (const auto& name : *shards) {
    if (!name.is_string() || name.get<std::string>().empty() || name.get<std::string>().find('/') != std::string::npos ||
        name.get<std::string>() == "." || name.get<std::string>() == "..")
      throw InputError(manifest_path + ": shard " + name.dump() + " is not a file name in the cache folder",
                       "re-run logitfuse cache-logits with this recipe");
    out.push_back(name.get<std::string>());
  }
  return out;
}

CacheShardIndex check_cache_shard(const SafetensorsHeader& header, const uint8_t* data, uint64_t size,
                                  const CacheSpec& spec, const std::string& path) {
  auto fail = [&](const std::string& what) {
    return InputError(path + ": damaged logits cache shard: " + what, "re-run logitfuse cache-logits with this recipe");
  };
  auto get = [&](const std::string& name, const char* dtype, size_t dims) -> const SafetensorsEntry& {
    auto it = header.index.find(name);
    if (it == header.index.end()) throw fail("no tensor '" + name + "'");
    const SafetensorsEntry& e = header.entries[it->second];
    if (e.dtype != dtype || e.shape.size() != dims)
      throw fail("tensor '" + name + "' must be " + dtype + " with " + std::to_string(dims) + " dimension(s)");
    return e;
  };
  // Values of a validated I64 entry (the parser checked its bytes lie inside the file).
  auto values = [&](const SafetensorsEntry& e) {
    std::vector<int64_t> out(static_cast<size_t>(e.shape[0]));
    if (!out.empty()) std::memcpy(out.data(), data + header.data_start + e.begin, out.size() * sizeof(int64_t));
    return out;
  };
  CacheShardIndex out;
  const SafetensorsEntry& lines = get("lines", "I64", 1);
  const SafetensorsEntry& offsets = get("row_offsets", "I64", 1);
  const SafetensorsEntry& ce = get("ce", "F64", 1);
  const int64_t n = lines.shape[0];
  if (offsets.shape[0] != n + 1 || ce.shape[0] != n)
    throw fail("'lines' has " + std::to_string(n) + " entries, so 'row_offsets' needs " + std::to_string(n + 1) +
               " and 'ce' " + std::to_string(n) + " (they have " + std::to_string(offsets.shape[0]) + " and " +
               std::to_string(ce.shape[0]) + ")");
  out.lines = values(lines);
  out.row_offsets = values(offsets);
  if (out.row_offsets[0] != 0) throw fail("'row_offsets' must start at 0");
  for (int64_t i = 0; i < n; ++i)
    if (out.row_offsets[i + 1] < out.row_offsets[i]) throw fail("'row_offsets' decreases at entry " + std::to_string(i + 1));
  const int64_t rows = out.row_offsets[n];
  for (size_t t = 0; t < spec.temperatures.size(); ++t) {
    const std::string suffix = ".t" + std::to_string(t);
    const SafetensorsEntry& probs = get("probs" + suffix, "F32", 2);
    const SafetensorsEntry& ids = get("ids" + suffix, "I32", 2);
    if (probs.shape != ids.shape || probs.shape[0] != rows || probs.shape[1] > spec.k)
      throw fail("'probs" + suffix + "' and 'ids" + suffix + "' must both be [" + std::to_string(rows) + ", k <= " +
                 std::to_string(spec.k) + "]");
  }
  return out;
}

}  // namespace lf
