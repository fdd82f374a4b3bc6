#include "eval/tasks.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "io/jsonl.h"

namespace lf {

namespace {

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

// "1,234.500" -> "1234.5", "-0" -> "0", "7." -> "7".
std::string normalise_number(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  if (s == "-0" || s.empty() || s == "-") s = "0";
  return s;
}

std::optional<double> as_number(const std::string& text) {
  static const std::regex number(R"(^\s*-?\d[\d,]*(\.\d+)?\s*$)");
  if (!std::regex_match(text, number)) return std::nullopt;
  return std::stod(normalise_number(trim(text)));
}

}  // namespace

std::string extract_last_number(const std::string& text) {
  static const std::regex number(R"(-?\d[\d,]*(\.\d+)?)");
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number); it != std::sregex_iterator(); ++it)
    last = it->str();
  if (last.empty()) return "";
  while (!last.empty() && last.back() == ',') last.pop_back();  // "12," at the end of a clause
  return normalise_number(last);
}

std::string extract_regex(const std::string& text, const std::string& pattern) {
  std::smatch match;
  if (!std::regex_search(text, match, std::regex(pattern))) return "";
  return trim(match.size() > 1 ? match[1].str() : match[0].str());
}

bool answers_match(const std::string& prediction, const std::string& answer) {
  const auto p = as_number(prediction), a = as_number(answer);
  if (p && a) return std::fabs(*p - *a) <= 1e-9 * std::max(1.0, std::fabs(*a));
  return trim(prediction) == trim(answer);
}

std::vector<EvalExample> read_eval_examples(const std::string& path, const std::string& type, std::optional<int64_t> limit) {
  std::vector<EvalExample> out;
  for_each_jsonl_line(path, [&](const nlohmann::json& j, int64_t number) {
    if (limit && static_cast<int64_t>(out.size()) >= *limit) return;
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      throw InputError("expected an object with a string \"prompt\" field");
    EvalExample e;
    e.line = number;
    e.prompt = j["prompt"].get<std::string>();
    if (j.contains("system") && j["system"].is_string()) e.system = j["system"].get<std::string>();
    if (type == "exact_match") {
      if (!j.contains("answer") || !(j["answer"].is_string() || j["answer"].is_number()))
        throw InputError("exact_match needs an \"answer\" (string or number)");
      e.answer = j["answer"].is_string() ? j["answer"].get<std::string>() : j["answer"].dump();
    } else if (type == "multiple_choice") {
      if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
        throw InputError("multiple_choice needs \"choices\": a list of at least two strings");
      for (const auto& c : j["choices"]) {
        if (!c.is_string() || c.get<std::string>().empty()) throw InputError("every choice must be a non-empty string");
        e.choices.push_back(c.get<std::string>());
      }
      if (!j.contains("label") || !j["label"].is_number_integer())
        throw InputError("multiple_choice needs an integer \"label\" (index of the right choice)");
      e.label = j["label"].get<int64_t>();
      if (e.label < 0 || e.label >= static_cast<int64_t>(e.choices.size()))
        throw InputError("\"label\" " + std::to_string(e.label) + " is not an index into \"choices\"");
    } else {
      throw InputError("read_eval_examples: unsupported task type '" + type + "'");
    }
    out.push_back(std::move(e));
  });
  if (out.empty()) throw InputError(path + ": no examples");
  return out;
}

}  // namespace lf
