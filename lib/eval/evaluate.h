// `logitfuse eval`: runs every task of an EvalConfig on a decoding session (a plain model or fused
// decoding), writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/predictions/<task>.jsonl.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "decode/config.h"
#include "decode/session.h"

namespace lf {

// {"strategy": ..., "tasks": {name: {"type", "n", <metric>...}}}. Metrics per type:
//   exact_match: exact_match (fraction), correct; multiple_choice: accuracy, correct;
//   perplexity: perplexity, nll_per_token, tokens.
nlohmann::json run_eval(const EvalConfig& config, Session& session);

// One line per task: name, type, n, main metric; fits one screen.
std::string metrics_table(const nlohmann::json& metrics);

}  // namespace lf
