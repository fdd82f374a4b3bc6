// A model's `config.json` (model/model_config.h). A config that parses must also survive the way
// logitfuse writes it back (model_config_to_json, used for every saved model) and load again.
#include "fuzz_common.h"
#include "model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lf::ModelConfig config;
  if (!lf::fuzz::expect_input_error_or_ok([&] { config = lf::parse_model_config(text, "config.json"); })) return 0;
  (void)config.rotary_dim();
  const std::string written = lf::model_config_to_json(config);
  // What logitfuse writes, it must read: an InputError here is a finding too.
  const lf::ModelConfig again = lf::parse_model_config(written, "config.json (as written)");
  if (again.vocab_size != config.vocab_size || again.num_layers != config.num_layers ||
      again.hidden_size != config.hidden_size || again.model_type != config.model_type)
    __builtin_trap();
  return 0;
}
