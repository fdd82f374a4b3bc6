// Training data JSONL (data/examples.h), both formats: {"prompt", "response"[, "system"]} and
// {"messages": [...]}; read strictly and with skip_invalid.
#include "fuzz_common.h"
#include "data/examples.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      lf::fuzz::write_scratch("data.jsonl", std::string(reinterpret_cast<const char*>(data), size));
  for (bool skip_invalid : {false, true})
    lf::fuzz::expect_input_error_or_ok([&] {
      const lf::ExampleSet set = lf::read_examples(path, skip_invalid);
      for (const auto& ex : set.examples)
        if (ex.messages.empty() || ex.messages.back().role != "assistant") __builtin_trap();
    });
  return 0;
}
