// `model.safetensors.index.json`: the weight map of a sharded checkpoint, and the shard names it
// lists (which must stay inside the checkpoint folder).
#include "fuzz_common.h"
#include "io/safetensors_header.h"

#include <algorithm>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::SafetensorsIndex index = lf::parse_safetensors_index(text, "model.safetensors.index.json");
    for (const auto& f : index.files) lf::check_safetensors_shard_name(f, "model.safetensors.index.json");
    for (const auto& [name, file] : index.weight_map)
      if (std::find(index.files.begin(), index.files.end(), file) == index.files.end()) __builtin_trap();
  });
  return 0;
}
