#include "io/jsonl.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"

namespace lf {

int64_t for_each_jsonl_line(const std::string& path, const std::function<void(const nlohmann::json&, int64_t)>& fn,
                            bool skip_invalid, const std::string& line_hint) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open");
  int64_t skipped = 0;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      nlohmann::json value;
      try {
        value = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception&) {
        throw InputError("not valid JSON");
      }
      fn(value, number);
    } catch (const InputError& e) {
      if (!skip_invalid)
        throw InputError(path + ":" + std::to_string(number) + ": " + e.what(), e.hint().empty() ? line_hint : e.hint());
      ++skipped;
    }
  }
  return skipped;
}

}  // namespace lf
