#include "teacher/logits_cache.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/hash.h"
#include "io/file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

nlohmann::json spec_json(const CacheSpec& s) {
  return {{"teacher", s.teacher},         {"data_hash", s.data_hash},
          {"tokenizer_hash", s.tokenizer_hash}, {"model_fingerprint", s.model_fingerprint},
          {"chat_template", s.chat_template}, {"max_length", s.max_length},
          {"max_prompt_length", s.max_prompt_length}, {"k", s.k},
          {"temperatures", s.temperatures}};
}

std::string shard_name(size_t i) {
  char name[64];
  std::snprintf(name, sizeof name, "shard-%05zu.safetensors", i);
  return name;
}

}  // namespace

std::string model_fingerprint(const std::string& model_dir) {
  uint64_t h = hash_file((fs::path(model_dir) / "config.json").string());
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(model_dir))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    auto file = SafetensorsFile::open(f);
    for (const auto& e : file.entries())
      h = fnv1a64(e.name + e.dtype + std::to_string(e.begin) + ":" + std::to_string(e.end), h);
    h = fnv1a64(std::to_string(fs::file_size(f)), h);
  }
  return hex64(h);
}

LogitsCacheWriter::LogitsCacheWriter(std::string dir, CacheSpec spec, int64_t rows_per_shard)
    : dir_(std::move(dir)), spec_(std::move(spec)), rows_per_shard_(rows_per_shard), probs_(spec_.temperatures.size()),
      ids_(spec_.temperatures.size()) {
  if (fs::exists(dir_) && !fs::is_empty(dir_)) {
    // Only an earlier cache is replaced; any other content is left alone.
    if (!fs::exists(fs::path(dir_) / "manifest.json"))
      throw InputError(dir_ + ": exists and is not a logits cache", "choose an empty directory for teachers.N.logits_cache");
    fs::remove_all(dir_);
  }
  fs::create_directories(dir_);
}

void LogitsCacheWriter::add(int64_t line, const std::vector<at::Tensor>& probs, const std::vector<at::Tensor>& ids, double ce) {
  for (size_t t = 0; t < probs.size(); ++t) {
    probs_[t].push_back(probs[t].to(at::kCPU, at::kFloat).contiguous());
    ids_[t].push_back(ids[t].to(at::kCPU, at::kInt).contiguous());
  }
  lines_.push_back(line);
  offsets_.push_back(offsets_.back() + probs[0].size(0));
  ce_.push_back(ce);
  ++examples_;
  if (offsets_.back() >= rows_per_shard_) flush();
}

void LogitsCacheWriter::flush() {
  if (lines_.empty()) return;
  NamedTensors tensors = {{"lines", at::tensor(lines_, at::kLong)}, {"row_offsets", at::tensor(offsets_, at::kLong)},
                          {"ce", at::tensor(ce_, at::kDouble)}};
  for (size_t t = 0; t < probs_.size(); ++t) {
    tensors.emplace_back("probs.t" + std::to_string(t), at::cat(probs_[t]));
    tensors.emplace_back("ids.t" + std::to_string(t), at::cat(ids_[t]));
    probs_[t].clear();
    ids_[t].clear();
  }
  shards_.push_back(shard_name(shards_.size()));
  write_safetensors((fs::path(dir_) / shards_.back()).string(), tensors);
  lines_.clear();
  offsets_ = {0};
  ce_.clear();
}

void LogitsCacheWriter::finish() {
  flush();
  nlohmann::json manifest = spec_json(spec_);
  manifest["version"] = 1;
  manifest["shards"] = shards_;
  manifest["examples"] = examples_;
  write_file_atomic((fs::path(dir_) / "manifest.json").string(), manifest.dump(2) + "\n");  // last: marks it complete
}

std::shared_ptr<LogitsCache> LogitsCache::open(const std::string& dir, const CacheSpec& expected) {
  const fs::path manifest_path = fs::path(dir) / "manifest.json";
  if (!fs::exists(manifest_path))
    throw InputError(dir + ": no logits cache here (no manifest.json)", "run logitfuse cache-logits with this recipe first");
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(read_text_file(manifest_path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(manifest_path.string() + ": not valid JSON: " + e.what());
  }
  const nlohmann::json want = spec_json(expected);
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (it.key() == "teacher") continue;
    if (!manifest.contains(it.key()) || manifest[it.key()] != *it)
      throw InputError(dir + ": stale or mismatched logits cache: " + it.key() + " is " +
                           (manifest.contains(it.key()) ? manifest[it.key()].dump() : std::string("missing")) +
                           " in the cache, " + it->dump() + " for this recipe",
                       "re-run logitfuse cache-logits with this recipe");
  }
  auto cache = std::make_shared<LogitsCache>();
  cache->dir_ = dir;
  cache->spec_ = expected;
  for (const auto& name : manifest.at("shards")) {
    cache->shards_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open((fs::path(dir) / name.get<std::string>()).string())));
    at::Tensor lines = cache->shards_.back()->tensor("lines");
    auto acc = lines.accessor<int64_t, 1>();
    for (int64_t i = 0; i < lines.size(0); ++i) cache->where_[acc[i]] = {cache->shards_.size() - 1, i};
  }
  return cache;
}

CachedExample LogitsCache::example(int64_t line) const {
  auto it = where_.find(line);
  if (it == where_.end()) throw InputError(dir_ + ": the logits cache has no entry for data line " + std::to_string(line));
  const SafetensorsFile& shard = *shards_[it->second.shard];
  at::Tensor offsets = shard.tensor("row_offsets");
  const int64_t begin = offsets[it->second.index].item<int64_t>(), end = offsets[it->second.index + 1].item<int64_t>();
  CachedExample out;
  out.ce = shard.tensor("ce")[it->second.index].item<double>();
  for (size_t t = 0; t < spec_.temperatures.size(); ++t) {
    out.probs.push_back(shard.tensor("probs.t" + std::to_string(t)).narrow(0, begin, end - begin));
    out.ids.push_back(shard.tensor("ids.t" + std::to_string(t)).narrow(0, begin, end - begin).to(at::kLong));
  }
  return out;
}

}  // namespace lf
