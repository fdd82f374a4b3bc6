// `logitfuse train RECIPE.yaml [key.path=value ...]`: loads and validates the recipe. Training
// itself lands with the fusion-training issue; until then it answers "not yet available".
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <iostream>

#include "commands.h"
#include "config/recipe.h"
#include "core/error.h"

namespace lf::app {

void add_train(CLI::App& root) {
  struct Options {
    std::string recipe;
    std::vector<std::string> overrides;
    std::string resume;
    bool dry_run = false;
    bool print_config = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("train", "Fusion / distillation training from a YAML recipe");
  cmd->add_option("recipe", opt->recipe, "recipe YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides (list items by index: teachers.0.path=DIR)");
  cmd->add_option("--resume", opt->resume, "auto (newest complete checkpoint) or a checkpoint directory");
  cmd->add_flag("--dry-run", opt->dry_run, "validate the recipe and stop");
  cmd->add_flag("--print-config", opt->print_config, "print the resolved recipe as YAML");
  cmd->callback([opt] {
    Recipe recipe = load_recipe(opt->recipe, opt->overrides);
    if (opt->print_config) std::cout << recipe_to_yaml(recipe);
    if (opt->dry_run || opt->print_config) {
      spdlog::info("recipe {} is valid ({} teacher(s), student {})", opt->recipe, recipe.teachers.size(), recipe.student.path);
      return;
    }
    throw NotAvailable("train");
  });
}

void add_cache_logits(CLI::App& root) {
  struct Options {
    std::string recipe;
    std::vector<std::string> overrides;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("cache-logits", "Store the recipe's teachers' top-k logits for later train runs");
  cmd->add_option("recipe", opt->recipe, "recipe YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides");
  cmd->callback([opt] {
    load_recipe(opt->recipe, opt->overrides);  // a bad recipe is still reported as such
    throw NotAvailable("cache-logits");
  });
}

}  // namespace lf::app
