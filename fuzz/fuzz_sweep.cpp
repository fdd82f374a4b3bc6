// A sweep file (sweep/sweep_file.h) and its plan: grid/list expansion, run names, and every run's
// overrides applied to the base recipe. Input: SWEEP.yaml NUL base recipe YAML (written as
// base.yaml beside it, so `base: base.yaml` finds it).
#include "fuzz_common.h"
#include "sweep/expand.h"
#include "sweep/sweep_file.h"

// plan_sweep loads the base recipe once per run: linear in the runs, and the recipe parser has its
// own target. Grids above this many runs are only expanded (names, duplicates, the run limit), so
// that a large grid is not reported as a hang.
constexpr size_t kPlannedRuns = 64;
// Expanding is linear in the runs too: a grid near the limit of 100,000 runs takes about 0.1 s under
// ASan, and the corpus drifts toward such grids (70 executions a second). Grids between this size
// and the limit are not expanded (the same loop as a small grid); those past the limit still are,
// since refusing them before expanding is what is tested there.
constexpr size_t kExpandedRuns = 4096;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = lf::fuzz::split_parts(data, size, 2);
  const std::string path = lf::fuzz::write_scratch("sweep.yaml", parts[0]);
  lf::fuzz::write_scratch("base.yaml", parts.size() > 1 ? parts[1] : std::string());
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::SweepSpec spec = lf::load_sweep_file(path);
    const size_t grid = lf::grid_runs(spec.grid);
    if (grid + spec.list.size() > kExpandedRuns && grid + spec.list.size() <= lf::kMaxSweepRuns) return;
    const auto runs = lf::expand_sweep(spec.grid, spec.list, spec.name_template);
    if (runs.size() > lf::kMaxSweepRuns) __builtin_trap();
    if (runs.size() > kPlannedRuns) return;
    const lf::SweepPlan plan = lf::plan_sweep(spec);
    if (plan.runs.size() != runs.size()) __builtin_trap();
  });
  return 0;
}
