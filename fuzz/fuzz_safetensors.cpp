// A safetensors file (model shards, logits-cache shards, `logits --out`): the 8-byte header size,
// the JSON header and its checks (io/safetensors_header.h). Every entry the parser accepts is then
// read byte by byte, so ASan reports any offset it let through outside the file.
#include "fuzz_common.h"
#include "io/safetensors_header.h"

#include <cassert>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::SafetensorsHeader header = lf::parse_safetensors_header(data, size, "fuzz.safetensors");
    uint8_t sum = 0;
    for (const auto& e : header.entries) {
      if (header.data_start + e.end > size || e.begin > e.end) __builtin_trap();
      const size_t element = lf::safetensors_dtype_size(e.dtype);
      uint64_t numel = 1;
      for (int64_t d : e.shape) numel *= static_cast<uint64_t>(d);
      if (numel * element != e.end - e.begin) __builtin_trap();
      for (uint64_t i = e.begin; i < e.end; ++i) sum ^= data[header.data_start + i];
      if (header.index.at(e.name) >= header.entries.size()) __builtin_trap();
    }
    volatile uint8_t keep = sum;
    (void)keep;
  });
  return 0;
}
