// The on-disk format of a logits cache (teacher/logits_cache.h), read without LibTorch: the
// manifest checked against the recipe's spec, and each shard's tensors checked for the names, dtypes,
// shapes and row offsets that LogitsCache::example() relies on. Kept free of ATen types so that the
// fuzz targets (fuzz/) link only this.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors_header.h"

namespace lf {

struct CacheSpec {
  std::string teacher, data_hash, tokenizer_hash, model_fingerprint, chat_template;
  int64_t max_length = 0, max_prompt_length = 0, k = 0;
  std::vector<double> temperatures;
};

// The spec's fields as the manifest stores them.
nlohmann::json cache_spec_json(const CacheSpec& spec);

// Parses `manifest.json` text of the cache in `dir` and checks every field of `expected` (except the
// teacher's name): InputError naming the differing field. Returns the shard file names, each checked
// to be a file in `dir`.
std::vector<std::string> check_cache_manifest(const std::string& text, const std::string& dir, const CacheSpec& expected);

// One shard's index: `lines` (the data line of each example) and `row_offsets` (example i's rows
// are [row_offsets[i], row_offsets[i+1]) of every probs.tT / ids.tT).
struct CacheShardIndex {
  std::vector<int64_t> lines, row_offsets;
};

// Checks a shard (`header` parsed from the `size` bytes at `data`) against the spec: lines I64 [n],
// row_offsets I64 [n+1] from 0 and non-decreasing, ce F64 [n], and per temperature probs.tT F32 and
// ids.tT I32, both [rows, k'] with k' <= spec.k and rows = row_offsets[n]. InputError naming the
// shard and tensor otherwise. Returns lines and row_offsets.
CacheShardIndex check_cache_shard(const SafetensorsHeader& header, const uint8_t* data, uint64_t size,
                                  const CacheSpec& spec, const std::string& path);

}  // namespace lf
