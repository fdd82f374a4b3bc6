// Training examples from JSONL: {"prompt", "response"[, "system"]} or {"messages": [{"role", "content"}]}.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace lf {

struct Example {
  std::vector<Message> messages;  // ends with the assistant response
  int64_t line = 0;               // 1-based line in the source file, for error messages
};

struct ExampleSet {
  std::string path;
  std::vector<Example> examples;
  int64_t skipped = 0;  // invalid lines skipped under skip_invalid
};

// A bad line (not JSON, missing field, empty response) is an InputError naming file and line, or,
// with skip_invalid, skipped and counted.
ExampleSet read_examples(const std::string& path, bool skip_invalid);

// Parses one line or value; throws InputError (message without the location) when it is invalid.
Example parse_example(const std::string& line);
Example parse_example(const nlohmann::json& value);

}  // namespace lf
