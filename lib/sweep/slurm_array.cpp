#include "sweep/slurm_array.h"

#include <sstream>

#include "core/strings.h"
#include "sweep/run_record.h"

namespace lf {

std::string array_ranges(const std::vector<size_t>& indices) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < indices.size();) {
    size_t j = i;
    while (j + 1 < indices.size() && indices[j + 1] == indices[j] + 1) ++j;
    parts.push_back(j == i ? std::to_string(indices[i]) : std::to_string(indices[i]) + "-" + std::to_string(indices[j]));
    i = j + 1;
  }
  return join(parts, ",");
}

std::string shell_quote(const std::string& text) {
  const bool plain = !text.empty() && text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                            "0123456789_./=:+-,@%") == std::string::npos;
  if (plain) return text;
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string slurm_array_script(const SweepPlan& plan, const std::vector<size_t>& indices, const std::string& binary,
                               const std::string& workdir) {
  const SweepSlurmOptions& o = plan.spec.slurm;
  std::ostringstream s;
  s << "#!/bin/bash\n"
    << "# Written by `logitfuse sweep " << plan.spec.file << " --mode slurm`; submit with: sbatch " << plan.root
    << "/sweep.sbatch\n"
    << "# One array task per unfinished run of the sweep; the index is the run's index in runs.tsv.\n"
    << "# Preemption: SIGUSR1 reaches every train process " << o.signal_seconds
    << " s before the time limit; each writes a\n"
    << "# checkpoint and exits 75, and the task requeues itself; --resume auto continues the run.\n"
    << "#SBATCH --job-name=" << o.job_name << "\n"
    << "#SBATCH --array=" << array_ranges(indices) << "%" << o.max_parallel << "\n"
    << "#SBATCH --nodes=" << o.nodes << "\n"
    << "#SBATCH --ntasks-per-node=" << o.ntasks_per_node << "\n";
  if (o.gpus_per_node > 0) s << "#SBATCH --gpus-per-node=" << o.gpus_per_node << "\n";
  s << "#SBATCH --cpus-per-task=" << o.cpus_per_task << "\n";
  if (o.time) s << "#SBATCH --time=" << *o.time << "\n";
  if (o.partition) s << "#SBATCH --partition=" << *o.partition << "\n";
  if (o.account) s << "#SBATCH --account=" << *o.account << "\n";
  s << "#SBATCH --requeue\n"
    << "#SBATCH --signal=USR1@" << o.signal_seconds << "\n"
    << "#SBATCH --open-mode=append\n"
    << "#SBATCH --output=" << plan.root << "/slurm/%A_%a.out\n";
  for (const auto& extra : o.sbatch) s << "#SBATCH " << extra << "\n";
  s << "set -uo pipefail\n"
    << "cd " << shell_quote(workdir) << " || exit 1\n"
    << "LOGITFUSE=" << shell_quote(binary) << "\n"
    << "RECIPE=" << shell_quote(plan.spec.base) << "\n"
    << "case \"${SLURM_ARRAY_TASK_ID:?this script runs as a SLURM array task}\" in\n";
  for (size_t index : indices) {
    const PlannedRun& run = plan.runs[index];
    s << "  " << index << ") NAME=" << shell_quote(run.run.name) << "; OUT=" << shell_quote(run.output_dir)
      << "\n     OVERRIDES=(";
    for (size_t i = 0; i < run.overrides.size(); ++i) s << (i ? " " : "") << shell_quote(run.overrides[i]);
    s << ") ;;\n";
  }
  s << "  *) echo \"array task $SLURM_ARRAY_TASK_ID is no run of this sweep (see runs.tsv)\" >&2; exit 2 ;;\n"
    << "esac\n"
    // The marker the trainer writes last; a requeued task of a run that has finished does nothing.
    << "if [ -f \"$OUT/final/config.json\" ]; then echo \"run $NAME has finished\"; exit 0; fi\n"
    << "echo \"run $NAME (array task $SLURM_ARRAY_TASK_ID, job ${SLURM_JOB_ID:-?}) -> $OUT\"\n"
    << "srun \"$LOGITFUSE\" train \"$RECIPE\" \"${OVERRIDES[@]}\" --resume auto\n"
    << "status=$?\n"
    << "if [ \"$status\" -eq 75 ]; then\n"
    << "  echo \"run $NAME stopped after writing a checkpoint; requeueing job $SLURM_JOB_ID\"\n"
    << "  scontrol requeue \"$SLURM_JOB_ID\" && exit 0\n"
    << "fi\n"
    << "exit \"$status\"\n";
  return s.str();
}

std::string runs_manifest(const SweepPlan& plan) {
  auto clean = [](std::string text) {
    for (char& c : text)
      if (c == '\t' || c == '\n') c = ' ';
    return text;
  };
  std::ostringstream s;
  s << "index\tname\tstate\toutput_dir\toverrides\n";
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const PlannedRun& run = plan.runs[i];
    std::vector<std::string> overrides;
    for (const auto& setting : run.run.settings) overrides.push_back(setting.text());
    s << i << "\t" << run.run.name << "\t" << run_state_on_disk(run.output_dir) << "\t" << clean(run.output_dir) << "\t"
      << clean(join(overrides, " ")) << "\n";
  }
  return s.str();
}

}  // namespace lf
