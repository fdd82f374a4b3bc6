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

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = lf::fuzz::split_parts(data, size, 2);
  const std::string path = lf::fuzz::write_scratch("sweep.yaml", parts[0]);
  lf::fuzz::write_scratch("base.yaml", parts.size() > 1 ? parts[1] : std::string());
  lf::fuzz::expect_input_error_or_ok([&] {
    const lf::SweepSpec spec = lf::load_sweep_file(path);
    const auto runs = lf::expand_sweep(spec.grid, spec.list, spec.name_template);
    if (runs.size() > lf::kMaxSweepRuns) __builtin_trap();
    if (runs.size() > kPlannedRuns) return;
    const lf::SweepPlan plan = lf::plan_sweep(spec);
    if (plan.runs.size() != runs.size()) __builtin_trap();
  });
  return 0;
}
