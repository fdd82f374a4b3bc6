// `logitfuse merge`: task arithmetic over Hugging Face directories (method.md §4b), for a merged
// expert that `generate`/`eval` take like any other.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "core/error.h"
#include "model/lora.h"
#include "model/merge.h"

namespace lf::app {

void add_merge(CLI::App& root) {
  auto opt = std::make_shared<MergeOptions>();
  auto adapters = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = root.add_subcommand(
      "merge", "Task arithmetic (or TIES, DARE): base + a combination of λ_t (expert_t − base); or LoRA adapters folded "
               "into the base (W + weight · s · B A, as PEFT's merge_and_unload); streamed tensor by tensor");
  cmd->add_option("--base", opt->base, "the model the experts or adapters were trained from (Hugging Face directory)")
      ->required();
  auto* expert = cmd->add_option("--expert", opt->experts, "an expert directory (repeat for several)");
  cmd->add_option("--lora", *adapters, "a PEFT LoRA adapter directory (repeat for several; applied in order)")
      ->excludes(expert);
  cmd->add_option("--weight", opt->weights, "λ of each expert or adapter, in --expert/--lora order (default 1.0 each)");
  cmd->add_option("--out", opt->out, "the merged model's directory (must not exist or be empty)")->required();
  cmd->add_option("--method", opt->method,
                  "task_arithmetic: Σ λ_t δ_t; ties: trim each δ_t to its largest magnitudes, elect a sign per "
                  "entry, average the agreeing ones; dare: drop entries at random and rescale; dare_ties: both")
      ->check(CLI::IsMember(merge_methods()))
      ->capture_default_str();
  cmd->add_option("--density", opt->density,
                  "share of each task vector kept (ties: by magnitude, default 0.2; dare: at random, default 0.1)");
  cmd->add_option("--seed", opt->seed, "DARE's random drops")->capture_default_str();
  cmd->callback([opt, adapters] {
    if (!adapters->empty()) {
      if (opt->weights.empty()) opt->weights.assign(adapters->size(), 1.0);
      merge_lora_adapters(opt->base, *adapters, opt->weights, opt->out);
      return;
    }
    if (opt->experts.empty()) throw InputError("merge: give --expert (task arithmetic) or --lora (adapters)");
    if (opt->weights.empty()) opt->weights.assign(opt->experts.size(), 1.0);
    merge_task_arithmetic(*opt);
  });
}

}  // namespace lf::app
