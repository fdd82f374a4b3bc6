// The memory plan (docs/scaling.md): what one rank of a training run will hold, predicted before
// anything is loaded from the recipe, every model's config.json, the world size and the ZeRO stage.
// `train` logs it and refuses to start when it exceeds the memory per rank; `train --dry-run` prints
// it (for any world size, with --world-size). Teachers at placement `auto` are resolved here.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "config/recipe.h"
#include "model/memory_footprint.h"
#include "model/model_config.h"

namespace lf {

// Memory per rank of the student's device: run.memory_gb, else a GPU's total memory, else the host's
// RAM divided by the ranks on this node. 0 when unknown.
double device_memory_bytes(const Recipe& recipe, int64_t local_world_size, std::string* source);

// The plan for `world_size` ranks (`configs`: the student's then each teacher's config.json), with
// `auto` placements resolved: a logits cache when set, else replicate, switching teachers to shard
// (largest first) while the plan does not fit and several ranks could share them.
MemoryPlan plan_memory(const Recipe& recipe, const ModelConfig& student, const std::vector<ModelConfig>& teachers,
                       int64_t world_size, double limit, const std::string& limit_source);
// Reads every model's config.json (InputError naming a missing or malformed one) and plans.
MemoryPlan plan_memory(const Recipe& recipe, int64_t world_size, int64_t local_world_size);

}  // namespace lf
