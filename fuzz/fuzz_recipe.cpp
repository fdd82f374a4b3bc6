// A training recipe YAML with `key.path=value` overrides (config/recipe.h). Input: the YAML, then
// NUL-separated override lines. A recipe that loads must also load back from its resolved YAML
// (recipe_to_yaml, written as recipe.resolved.yaml by every run).
#include "fuzz_common.h"
#include "config/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parts = lf::fuzz::split_parts(data, size, 8);
  const std::string path = lf::fuzz::write_scratch("recipe.yaml", parts[0]);
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  lf::Recipe recipe;
  if (!lf::fuzz::expect_input_error_or_ok([&] { recipe = lf::load_recipe(path, overrides); })) return 0;
  const std::string resolved = lf::recipe_to_yaml(recipe);
  const std::string again = lf::fuzz::write_scratch("recipe.resolved.yaml", resolved);
  // What logitfuse writes, it must read back unchanged: an InputError here is a finding too.
  if (lf::recipe_to_yaml(lf::load_recipe(again)) != resolved) __builtin_trap();
  return 0;
}
