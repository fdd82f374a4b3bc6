// `logitfuse tokenize`: token ids and byte offsets of texts, one JSON line each.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "core/error.h"

namespace lf::app {

void add_tokenize(CLI::App& root) {
  auto tokenizer = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto input = std::make_shared<std::string>();
  CLI::App* cmd = root.add_subcommand("tokenize", "Token ids and byte offsets of texts, one JSON line each");
  cmd->add_option("--tokenizer", *tokenizer, "tokenizer.json, tokenizer.model or a model directory")->required();
  auto* text_opt = cmd->add_option("--text", *text, "one text");
  auto* input_opt = cmd->add_option("--input", *input, "JSONL with a 'text' field");
  text_opt->excludes(input_opt);
  cmd->callback([tokenizer, text, input] { throw NotAvailable("tokenize"); });
}

}  // namespace lf::app
