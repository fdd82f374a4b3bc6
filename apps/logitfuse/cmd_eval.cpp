// `logitfuse eval CONFIG.yaml [overrides]`: exact match, multiple choice and perplexity (method.md §5)
// on a plain model or on fused decoding; metrics to OUTPUT_DIR/metrics.json and a table on stdout.
#include <CLI/CLI.hpp>

#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "decode/config.h"
#include "decode/session.h"
#include "eval/evaluate.h"

namespace lf::app {

namespace {

const char* kEvalHelp = R"(Evaluate a model or fused decoding on exact-match, multiple-choice and perplexity tasks.

Config: the generate keys for the models (model: {path} or models/fusion), sampling and generation, plus
  tasks: [{name, type: exact_match|multiple_choice|perplexity, data: FILE.jsonl,
           extract: last_number|regex, regex: STR, score: sum|mean, limit: N}]
  output_dir: DIR           metrics.json and predictions/<task>.jsonl
Task data (JSONL, one example per line):
  exact_match      {"prompt": str, "answer": str|number}   generate, extract (last_number or the
                   regex's first group), compare (numerically when both are numbers)
  multiple_choice  {"prompt": str, "choices": [str, ...], "label": int}   log-likelihood of each
                   choice after the prompt (score: sum, or mean per token)
  perplexity       {"prompt": str, "response": str} or {"messages": [...]}   over response tokens)";

}  // namespace

void add_eval(CLI::App& root) {
  struct Options {
    std::string config;
    std::vector<std::string> overrides;
    bool print_config = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("eval", kEvalHelp);
  cmd->add_option("config", opt->config, "config YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides");
  cmd->add_flag("--print-config", opt->print_config, "print the resolved config and exit");
  cmd->callback([opt] {
    const EvalConfig config = load_eval_config(opt->config, opt->overrides);
    if (opt->print_config) {
      std::cout << eval_config_to_yaml(config);
      return;
    }
    auto session = open_session(config);
    const auto metrics = run_eval(config, *session);
    std::cout << metrics_table(metrics) << std::flush;
  });
}

}  // namespace lf::app
