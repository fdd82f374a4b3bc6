// `logitfuse generate CONFIG.yaml [overrides]`: plain or Dynamic Logit Fusion decoding (method.md §4);
// prompts from JSONL, completions to JSONL in input order.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "decode/config.h"
#include "decode/session.h"
#include "decode/memory_plan.h"

namespace lf::app {

namespace {

const char* kGenerateHelp = R"(Decoding, plain or Dynamic Logit Fusion; prompts from JSONL, completions to JSONL.

Config keys (see docs/decoding.md):
  model: {path, dtype, device}                      a plain model, or
  models: {large: {path, dtype, device}, base: {path}, experts: [{name, path}]}
  fusion: {strategy: dynamic|static|large_only|expert_only, alpha: {min, max, step}, static_alpha, expert, multi_expert: sum|active|closest|route}
  sampling: {temperature (0 = greedy), top_p, top_k, seed}
  generation: {max_new_tokens, stop: [str], batch_size, chat_template, kv_cache}
  input: prompts.jsonl      {"prompt": str[, "system": str]} per line
  output: completions.jsonl {"prompt", "completion", "prompt_ids", "completion_ids", "finish_reason"}
  trace: null               JSONL per step and row: prompt_index, step, token, expert, alpha, J)";

}  // namespace

void add_generate(CLI::App& root) {
  struct Options {
    std::string config, trace;
    std::vector<std::string> overrides;
    bool print_config = false;
    bool dry_run = false;
    int64_t prompt_tokens = 512;
    double memory_gb = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("generate", kGenerateHelp);
  cmd->add_option("config", opt->config, "config YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides");
  cmd->add_option("--trace", opt->trace, "write the chosen expert, alpha and J per step and row to this JSONL file");
  cmd->add_flag("--print-config", opt->print_config, "print the resolved config and exit");
  cmd->add_flag("--dry-run", opt->dry_run,
                "validate the config and every model's config.json, print the memory plan and stop (no weights read)");
  cmd->add_option("--prompt-tokens", opt->prompt_tokens, "--dry-run: prompt length the plan assumes")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--memory-gb", opt->memory_gb, "--dry-run: memory the plan must fit, GB (default: not checked)")
      ->check(CLI::PositiveNumber);
  cmd->callback([opt] {
    GenerateConfig config = load_generate_config(opt->config, opt->overrides);
    if (!opt->trace.empty()) config.trace = opt->trace;
    if (opt->print_config) {
      std::cout << generate_config_to_yaml(config);
      return;
    }
    if (opt->dry_run) {
      const MemoryPlan plan = plan_decoding_memory(config, opt->prompt_tokens, opt->memory_gb * 1e9,
                                                   opt->memory_gb > 0 ? "--memory-gb" : "no --memory-gb given");
      std::cout << format_plan(plan);
      check_plan_fits(plan);
      return;
    }
    const auto prompts = read_prompts(config.input);
    auto session = open_session(config);
    std::vector<std::vector<int64_t>> prompt_ids;
    for (const auto& p : prompts) {
      prompt_ids.push_back(encode_prompt(*session, p.prompt, p.system));
      if (prompt_ids.back().empty())
        throw InputError(config.input + ":" + std::to_string(p.line) + ": the prompt has no tokens");
    }
    std::shared_ptr<TraceWriter> trace;
    if (config.trace) {
      trace = std::make_shared<TraceWriter>(*config.trace, session->set);
      session->options.trace = [trace](const TraceStep& step) { (*trace)(step); };
    }
    const auto start = std::chrono::steady_clock::now();
    const auto completions = generate(session->set, prompt_ids, session->options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    write_completions(config.output, prompts, prompt_ids, completions);
    int64_t tokens = 0;
    for (const auto& c : completions) tokens += static_cast<int64_t>(c.ids.size());
    spdlog::info("wrote {} completion(s), {} tokens in {:.2f} s ({} strategy) to {}", completions.size(), tokens, seconds,
                 session->strategy, config.output);
  });
}

}  // namespace lf::app
