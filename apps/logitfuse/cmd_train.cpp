// `logitfuse train RECIPE.yaml [key.path=value ...]`: fusion training from a recipe, and
// `logitfuse cache-logits`.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "config/recipe.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/launch_env.h"
#include "model/checkpoint.h"
#include "train/cache_logits.h"
#include "train/memory_plan.h"
#include "train/trainer.h"

namespace lf::app {

namespace {

// The communicator of this process, from the launcher's environment and recipe.dist, made once here
// so nothing deeper reads the environment. One process per GPU: with NCCL and several ranks the
// student goes on cuda:LOCAL_RANK unless the recipe names a device index.
std::unique_ptr<Communicator> make_train_communicator(Recipe& recipe, const LaunchEnv& launch) {
  const c10::Device device = parse_device(recipe.run.device);
  const std::string backend = recipe.dist.backend == "auto" ? (device.is_cuda() ? "nccl" : "cpu") : recipe.dist.backend;
  CommunicatorOptions options{backend, 0, recipe.dist.timeout_s};
  if (backend == "nccl") {
    if (!device.is_cuda())
      throw InputError("dist.backend=nccl needs the student on CUDA (run.device=" + recipe.run.device + ")",
                       "set run.device=cuda, or dist.backend=cpu");
    if (launch.world_size > 1 && !device.has_index()) recipe.run.device = "cuda:" + std::to_string(launch.local_rank);
    options.device_index = parse_device(recipe.run.device).index();
    if (options.device_index < 0) options.device_index = 0;
  }
  auto comm = make_communicator(launch, options);
  if (comm->name() == "single-process") return comm;  // nothing to tell (and data errors stay one line)
  if (!comm->is_main()) spdlog::set_level(spdlog::level::warn);  // rank 0 tells the story
  spdlog::info("communicator: {} ({}), student on {}, dist.zero {}", comm->name(), launch.describe(), recipe.run.device,
               recipe.dist.zero);
  return comm;
}

}  // namespace

void add_train(CLI::App& root) {
  struct Options {
    std::string recipe;
    std::vector<std::string> overrides;
    std::string resume;
    bool dry_run = false;
    bool print_config = false;
    int64_t world_size = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("train", "Fusion / distillation training from a YAML recipe");
  cmd->add_option("recipe", opt->recipe, "recipe YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides (list items by index: teachers.0.path=DIR)");
  cmd->add_option("--resume", opt->resume, "auto (newest complete checkpoint) or a checkpoint directory");
  cmd->add_flag("--dry-run", opt->dry_run, "validate the recipe, print the memory plan and stop");
  cmd->add_option("--world-size", opt->world_size, "--dry-run: plan for this many ranks (default: the launcher's)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--print-config", opt->print_config, "print the resolved recipe as YAML");
  cmd->callback([opt] {
    Recipe recipe = load_recipe(opt->recipe, opt->overrides);
    if (opt->print_config) std::cout << recipe_to_yaml(recipe);
    const LaunchEnv launch = parse_launch_env(process_environment());
    if (opt->dry_run || opt->print_config) {
      spdlog::info("recipe {} is valid ({} teacher(s), student {}); launch: {}", opt->recipe, recipe.teachers.size(),
                   recipe.student.path, launch.describe());
      if (!opt->dry_run) return;
      // The plan for the world size asked for, every rank on one node unless the launcher says otherwise.
      const int64_t world = opt->world_size > 0 ? opt->world_size : launch.world_size;
      const int64_t local = opt->world_size > 0 ? std::min<int64_t>(world, 8) : launch.local_world_size;
      const MemoryPlan plan = plan_memory(recipe, world, local);
      std::cout << format_plan(plan);
      for (size_t t = 0; t < plan.placements.size(); ++t)
        std::cout << "  teacher " << recipe.teachers[t].name << ": " << placement_name(plan.placements[t]) << "\n";
      check_plan_fits(plan);
      return;
    }
    if (!opt->resume.empty() && opt->resume != "auto" && !std::filesystem::is_directory(opt->resume))
      throw InputError("--resume: '" + opt->resume + "' is neither auto nor a checkpoint directory");
    TrainOptions options;
    options.resume = opt->resume;
    options.local_world_size = launch.local_world_size;
    if (const char* fault = std::getenv("LOGITFUSE_INJECT_FAULT")) {
      options.inject_fault = fault;
      if (options.inject_fault != "local_token_mean")
        throw InputError("LOGITFUSE_INJECT_FAULT: unknown fault '" + options.inject_fault + "'", "known: local_token_mean");
      spdlog::warn("LOGITFUSE_INJECT_FAULT={}: a known-wrong gradient average, for the tests", options.inject_fault);
    }
    const char* home = std::getenv("LOGITFUSE_HOME");
    const char* user_home = std::getenv("HOME");
    options.vocab_cache_dir = home ? std::string(home) + "/vocab-maps"
                                   : std::string(user_home ? user_home : ".") + "/.cache/logitfuse/vocab-maps";
    auto comm = make_train_communicator(recipe, launch);
    int status = 0;
    try {
      status = run_training(recipe, options, *comm);
    } catch (const std::exception& e) {
      if (comm->world_size() == 1) throw;
      // The other ranks may wait in a collective for this one: end the whole job, with our status.
      const auto* error = dynamic_cast<const Error*>(&e);
      std::cerr << "error: rank " << comm->rank() << ": " << (error ? error->one_line() : std::string(e.what())) << "\n";
      comm->abort(error ? error->exit_code() : kExitRuntime);
    }
    comm.reset();  // MPI_Finalize before exit
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
