// A logits cache (teacher/logits_cache_format.h): `manifest.json` checked against a fixed spec, and
// a shard's safetensors header and index tensors checked for what LogitsCache::example() indexes.
// Input: manifest.json NUL shard bytes. The two halves are checked independently, so that a
// mutation breaking one still exercises the other.
#include "fuzz_common.h"
#include "teacher/logits_cache_format.h"

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
  s.temperatures = {1.0, 2.0};
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const lf::CacheSpec kSpec = spec();
  const auto parts = lf::fuzz::split_parts(data, size, 2);
  lf::fuzz::expect_input_error_or_ok([&] {
    for (const auto& name : lf::check_cache_manifest(parts[0], "cache", kSpec))
      if (name.empty() || name.find('/') != std::string::npos) __builtin_trap();
  });
  if (parts.size() < 2) return 0;
  // The shard in a buffer of its own size, so ASan sees reads past its end.
  const std::vector<uint8_t> shard(parts[1].begin(), parts[1].end());
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::SafetensorsHeader header = lf::parse_safetensors_header(shard.data(), shard.size(), "shard.safetensors");
    const lf::CacheShardIndex index = lf::check_cache_shard(header, shard.data(), shard.size(), kSpec, "shard.safetensors");
    if (index.row_offsets.size() != index.lines.size() + 1) __builtin_trap();
  });
  return 0;
}
