#include "eval/evaluate.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "data/examples.h"
#include "data/sequence.h"
#include "eval/scoring.h"
#include "eval/tasks.h"

namespace lf {

namespace fs = std::filesystem;

namespace {

void write_jsonl(const fs::path& path, const std::vector<nlohmann::json>& rows) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw RuntimeFailure(path.string() + ": cannot write");
  for (const auto& r : rows) out << r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

nlohmann::json exact_match(const TaskConfig& task, Session& session, const std::vector<Message>& shots,
                           std::vector<nlohmann::json>& predictions) {
  const auto examples = read_eval_examples(task.data, task.type, task.limit);
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& e : examples) prompts.push_back(encode_prompt(session, e.prompt, e.system, &shots));
  const auto completions = generate(session.set, prompts, session.options);
  int64_t correct = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const std::string& text = completions[i].text;
    const std::string extracted = task.extract == "regex" ? extract_regex(text, task.regex) : extract_last_number(text);
    const bool ok = !extracted.empty() && answers_match(extracted, examples[i].answer);
    correct += ok;
    predictions.push_back({{"line", examples[i].line}, {"prompt", examples[i].prompt}, {"completion", text},
                           {"extracted", extracted}, {"answer", examples[i].answer}, {"correct", ok}});
  }
  const auto n = static_cast<int64_t>(examples.size());
  return {{"type", task.type}, {"n", n}, {"correct", correct}, {"exact_match", static_cast<double>(correct) / n}};
}

nlohmann::json multiple_choice(const TaskConfig& task, Session& session, const std::vector<Message>& shots,
                               std::vector<nlohmann::json>& predictions) {
  const auto examples = read_eval_examples(task.data, task.type, task.limit);
  const Tokenizer& tokenizer = *session.set.tokenizer;
  std::vector<ScoreRequest> requests;
  for (const auto& e : examples) {
    const auto context = encode_prompt(session, e.prompt, e.system, &shots);
    for (const auto& choice : e.choices) requests.push_back({context, tokenizer.encode(choice).ids});
  }
  const auto scores = score_continuations(session.set, requests, session.options.batch_size);
  int64_t correct = 0;
  size_t k = 0;
  for (const auto& e : examples) {
    std::vector<double> values;
    for (size_t c = 0; c < e.choices.size(); ++c, ++k) {
      const ScoreResult& s = scores[k];
      values.push_back(task.score == "mean" ? s.logprob / std::max<int64_t>(1, s.tokens) : s.logprob);
    }
    const int64_t pick = std::max_element(values.begin(), values.end()) - values.begin();
    correct += pick == e.label;
    predictions.push_back({{"line", e.line}, {"scores", values}, {"prediction", pick}, {"label", e.label}});
  }
  const auto n = static_cast<int64_t>(examples.size());
  return {{"type", task.type}, {"n", n}, {"correct", correct}, {"accuracy", static_cast<double>(correct) / n},
          {"score", task.score}};
}

nlohmann::json perplexity(const TaskConfig& task, Session& session, const std::vector<Message>& shots,
                          std::vector<nlohmann::json>& predictions) {
  ExampleSet set = read_examples(task.data, /*skip_invalid=*/false);
  if (task.limit && static_cast<int64_t>(set.examples.size()) > *task.limit) set.examples.resize(*task.limit);
  std::vector<ScoreRequest> requests;
  std::vector<int64_t> content_tokens, content_bytes;
  const Truncation no_truncation{int64_t{1} << 40, int64_t{1} << 40};
  const Tokenizer& tokenizer = *session.set.tokenizer;
  // A response with nothing before it (plain text that the tokenizer starts with no BOS) is predicted
  // from the tokenizer's EOS, the end of a previous text, as lm-evaluation-harness scores rolling
  // text (its BOS where it has no EOS): every byte of the text is scored.
  const SpecialTokens& special = tokenizer.special_tokens();
  const std::optional<int64_t> start = special.eos ? special.eos : special.bos;
  for (Example e : set.examples) {
    // The in-context examples go after a leading system message, before the conversation.
    const auto at = e.messages.begin() + (!e.messages.empty() && e.messages.front().role == "system" ? 1 : 0);
    e.messages.insert(at, shots.begin(), shots.end());
    const TokenizedSequence seq = tokenize_example(e, tokenizer, session.chat_template, no_truncation);
    int64_t split = seq.prompt_length;
    std::vector<int64_t> context(seq.ids.begin(), seq.ids.begin() + split);
    if (context.empty()) {
      if (start) {
        context = {*start};
      } else {  // no start token at all: the first token becomes the context
        split = 1;
        context = {seq.ids.front()};
      }
    }
    requests.push_back({context, {seq.ids.begin() + split, seq.ids.end()}});
    content_tokens.push_back(seq.content_tokens - (split - seq.prompt_length));
    content_bytes.push_back(static_cast<int64_t>(e.messages.back().content.size()));
  }
  const auto scores = score_continuations(session.set, requests, session.options.batch_size);
  double nll = 0, content_nll = 0;
  int64_t tokens = 0, bytes = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    nll -= scores[i].logprob;
    tokens += scores[i].tokens;
    double row_content = 0;
    for (int64_t k = 0; k < content_tokens[i]; ++k) row_content -= scores[i].token_logprobs[k];
    content_nll += row_content;
    bytes += content_bytes[i];
    predictions.push_back({{"line", set.examples[i].line}, {"logprob", scores[i].logprob}, {"tokens", scores[i].tokens},
                           {"content_logprob", -row_content}, {"bytes", content_bytes[i]}});
  }
  const double per_token = nll / std::max<int64_t>(1, tokens);
  // Bits per UTF-8 byte of the response text: the content tokens only (no end-of-turn or EOS), so
  // that models with different tokenizers compare on the same text.
  return {{"type", task.type}, {"n", static_cast<int64_t>(scores.size())}, {"tokens", tokens},
          {"nll_per_token", per_token}, {"perplexity", std::exp(per_token)}, {"bytes", bytes},
          {"bits_per_byte", content_nll / std::log(2.0) / std::max<int64_t>(1, bytes)}};
}

}  // namespace

nlohmann::json run_eval(const EvalConfig& config, Session& session) {
  const fs::path out_dir(config.output_dir);
  fs::create_directories(out_dir / "predictions");
  nlohmann::json metrics = {{"strategy", session.strategy}, {"tasks", nlohmann::json::object()}};
  for (const auto& task : config.tasks) {
    spdlog::info("task {} ({}) on {}", task.name, task.type, task.data);
    std::vector<nlohmann::json> predictions;
    const std::vector<Message> shots =
        task.shots || task.shots_file
            ? read_shots(task.shots_file.value_or(config.generation.shots_file), task.shots.value_or(config.generation.shots))
            : session.shots;
    nlohmann::json m = task.type == "exact_match"       ? exact_match(task, session, shots, predictions)
                       : task.type == "multiple_choice" ? multiple_choice(task, session, shots, predictions)
                                                        : perplexity(task, session, shots, predictions);
    if (!shots.empty()) m["shots"] = static_cast<int64_t>(shots.size() / 2);
    metrics["tasks"][task.name] = m;
    write_jsonl(out_dir / "predictions" / (task.name + ".jsonl"), predictions);
  }
  const fs::path file = out_dir / "metrics.json";
  std::ofstream(file) << metrics.dump(2) << "\n";
  if (!fs::exists(file)) throw RuntimeFailure(file.string() + ": cannot write");
  return metrics;
}

std::string metrics_table(const nlohmann::json& metrics) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %-16s %6s  %-14s %10s\n", "task", "type", "n", "metric", "value");
  out << "strategy: " << metrics.value("strategy", std::string("?")) << "\n" << line;
  for (const auto& [name, m] : metrics["tasks"].items()) {
    const std::string type = m["type"];
    const std::string key = type == "exact_match" ? "exact_match" : type == "multiple_choice" ? "accuracy" : "perplexity";
    std::snprintf(line, sizeof line, "%-24s %-16s %6lld  %-14s %10.4f\n", name.c_str(), type.c_str(),
                  static_cast<long long>(m["n"].get<int64_t>()), key.c_str(), m[key].get<double>());
    out << line;
  }
  return out.str();
}

}  // namespace lf
