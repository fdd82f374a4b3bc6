// `logitfuse train RECIPE.yaml [key.path=value ...]`: fusion training from a recipe, and
// `logitfuse cache-logits`.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "config/recipe.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/launch_env.h"
#include "train/cache_logits.h"
#include "train/trainer.h"

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
    const LaunchEnv launch = parse_launch_env(process_environment());
    if (opt->dry_run || opt->print_config) {
      spdlog::info("recipe {} is valid ({} teacher(s), student {}); launch: {}", opt->recipe, recipe.teachers.size(),
                   recipe.student.path, launch.describe());
      return;
    }
    if (!opt->resume.empty() && opt->resume != "auto" && !std::filesystem::is_directory(opt->resume))
      throw InputError("--resume: '" + opt->resume + "' is neither auto nor a checkpoint directory");
    TrainOptions options;
    options.resume = opt->resume;
    const char* home = std::getenv("LOGITFUSE_HOME");
    const char* user_home = std::getenv("HOME");
    options.vocab_cache_dir = home ? std::string(home) + "/vocab-maps"
                                   : std::string(user_home ? user_home : ".") + "/.cache/logitfuse/vocab-maps";
    // Several processes (torchrun, srun) or NCCL need the multi-GPU engine, which is not built yet;
    // running each process as its own single-process job would silently train N copies.
    if (recipe.dist.backend == "nccl") throw NotAvailable("dist.backend=nccl (multi-GPU training)");
    if (launch.world_size > 1) throw NotAvailable("multi-process training (" + launch.describe() + ")");
    auto comm = make_single_process_communicator();
    const int status = run_training(recipe, options, *comm);
    if (status != 0) std::exit(status);
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
  cmd->callback([opt] { write_logits_caches(load_recipe(opt->recipe, opt->overrides)); });
}

}  // namespace lf::app
