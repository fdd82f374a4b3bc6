// `logitfuse bench tokenize`: single-thread encode throughput over a JSONL corpus, printed as one JSON
// line so bench/tokenize_vs_hf.py can put it beside Hugging Face `tokenizers` measured the same way.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "tokenizer/tokenizer.h"

namespace lf::app {

void add_bench_tokenize(CLI::App& bench) {
  struct Options {
    std::string tokenizer, input;
    int64_t iters = 3;
    bool add_special_tokens = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("tokenize", "Encode throughput of a tokenizer on one thread");
  cmd->add_option("--tokenizer", opt->tokenizer, "tokenizer.json, tokenizer.model or a model directory")->required();
  cmd->add_option("--input", opt->input, "JSONL with a 'text' field")->required();
  cmd->add_option("--iters", opt->iters, "passes over the corpus; the fastest is reported")->capture_default_str();
  cmd->add_flag("--add-special-tokens", opt->add_special_tokens, "apply the post-processor's special tokens");
  cmd->callback([opt] {
    if (opt->iters < 1) throw InputError("bench tokenize: --iters must be >= 1");
    std::vector<std::string> texts;
    size_t bytes = 0;
    for_each_jsonl_line(opt->input, [&](const nlohmann::json& j, int64_t) {
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw InputError("expected an object with a string \"text\" field");
      texts.push_back(j["text"].get<std::string>());
      bytes += texts.back().size();
    });
    const auto load_start = std::chrono::steady_clock::now();
    const auto tokenizer = load_tokenizer(opt->tokenizer);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    double best = 1e30;
    size_t tokens = 0;
    for (int64_t it = 0; it < opt->iters; ++it) {
      tokens = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const auto& text : texts) tokens += tokenizer->encode(text, opt->add_special_tokens).ids.size();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    nlohmann::json out = {{"bench", "tokenize"}, {"impl", "logitfuse"}, {"texts", texts.size()}, {"bytes", bytes},
                          {"tokens", tokens}, {"iters", opt->iters}, {"load_s", load_s}, {"seconds", best},
                          {"mb_per_s", bytes / best / 1e6}, {"tokens_per_s", tokens / best}};
    std::cout << out.dump() << std::endl;
  });
}

}  // namespace lf::app
