// Evaluation task JSONL (eval/tasks.h): exact_match and multiple_choice examples, and the answer
// checks run on them (the reference answer goes through the same number parsing as a prediction).
#include "fuzz_common.h"
#include "eval/tasks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      lf::fuzz::write_scratch("tasks.jsonl", std::string(reinterpret_cast<const char*>(data), size));
  for (const char* type : {"exact_match", "multiple_choice"})
    lf::fuzz::expect_input_error_or_ok([&] {
      for (const auto& ex : lf::read_eval_examples(path, type, std::nullopt)) {
        if (std::string(type) == "multiple_choice" &&
            (ex.label < 0 || ex.label >= static_cast<int64_t>(ex.choices.size())))
          __builtin_trap();
        (void)lf::answers_match(lf::extract_last_number(ex.prompt), ex.answer);
      }
    });
  return 0;
}
