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
};

// Runs the recipe. Returns 0 when finished (final/ written) or kExitPreempted when a signal stopped
// it after a checkpoint. Errors are thrown as lf::Error.
int run_training(const Recipe& recipe, const TrainOptions& options, Communicator& comm);

}  // namespace lf
