// Running one training run of a local sweep as a child process, with the sweep's stop signals
// passed on to it: SIGINT/SIGTERM/SIGUSR1 to the sweep reach the running `train`, which writes a
// checkpoint and exits 75, and the sweep then stops instead of starting the next run.
#pragma once

#include <string>
#include <vector>

namespace lf {

// This executable's path (/proc/self/exe), so a sweep runs the very binary it was started as.
std::string self_executable();

// Installs the sweep's handlers for SIGINT, SIGTERM and SIGUSR1 (forward to the child, remember).
void install_sweep_signal_forwarding();
// The stop signal the sweep received, or 0.
int sweep_stop_signal();

// Runs argv[0] with `argv`, stdout and stderr appended to `log_path`, and waits. Returns its exit
// status, or 128 + N when signal N ended it. RuntimeFailure when it cannot be started.
int run_child_process(const std::vector<std::string>& argv, const std::string& log_path);

}  // namespace lf
