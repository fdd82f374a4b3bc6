// Logging setup: spdlog to stderr, one parseable line per event. Modules call spdlog directly.
#pragma once

#include <string>

namespace lf {

// level: trace|debug|info|warn|error|off. Throws InputError for an unknown level.
void setup_logging(const std::string& level);

}  // namespace lf
