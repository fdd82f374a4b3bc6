// Stop signals of a run: SIGINT, SIGTERM and SIGUSR1 (SLURM's warning before preemption) are noted,
// and the trainer (or serve) stops at its next safe point. No LibTorch.
#pragma once

namespace lf {

// Exit status of a run stopped by a signal after writing a checkpoint ("resume me later").
constexpr int kExitPreempted = 75;

void install_stop_handlers();
// The signal number that asked the run to stop, or 0.
int stop_requested();

}  // namespace lf
