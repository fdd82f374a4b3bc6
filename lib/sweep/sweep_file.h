// The sweep file (`logitfuse sweep SWEEP.yaml`) and its plan: every run expanded, named, given its own
// output directory under the sweep root, and its recipe validated before anything runs.
//
//   base: fusion.yaml                 # the base recipe; a relative path is next to the sweep file
//   output_root: runs/lr-sweep        # relative to the current directory; default runs/<sweep name>
//   name: "lr{train.lr}"              # optional run-name template; default lr=1e-5_distill_weight=0.5
//   grid:                             # cartesian product, last key varying fastest
//     train.lr: [1.0e-5, 3.0e-5]
//     loss.distill_weight: [0.0, 0.5]
//   list:                             # optional extra runs, each its own set of overrides
//     - {train.lr: 1.0e-4, loss.token.type: kl}
//   overrides: {train.max_steps: 200} # fixed, applied to every run
//   slurm: {partition: gpu, time: "24:00:00", max_parallel: 4, gpus_per_node: 1}
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sweep/expand.h"

namespace lf {

// What `--mode slurm` puts into the job-array script's #SBATCH lines.
struct SweepSlurmOptions {
  std::string job_name;                   // default: the sweep file's stem
  std::optional<std::string> partition;
  std::optional<std::string> account;
  std::optional<std::string> time;        // e.g. "24:00:00"
  int64_t max_parallel = 8;               // array tasks running at once (%P)
  int64_t nodes = 1;                      // per run
  int64_t ntasks_per_node = 1;            // one process per GPU
  int64_t gpus_per_node = 1;              // 0: CPU-only runs
  int64_t cpus_per_task = 8;
  int64_t signal_seconds = 120;           // SIGUSR1 this long before the time limit
  std::vector<std::string> sbatch;        // extra options, e.g. ["--qos=high", "--constraint=h100"]
};

struct SweepSpec {
  std::string file;         // the sweep file, as given
  std::string base;         // the base recipe, resolved against the sweep file's folder
  std::string output_root;  // as written (or the default)
  std::string name_template;
  std::vector<SweepAxis> grid;
  std::vector<std::vector<SweepSetting>> list;
  std::vector<SweepSetting> fixed;
  SweepSlurmOptions slurm;
  std::map<std::string, int> key_lines;  // override key -> its line in the sweep file, for errors
};

// Reads and checks the sweep file; every problem is an InputError naming the file, line and key.
SweepSpec load_sweep_file(const std::string& path);

struct PlannedRun {
  SweepRun run;
  std::string output_dir;              // absolute, under the sweep root
  std::vector<std::string> overrides;  // fixed, then varying, then run.name/run.output_dir
};

struct SweepPlan {
  SweepSpec spec;
  std::string root;  // absolute
  std::vector<PlannedRun> runs;
};

// Expands the runs and loads every run's recipe through load_recipe, so a bad key or value anywhere
// is an InputError ("SWEEP.yaml:LINE: run 'NAME': ...") before any run starts.
SweepPlan plan_sweep(const SweepSpec& spec);

}  // namespace lf
