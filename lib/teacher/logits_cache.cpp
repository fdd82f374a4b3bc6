#include "teacher/logits_cache.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include <unistd.h>

#include "core/error.h"
#include "core/hash.h"
#include "io/file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

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
  fs::path normal = fs::path(dir_).lexically_normal();
  if (!normal.has_filename()) normal = normal.parent_path();  // "cache/": the staging goes beside it, not inside
  dir_ = normal.string();
  // Only an earlier cache is replaced (in finish()); any other content is left alone.
  if (fs::exists(dir_) && !fs::is_empty(dir_) && !fs::exists(fs::path(dir_) / "manifest.json"))
    throw InputError(dir_ + ": exists and is not a logits cache", "choose an empty directory for teachers.N.logits_cache");
  const fs::path parent = fs::absolute(dir_).parent_path();
  fs::create_directories(parent);
  remove_stale_staging(parent.string());  // what a killed cache-logits left
  staging_ = dir_ + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging_);
  fs::create_directories(staging_);
}

LogitsCacheWriter::~LogitsCacheWriter() {
  if (finished_) return;
  std::error_code ignored;
  fs::remove_all(staging_, ignored);
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
  write_safetensors((fs::path(staging_) / shards_.back()).string(), tensors);
  lines_.clear();
  offsets_ = {0};
  ce_.clear();
}

void LogitsCacheWriter::finish() {
  flush();
  nlohmann::json manifest = cache_spec_json(spec_);
  manifest["version"] = 1;
  manifest["shards"] = shards_;
  manifest["examples"] = examples_;
  write_file_atomic((fs::path(staging_) / "manifest.json").string(), manifest.dump(2) + "\n");  // last: marks it complete
  fsync_directory(staging_);
  // The earlier cache steps aside (a name the stale-staging sweep removes if we die right here),
  // the new one takes its place, then the earlier one goes.
  const std::string old = staging_ + "-old";
  if (fs::exists(dir_)) fs::rename(dir_, old);
  fs::rename(staging_, dir_);
  finished_ = true;
  std::error_code ignored;
  fs::remove_all(old, ignored);
  fsync_directory(fs::absolute(dir_).parent_path().string());
}

std::shared_ptr<LogitsCache> LogitsCache::open(const std::string& dir, const CacheSpec& expected) {
  const fs::path manifest_path = fs::path(dir) / "manifest.json";
  if (!fs::exists(manifest_path))
    throw InputError(dir + ": no logits cache here (no manifest.json)", "run logitfuse cache-logits with this recipe first");
  const std::vector<std::string> shards = check_cache_manifest(read_text_file(manifest_path.string()), dir, expected);
  auto cache = std::make_shared<LogitsCache>();
  cache->dir_ = dir;
  cache->spec_ = expected;
  for (const auto& name : shards) {
    const std::string path = (fs::path(dir) / name).string();
    cache->shards_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open(path)));
    const SafetensorsFile& shard = *cache->shards_.back();
    // Checked here, once, so that example() can index the shard's tensors without further checks.
    const CacheShardIndex index = check_cache_shard(shard.header(), shard.data(), shard.size(), expected, path);
    for (size_t i = 0; i < index.lines.size(); ++i)
      cache->where_[index.lines[i]] = {cache->shards_.size() - 1, static_cast<int64_t>(i)};
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
