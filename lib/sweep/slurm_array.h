// `sweep --mode slurm`: a SLURM job-array script with one array task per unfinished run, and the
// runs.tsv manifest that maps array indices to runs. Nothing is submitted; the caller prints the
// sbatch command.
#pragma once

#include <string>
#include <vector>

#include "sweep/sweep_file.h"

namespace lf {

// "0-3", "1,3-5,8": sorted, distinct indices as a SLURM --array list.
std::string array_ranges(const std::vector<size_t>& indices);

// A word for bash: as it is when it holds no character bash treats specially, else single-quoted
// with embedded single quotes closed and escaped.
std::string shell_quote(const std::string& text);

// The job-array script for the runs at `indices` (positions in plan.runs). `binary` is the logitfuse
// executable and `workdir` the folder the runs start in (relative recipe paths resolve there).
std::string slurm_array_script(const SweepPlan& plan, const std::vector<size_t>& indices, const std::string& binary,
                               const std::string& workdir);

// runs.tsv: index, name, state on disk, output_dir, overrides; one line per run of the plan.
std::string runs_manifest(const SweepPlan& plan);

}  // namespace lf
