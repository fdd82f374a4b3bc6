#include "sweep/run_record.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "io/file.h"

namespace fs = std::filesystem;

namespace lf {

bool run_finished(const std::string& output_dir) { return fs::exists(fs::path(output_dir) / "final" / "config.json"); }

std::string run_state_on_disk(const std::string& output_dir) {
  if (run_finished(output_dir)) return "finished";
  const fs::path dir(output_dir);
  if (fs::exists(dir / "checkpoints") || fs::exists(dir / "metrics.jsonl")) return "started";
  return "new";
}

nlohmann::json final_metrics(const std::string& output_dir) {
  std::ifstream in(fs::path(output_dir) / "metrics.jsonl");
  if (!in) return nullptr;
  nlohmann::json last = nullptr;
  std::string line;
  while (std::getline(in, line)) {
    // A run killed mid-write can leave a torn last line; it says nothing, so it is passed over.
    const nlohmann::json value = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!value.is_object()) continue;
    if (value.contains("loss") || !last.is_object()) last = value;
    else last.update(value);
  }
  return last;
}

void write_sweep_record(const SweepPlan& plan, const std::vector<RunOutcome>& outcomes, const std::string& mode) {
  nlohmann::json runs = nlohmann::json::array();
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const PlannedRun& run = plan.runs[i];
    const RunOutcome outcome = i < outcomes.size() ? outcomes[i] : RunOutcome{};
    nlohmann::json overrides = nlohmann::json::object();
    for (const auto& s : run.run.settings) overrides[s.key] = s.value;
    nlohmann::json entry = {{"index", i},
                            {"name", run.run.name},
                            {"output_dir", run.output_dir},
                            {"overrides", overrides},
                            {"status", outcome.status},
                            {"on_disk", run_state_on_disk(run.output_dir)},
                            {"final_metrics", final_metrics(run.output_dir)}};
    if (outcome.exit_code >= 0) entry["exit_code"] = outcome.exit_code;
    if (outcome.seconds > 0) entry["seconds"] = outcome.seconds;
    runs.push_back(std::move(entry));
  }
  std::vector<std::string> fixed;
  for (const auto& s : plan.spec.fixed) fixed.push_back(s.text());
  const nlohmann::json record = {{"sweep_file", fs::absolute(plan.spec.file).lexically_normal().string()},
                                 {"base", fs::absolute(plan.spec.base).lexically_normal().string()},
                                 {"mode", mode},
                                 {"fixed_overrides", fixed},
                                 {"runs", runs}};
  fs::create_directories(plan.root);
  write_file_atomic((fs::path(plan.root) / "sweep.json").string(), record.dump(2) + "\n");
}

}  // namespace lf
