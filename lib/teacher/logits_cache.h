// Offline teachers: `logitfuse cache-logits` runs a teacher once over the training data and stores,
// per response position of its own tokenization, the top-k probabilities and ids at each
// temperature the recipe uses, and per example its token-mean CE (for min_ce mixing). Training then
// reads the shards memory-mapped instead of running the teacher. A cache is tied to the data file,
// the tokenizer, the teacher's weights, the chat template, the truncation and k by a manifest; a
// stale or mismatched cache is refused with the field that differs.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "teacher/logits_cache_format.h"

namespace lf {

class SafetensorsFile;

// A fingerprint of a model directory's weights without reading them: config.json and the
// safetensors headers (names, dtypes, shapes, offsets) and sizes.
std::string model_fingerprint(const std::string& model_dir);

struct CachedExample {
  std::vector<at::Tensor> probs, ids;  // per temperature: [rows, k] float32, [rows, k] int64
  double ce = 0;
};

class LogitsCacheWriter {
 public:
  // Writes into a staging folder beside DIR (DIR.tmp-PID) and replaces DIR only in finish(), so an
  // earlier complete cache stays readable until the new one is whole; a writer destroyed before
  // finish() (an error, a full disk) removes its staging folder.
  LogitsCacheWriter(std::string dir, CacheSpec spec, int64_t rows_per_shard = 1 << 20);
  ~LogitsCacheWriter();
  LogitsCacheWriter(const LogitsCacheWriter&) = delete;
  LogitsCacheWriter& operator=(const LogitsCacheWriter&) = delete;
  // `line` identifies the example (its line in the data file).
  void add(int64_t line, const std::vector<at::Tensor>& probs, const std::vector<at::Tensor>& ids, double ce);
  void finish();

 private:
  void flush();
  std::string dir_, staging_;
  bool finished_ = false;
  CacheSpec spec_;
  int64_t rows_per_shard_;
  std::vector<int64_t> lines_, offsets_{0};
  std::vector<std::vector<at::Tensor>> probs_, ids_;  // [temperature][example]
  std::vector<double> ce_;
  std::vector<std::string> shards_;
  int64_t examples_ = 0;
};

class LogitsCache {
 public:
  // Opens DIR and checks it against `expected` (every field): InputError naming the differing field.
  static std::shared_ptr<LogitsCache> open(const std::string& dir, const CacheSpec& expected);
  bool contains(int64_t line) const { return where_.count(line) > 0; }
  // The rows of one example at temperature index t; k_used <= spec k.
  CachedExample example(int64_t line) const;
  const CacheSpec& spec() const { return spec_; }

 private:
  std::string dir_, staging_;
  bool finished_ = false;
  CacheSpec spec_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  struct Where {
    size_t shard;
    int64_t index;
  };
  std::map<int64_t, Where> where_;
};

}  // namespace lf
