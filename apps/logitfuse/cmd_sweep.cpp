// `logitfuse sweep SWEEP.yaml`: a grid of recipe overrides expanded into named runs, each with its own
// output directory under the sweep root; run here one after another, or written out as a SLURM job
// array. Every run's recipe is validated before the first one starts.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"
#include "sweep/child_process.h"
#include "sweep/run_record.h"
#include "sweep/slurm_array.h"
#include "sweep/sweep_file.h"

namespace fs = std::filesystem;

namespace lf::app {

namespace {

constexpr int kExitStopped = 75;  // as train: stopped by a signal, continue by running it again

const char* kSweepHelp = R"(Expand a grid of recipe overrides into named runs and run them, or write a SLURM job array.

Sweep file (YAML):
  base: fusion.yaml                  base recipe (a relative path is next to the sweep file)
  output_root: runs/lr-sweep         runs go to OUTPUT_ROOT/NAME (default runs/<sweep file name>)
  name: "lr{train.lr}"               optional name template ({key.path}, {index});
                                     default: lr=1e-5_distill_weight=0.5
  grid: {train.lr: [1.0e-5, 3.0e-5], loss.distill_weight: [0.0, 0.5]}   every combination
  list: [{train.lr: 1.0e-4, loss.token.type: kl}]                        extra runs
  overrides: {train.max_steps: 200}  the same for every run
  slurm: {partition: P, account: A, time: "24:00:00", max_parallel: 8, nodes: 1,
          ntasks_per_node: 1, gpus_per_node: 1, cpus_per_task: 8, signal_seconds: 120, sbatch: []}
A run whose final/ exists is skipped. OUTPUT_ROOT/sweep.json records each run's status and final
metrics. Exit status: 0 all finished, 1 some run failed (after trying all), 2 bad sweep or recipe,
75 stopped by a signal (the running train wrote a checkpoint; run the sweep again to continue).)";

void print_runs(const SweepPlan& plan) {
  std::cout << "# " << plan.runs.size() << " run(s) of " << plan.spec.base << " under " << plan.root << "\n";
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const PlannedRun& run = plan.runs[i];
    std::vector<std::string> settings;
    for (const auto& s : run.run.settings) settings.push_back(s.text());
    std::cout << i << "\t" << run.run.name << "\t" << run_state_on_disk(run.output_dir) << "\t" << join(settings, " ")
              << "\n";
  }
}

std::vector<std::string> train_argv(const std::string& binary, const SweepPlan& plan, const PlannedRun& run) {
  std::vector<std::string> argv{binary, "train", plan.spec.base};
  argv.insert(argv.end(), run.overrides.begin(), run.overrides.end());
  argv.insert(argv.end(), {"--resume", "auto"});
  return argv;
}

std::string metrics_text(const std::string& output_dir) {
  const nlohmann::json m = final_metrics(output_dir);
  if (!m.is_object()) return "";
  std::string out;
  for (const char* key : {"step", "loss", "eval_loss"})
    if (m.contains(key)) out += std::string(out.empty() ? "" : " ") + key + "=" + m[key].dump();
  return out;
}

// The last lines of a failed run's log, so the reason shows without opening the file.
std::string log_tail(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);) all.push_back(line);
  const size_t from = all.size() > lines ? all.size() - lines : 0;
  std::string out;
  for (size_t i = from; i < all.size(); ++i) out += "    " + all[i] + "\n";
  return out;
}

void write_slurm(const SweepPlan& plan) {
  std::vector<size_t> unfinished;
  std::vector<RunOutcome> outcomes(plan.runs.size());
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    if (run_finished(plan.runs[i].output_dir)) outcomes[i].status = "skipped";
    else unfinished.push_back(i);
  }
  fs::create_directories(fs::path(plan.root) / "slurm");
  write_file_atomic((fs::path(plan.root) / "runs.tsv").string(), runs_manifest(plan));
  write_sweep_record(plan, outcomes, "slurm");
  if (unfinished.empty()) {
    std::cout << "all " << plan.runs.size() << " runs have finished; nothing to submit (" << plan.root << "/sweep.json)\n";
    return;
  }
  const std::string script = (fs::path(plan.root) / "sweep.sbatch").string();
  write_file_atomic(script, slurm_array_script(plan, unfinished, self_executable(), fs::current_path().string()));
  fs::permissions(script, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  std::cout << "wrote " << script << " (" << unfinished.size() << " of " << plan.runs.size() << " runs, array "
            << array_ranges(unfinished) << ") and " << plan.root << "/runs.tsv\n"
            << "sbatch " << script << "\n";
}

int run_local(const SweepPlan& plan) {
  const std::string binary = self_executable();
  install_sweep_signal_forwarding();
  std::vector<RunOutcome> outcomes(plan.runs.size());
  std::vector<std::string> failed;
  const size_t n = plan.runs.size();
  for (size_t i = 0; i < n && !sweep_stop_signal(); ++i) {
    const PlannedRun& run = plan.runs[i];
    RunOutcome& outcome = outcomes[i];
    if (run_finished(run.output_dir)) {
      outcome.status = "skipped";
      spdlog::info("[{}/{}] {}: finished before, skipped", i + 1, n, run.run.name);
      continue;
    }
    fs::create_directories(run.output_dir);
    const std::string log = (fs::path(run.output_dir) / "train.log").string();
    spdlog::info("[{}/{}] {}: training (log {})", i + 1, n, run.run.name, log);
    const auto start = std::chrono::steady_clock::now();
    outcome.exit_code = run_child_process(train_argv(binary, plan, run), log);
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (outcome.exit_code == 0 && run_finished(run.output_dir)) {
      outcome.status = "completed";
      spdlog::info("[{}/{}] {}: completed in {:.1f} s {}", i + 1, n, run.run.name, outcome.seconds, metrics_text(run.output_dir));
    } else if (outcome.exit_code == kExitStopped || (sweep_stop_signal() && outcome.exit_code > 128)) {
      outcome.status = "preempted";
      spdlog::warn("[{}/{}] {}: stopped by a signal (exit {})", i + 1, n, run.run.name, outcome.exit_code);
    } else {
      outcome.status = "failed";
      failed.push_back(run.run.name + " (exit " + std::to_string(outcome.exit_code) + ")");
      spdlog::error("[{}/{}] {}: failed with exit {}; the end of {}:\n{}", i + 1, n, run.run.name, outcome.exit_code, log,
                    log_tail(log, 5));
    }
    write_sweep_record(plan, outcomes, "local");  // after every run, so an interrupted sweep is on record too
  }
  write_sweep_record(plan, outcomes, "local");

  std::cout << "# sweep " << plan.spec.file << ": " << plan.root << "/sweep.json\n";
  for (size_t i = 0; i < n; ++i)
    std::cout << plan.runs[i].run.name << "\t" << outcomes[i].status << "\t" << metrics_text(plan.runs[i].output_dir) << "\n";
  std::cout << std::flush;
  if (const int signal = sweep_stop_signal()) {
    spdlog::warn("sweep stopped by signal {}; run it again to continue (finished runs are skipped)", signal);
    return kExitStopped;
  }
  if (!failed.empty())
    throw RuntimeFailure(std::to_string(failed.size()) + " of " + std::to_string(n) + " sweep runs failed: " + join(failed, ", "),
                         "each run's log is OUTPUT_ROOT/NAME/train.log");
  return 0;
}

}  // namespace

void add_sweep(CLI::App& root) {
  struct Options {
    std::string sweep;
    std::string mode = "local";
    bool list = false;
    bool dry_run = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("sweep", kSweepHelp);
  cmd->add_option("sweep", opt->sweep, "sweep YAML file")->required();
  cmd->add_option("--mode", opt->mode, "local: run one after another here; slurm: write a job-array script")
      ->check(CLI::IsMember({"local", "slurm"}))
      ->capture_default_str();
  cmd->add_flag("--list", opt->list, "validate, print the runs (index, name, state, overrides) and stop");
  cmd->add_flag("--dry-run", opt->dry_run, "validate, print each run's train command line and stop");
  cmd->callback([opt] {
    const SweepPlan plan = plan_sweep(load_sweep_file(opt->sweep));
    spdlog::info("sweep {}: {} run(s), every recipe valid", opt->sweep, plan.runs.size());
    if (opt->list) return print_runs(plan);
    if (opt->dry_run) {
      const std::string binary = self_executable();
      for (const auto& run : plan.runs) {
        std::vector<std::string> words;
        for (const auto& a : train_argv(binary, plan, run)) words.push_back(shell_quote(a));
        std::cout << "# " << run.run.name << " (" << run_state_on_disk(run.output_dir) << ")\n" << join(words, " ") << "\n";
      }
      return;
    }
    if (opt->mode == "slurm") return write_slurm(plan);
    const int status = run_local(plan);
    if (status != 0) std::exit(status);
  });
}

}  // namespace lf::app
