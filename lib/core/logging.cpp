#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lf {

void setup_logging(const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off")
    throw InputError("--log-level: unknown level '" + level + "'", "use trace|debug|info|warn|error|off");
  // Logs go to stderr so that stdout stays clean for JSON output of subcommands.
  auto logger = spdlog::stderr_color_mt("logitfuse");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace lf
