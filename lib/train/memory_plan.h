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
#include "model/model_config.h"

namespace lf {

struct DecodingConfig;

// Exact parameter counts of a model, from its config alone (a model built on the meta device).
struct ModelFootprint {
  int64_t params = 0;
  int64_t largest_unit = 0;  // the biggest ZeRO-3 unit (a decoder layer, or the embedding)
  int64_t head = 0;          // the LM head's unit (the embedding when tied)
};
ModelFootprint model_footprint(const ModelConfig& config);

struct MemoryItem {
  std::string name;
  double bytes = 0;
  std::string fix;  // the recipe setting that shrinks it
};

struct MemoryPlan {
  int64_t world_size = 1;
  int64_t zero = 0;
  bool decoding = false;  // a generate/eval plan (one process)
  std::vector<std::string> placements;  // per teacher: replicate | shard | cache
  std::vector<MemoryItem> items;
  std::vector<std::pair<std::string, int64_t>> parameters;  // per model: name, parameter count
  double limit = 0;  // bytes per rank the plan must fit; 0: unknown
  std::string limit_source;
  double total() const;
  const MemoryItem& biggest() const;
};

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

// Decoding (generate/eval): the weights of every model the fusion strategy runs, in its dtype, their
// KV caches for a batch of `prompt_tokens` + max_new_tokens, and the float32 logit rows the fusion
// keeps. One process; `limit` bytes (0: unknown).
MemoryPlan plan_decoding_memory(const DecodingConfig& config, int64_t prompt_tokens, double limit,
                                const std::string& limit_source);

// The plan as a table, one item per line.
std::string format_plan(const MemoryPlan& plan);
// InputError when the plan exceeds its limit, naming the biggest item and the setting that shrinks it.
void check_plan_fits(const MemoryPlan& plan);

}  // namespace lf
