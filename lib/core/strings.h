// Small string utilities shared by the config, io and CLI layers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lf {

std::vector<std::string> split(std::string_view text, char sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
bool starts_with(std::string_view text, std::string_view prefix);
bool ends_with(std::string_view text, std::string_view suffix);

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b);

// The closest candidate to `word` if it is plausibly a misspelling of it (distance <= max(1, len/3)),
// else an empty string.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// Human-readable byte count ("1.5 GiB").
std::string format_bytes(double bytes);

}  // namespace lf
