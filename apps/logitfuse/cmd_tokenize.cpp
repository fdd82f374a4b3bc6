// `logitfuse tokenize`: token ids and byte offsets of texts, one JSON line each.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "tokenizer/tokenizer.h"

namespace lf::app {

namespace {

void print_encoding(const Encoding& enc, const Tokenizer* decoder) {
  // Hand-built: nlohmann's dump of nested arrays is several times slower than the encoding itself.
  std::string line = "{\"ids\": [";
  for (size_t i = 0; i < enc.ids.size(); ++i) (line += i ? ", " : "") += std::to_string(enc.ids[i]);
  line += "], \"offsets\": [";
  for (size_t i = 0; i < enc.offsets.size(); ++i) {
    if (i) line += ", ";
    line += "[" + std::to_string(enc.offsets[i].first) + ", " + std::to_string(enc.offsets[i].second) + "]";
  }
  line += "]";
  if (decoder) line += ", \"decoded\": " + nlohmann::json(decoder->decode(enc.ids)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += "}\n";
  std::cout << line;
}

}  // namespace

void add_tokenize(CLI::App& root) {
  struct Options {
    std::string tokenizer, text, input;
    bool add_special_tokens = false, decode = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("tokenize", "Token ids and byte offsets of texts, one JSON line each");
  cmd->add_option("--tokenizer", opt->tokenizer, "tokenizer.json, tokenizer.model or a model directory")->required();
  auto* text_opt = cmd->add_option("--text", opt->text, "one text");
  auto* input_opt = cmd->add_option("--input", opt->input, "JSONL with a 'text' field");
  text_opt->excludes(input_opt);
  cmd->add_flag("--add-special-tokens", opt->add_special_tokens,
                "apply the tokenizer's post-processing (e.g. BOS in front), as tokenizers' encode() does by default. "
                "Off by default: ids then cover exactly the text, which is what alignment needs. Special tokens "
                "written in the text are recognised either way");
  cmd->add_flag("--decode", opt->decode,
                "also print \"decoded\": the ids decoded back to text (special tokens kept), for round-trip checks");
  cmd->callback([opt, text_opt, input_opt] {
    if (text_opt->count() == 0 && input_opt->count() == 0) throw InputError("tokenize: give --text or --input");
    const auto tokenizer = load_tokenizer(opt->tokenizer);
    const Tokenizer* decoder = opt->decode ? tokenizer.get() : nullptr;
    std::ios::sync_with_stdio(false);
    if (text_opt->count() > 0) {
      print_encoding(tokenizer->encode(opt->text, opt->add_special_tokens), decoder);
      return;
    }
    for_each_jsonl_line(opt->input, [&](const nlohmann::json& j, int64_t) {
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw InputError("expected an object with a string \"text\" field");
      print_encoding(tokenizer->encode(j["text"].get<std::string>(), opt->add_special_tokens), decoder);
    });
    std::cout.flush();
  });
}

}  // namespace lf::app
