// Evaluation tasks (method.md §5) from JSONL files, one example per line:
//   exact_match:     {"prompt": str, "answer": str|number[, "system": str]}
//   multiple_choice: {"prompt": str, "choices": [str, ...], "label": int[, "system": str]}
//   perplexity:      {"prompt": str, "response": str} or {"messages": [{"role", "content"}, ...]}
// and answer extraction for exact match.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lf {

struct EvalExample {
  std::string prompt, system;
  std::string answer;                // exact_match
  std::vector<std::string> choices;  // multiple_choice
  int64_t label = -1;                // multiple_choice
  int64_t line = 0;
};

// Reads exact_match or multiple_choice examples (perplexity uses data/examples.h); a bad line is an
// InputError naming file:line. `limit` keeps the first N.
std::vector<EvalExample> read_eval_examples(const std::string& path, const std::string& type, std::optional<int64_t> limit);

// The last number in the text ("1,234.50" -> "1234.5"), normalised; "" when there is none.
std::string extract_last_number(const std::string& text);
// The first match of `pattern`: its first capture group if it has one, else the whole match; "" if none.
std::string extract_regex(const std::string& text, const std::string& pattern);

// Whether an extracted prediction equals the reference answer: numerically when both are numbers
// (after removing thousands separators), else as trimmed strings.
bool answers_match(const std::string& prediction, const std::string& answer);

}  // namespace lf
