// The LibTorch-free checks of a logits cache (teacher/logits_cache_format.h) that the fuzz target
// fuzz_logits_cache exercises: a damaged manifest or shard is an InputError naming it, never an
// uncaught JSON exception or an out-of-range read in LogitsCache::example().
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cstring>

#include "core/error.h"
#include "io/safetensors_header.h"
#include "teacher/logits_cache_format.h"
#include "test_helpers.h"

using Catch::Matchers::Contains;

namespace {

lf::CacheSpec spec() {
  lf::CacheSpec s;
  s.teacher = "t";
  s.data_hash = "d";
  s.tokenizer_hash = "h";
  s.model_fingerprint = "m";
  s.chat_template = "chatml";
  s.max_length = 64;
  s.max_prompt_length = 32;
  s.k = 4;
  s.temperatures = {1.0};
  return s;
}

nlohmann::json manifest() {
  nlohmann::json m = lf::cache_spec_json(spec());
  m["version"] = 1;
  m["shards"] = {"shard-00000.safetensors"};
  return m;
}

struct Tensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A safetensors file holding `tensors` in order.
std::string shard_bytes(const std::vector<Tensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  const std::string text = header.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return out + text + data;
}

std::vector<Tensor> good_shard(std::vector<int64_t> offsets = {0, 2, 3}) {
  const int64_t rows = offsets.back();
  return {{"lines", "I64", {2}, raw(std::vector<int64_t>{4, 9})},
          {"row_offsets", "I64", {3}, raw(offsets)},
          {"ce", "F64", {2}, raw(std::vector<double>{0.5, 1.0})},
          {"probs.t0", "F32", {rows, 4}, raw(std::vector<float>(rows * 4, 0.25f))},
          {"ids.t0", "I32", {rows, 4}, raw(std::vector<int32_t>(rows * 4, 1))}};
}

std::string check_shard(const std::vector<Tensor>& tensors) {
  const std::string bytes = shard_bytes(tensors);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  return lf::test::error_text([&] {
    const lf::SafetensorsHeader h = lf::parse_safetensors_header(data, bytes.size(), "shard.safetensors");
    lf::check_cache_shard(h, data, bytes.size(), spec(), "shard.safetensors");
  });
}

}  // namespace

TEST_CASE("a cache manifest names its shards and refuses a stale spec", "[logits_cache]") {
  CHECK(lf::check_cache_manifest(manifest().dump(), "c", spec()) == std::vector<std::string>{"shard-00000.safetensors"});
  nlohmann::json stale = manifest();
  stale["k"] = 8;
  CHECK_THAT(lf::test::error_text([&] { lf::check_cache_manifest(stale.dump(), "c", spec()); }),
             Contains("stale or mismatched logits cache: k is 8 in the cache, 4 for this recipe"));
  CHECK_THAT(lf::test::error_text([&] { lf::check_cache_manifest("{", "c", spec()); }),
             Contains("c/manifest.json: not valid JSON"));
}

TEST_CASE("a damaged cache manifest is an input error, not a JSON exception", "[logits_cache]") {
  // Each of these escaped LogitsCache::open as nlohmann::json exceptions (exit 1) or reached outside
  // the cache folder before the checks were split out for fuzzing.
  auto error = [](const nlohmann::json& m) {
    return lf::test::error_text([&] { lf::check_cache_manifest(m.dump(), "c", spec()); });
  };
  nlohmann::json m = manifest();
  m.erase("shards");
  CHECK_THAT(error(m), Contains("c/manifest.json: missing list 'shards'"));
  m["shards"] = {7};
  CHECK_THAT(error(m), Contains("shard 7 is not a file name in the cache folder"));
  m["shards"] = {"../elsewhere.safetensors"};
  CHECK_THAT(error(m), Contains("is not a file name in the cache folder"));
  m["shards"] = {"/abs.safetensors"};
  CHECK_THAT(error(m), Contains("is not a file name in the cache folder"));
  CHECK_THAT(lf::test::error_text([&] { lf::check_cache_manifest("[1]", "c", spec()); }),
             Contains("c/manifest.json: not a JSON object"));
}

TEST_CASE("a cache shard's index tensors are checked before anything indexes them", "[logits_cache]") {
  CHECK(check_shard(good_shard()).empty());
  {
    const std::string bytes = shard_bytes(good_shard());
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    const auto index = lf::check_cache_shard(lf::parse_safetensors_header(data, bytes.size(), "s"), data, bytes.size(), spec(), "s");
    CHECK(index.lines == std::vector<int64_t>{4, 9});
    CHECK(index.row_offsets == std::vector<int64_t>{0, 2, 3});
  }
  auto without = [](const std::string& name) {
    auto t = good_shard();
    for (auto it = t.begin(); it != t.end(); ++it)
      if (it->name == name) {
        t.erase(it);
        break;
      }
    return t;
  };
  CHECK_THAT(check_shard(without("lines")), Contains("shard.safetensors: damaged logits cache shard: no tensor 'lines'"));
  CHECK_THAT(check_shard(without("ids.t0")), Contains("no tensor 'ids.t0'"));
  // Row offsets that do not start at 0, go backwards or do not match the rows stored.
  CHECK_THAT(check_shard(good_shard({1, 2, 3})), Contains("'row_offsets' must start at 0"));
  CHECK_THAT(check_shard(good_shard({0, 3, 2})), Contains("'row_offsets' decreases at entry 2"));
  auto short_probs = good_shard();
  short_probs[3] = {"probs.t0", "F32", {2, 4}, raw(std::vector<float>(8, 0.25f))};
  CHECK_THAT(check_shard(short_probs), Contains("'probs.t0' and 'ids.t0' must both be [3, k <= 4]"));
  auto wide = good_shard();
  wide[3] = {"probs.t0", "F32", {3, 5}, raw(std::vector<float>(15, 0.2f))};
  wide[4] = {"ids.t0", "I32", {3, 5}, raw(std::vector<int32_t>(15, 1))};
  CHECK_THAT(check_shard(wide), Contains("must both be [3, k <= 4]"));
  auto wrong_dtype = good_shard();
  wrong_dtype[0] = {"lines", "I32", {2}, raw(std::vector<int32_t>{4, 9})};
  CHECK_THAT(check_shard(wrong_dtype), Contains("tensor 'lines' must be I64 with 1 dimension(s)"));
  auto few_offsets = good_shard();
  few_offsets[1] = {"row_offsets", "I64", {2}, raw(std::vector<int64_t>{0, 3})};
  CHECK_THAT(check_shard(few_offsets), Contains("'lines' has 2 entries, so 'row_offsets' needs 3"));
}
