// `logitfuse train`: the fusion training run, read top to bottom in trainer.cpp.
#pragma once

#include <string>

#include "config/recipe.h"
#include "dist/communicator.h"

namespace lf {

struct TrainOptions {
  std::string resume;           // "" (fresh run), "auto" (newest complete checkpoint) or a checkpoint directory
  std::string vocab_cache_dir;  // where vocabulary maps are cached when the recipe names no cache_dir
  int64_t local_world_size = 1; // ranks on this node, for the memory plan
  // A test seam, set only by the tests (LOGITFUSE_INJECT_FAULT, read once by `train`): a known-wrong
  // behaviour that a test must catch. "local_token_mean": each rank normalises its gradient by its
  // own response tokens (times the world size) instead of the global count, so the step averages the
  // ranks' means, the classic data-parallel error. Empty: none.
  std::string inject_fault;
};

// Runs the recipe. Returns 0 when finished (final/ written) or kExitPreempted when a signal stopped
// it after a checkpoint. Errors are thrown as lf::Error.
int run_training(const Recipe& recipe, const TrainOptions& options, Communicator& comm);

}  // namespace lf
