// `logitfuse generate` and `logitfuse eval`: plain and Dynamic Logit Fusion decoding, and
// evaluation. They land with the decoding issue; until then they answer "not yet available".
#include <CLI/CLI.hpp>

#include "commands.h"
#include "core/error.h"

namespace lf::app {

namespace {

void add_pending(CLI::App& root, const char* name, const char* help) {
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = root.add_subcommand(name, help);
  cmd->add_option("config", *config, "config YAML file")->required();
  cmd->add_option("overrides", *overrides, "key.path=value overrides");
  std::string command = name;
  cmd->callback([command, config, overrides] { throw NotAvailable(command); });
}

}  // namespace

void add_generate(CLI::App& root) {
  add_pending(root, "generate", "Decoding, plain or Dynamic Logit Fusion; prompts from JSONL, completions to JSONL");
}

void add_eval(CLI::App& root) {
  add_pending(root, "eval", "Evaluate a model or fused decoding on exact-match, multiple-choice and perplexity tasks");
}

}  // namespace lf::app
