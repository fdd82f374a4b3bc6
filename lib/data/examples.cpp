#include "data/examples.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>


#include "core/error.h"
#include "io/jsonl.h"

namespace lf {

Example parse_example(const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw InputError("not valid JSON");
  }
  return parse_example(j);
}

Example parse_example(const nlohmann::json& j) {
  if (!j.is_object()) throw InputError("expected a JSON object");
  auto text = [&](const nlohmann::json& obj, const char* key, const std::string& where) {
    if (!obj.contains(key)) throw InputError("missing field '" + where + "'");
    if (!obj[key].is_string()) throw InputError("field '" + where + "' must be a string");
    return obj[key].get<std::string>();
  };
  Example ex;
  if (j.contains("messages")) {
    if (!j["messages"].is_array() || j["messages"].empty()) throw InputError("field 'messages' must be a non-empty list");
    for (size_t i = 0; i < j["messages"].size(); ++i) {
      const auto& m = j["messages"][i];
      const std::string where = "messages." + std::to_string(i);
      if (!m.is_object()) throw InputError("field '" + where + "' must be an object");
      Message msg{text(m, "role", where + ".role"), text(m, "content", where + ".content")};
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
        throw InputError("field '" + where + ".role' must be system, user or assistant (got '" + msg.role + "')");
      ex.messages.push_back(std::move(msg));
    }
    if (ex.messages.back().role != "assistant") throw InputError("the last message must be the assistant's response");
  } else if (j.contains("prompt") || j.contains("response")) {
    if (j.contains("system")) ex.messages.push_back({"system", text(j, "system", "system")});
    ex.messages.push_back({"user", text(j, "prompt", "prompt")});
    ex.messages.push_back({"assistant", text(j, "response", "response")});
  } else {
    throw InputError("missing field: expected 'prompt' and 'response', or 'messages'");
  }
  if (ex.messages.back().content.empty()) throw InputError("empty response");
  return ex;
}

ExampleSet read_examples(const std::string& path, bool skip_invalid) {
  ExampleSet set;
  set.path = path;
  set.skipped = for_each_jsonl_line(
      path,
      [&](const nlohmann::json& value, int64_t line) {
        Example ex = parse_example(value);
        ex.line = line;
        set.examples.push_back(std::move(ex));
      },
      skip_invalid, "fix the line, or set data.skip_invalid: true");
  if (set.skipped > 0) spdlog::warn("{}: skipped {} invalid line(s) (data.skip_invalid)", path, set.skipped);
  if (set.examples.empty()) throw InputError(path + ": no valid examples");
  return set;
}

}  // namespace lf
