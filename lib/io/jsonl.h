// JSONL input: one JSON value per line, blank lines ignored, every problem reported at "path:N".
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <string>

namespace lf {

// Calls `fn(value, line_number)` for each non-blank line of `path`, in order. A line that is not
// JSON, and an InputError that `fn` throws (with a message that says what is wrong, no location),
// become an InputError "path:N: <message>" — or, with skip_invalid, are counted and skipped.
// Returns the number of skipped lines. `line_hint` is the fix-it hint of errors about a line.
int64_t for_each_jsonl_line(const std::string& path, const std::function<void(const nlohmann::json&, int64_t)>& fn,
                            bool skip_invalid = false, const std::string& line_hint = {});

}  // namespace lf
