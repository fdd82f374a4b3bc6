// What a sweep knows about each run on disk, and the sweep's record of them (SWEEP_ROOT/sweep.json).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

#include "sweep/sweep_file.h"

namespace lf {

// The trainer's completion marker: it writes final/ last and atomically (save_model renames a
// finished temporary folder into place), and `train --resume auto` itself treats final/config.json
// as "this run has finished". A run counts as finished exactly when the trainer would say so.
bool run_finished(const std::string& output_dir);

// "finished", "started" (checkpoints or metrics but no final/) or "new".
std::string run_state_on_disk(const std::string& output_dir);

// The run's last logged numbers: the last metrics.jsonl line with a training loss, updated by the
// lines after it (the final eval_loss/eval_ppl). null when there is no metrics.jsonl.
nlohmann::json final_metrics(const std::string& output_dir);

// The outcome of one run in this invocation.
struct RunOutcome {
  std::string status = "pending";  // pending | skipped (finished before) | completed | failed | preempted
  int exit_code = -1;              // the child's exit status (-1: not run here; 128+N: killed by signal N)
  double seconds = 0;
};

// Writes SWEEP_ROOT/sweep.json (atomically): the sweep's inputs and, per run, name, output_dir, the
// varying overrides, status, exit code, and final metrics.
void write_sweep_record(const SweepPlan& plan, const std::vector<RunOutcome>& outcomes, const std::string& mode);

}  // namespace lf
