// What models take in memory, from their configs alone: exact parameter counts (a model built on the
// meta device), and the memory plan a command prints and checks before it loads anything
// (train's in train/memory_plan.h, generate's and eval's in decode/memory_plan.h; docs/scaling.md).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/model_config.h"

namespace lf {

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
  std::string fix;  // the setting that shrinks it
};

// Where a training run keeps a teacher (teachers.N.placement, `auto` resolved by the plan): its whole
// weights on every rank, its weights sharded over the ranks, none (its logits read from a cache), or
// none (its logits asked of a server).
enum class Placement { kReplicate, kShard, kCache, kServer };
// The recipe's word ("replicate", "shard", "cache", "server") as the enum, and back.
Placement parse_placement(const std::string& name);
const char* placement_name(Placement placement);

struct MemoryPlan {
  int64_t world_size = 1;
  int64_t zero = 0;
  bool decoding = false;  // a generate/eval plan (one process)
  std::vector<Placement> placements;  // per teacher (training plans)
  std::vector<MemoryItem> items;
  std::vector<std::pair<std::string, int64_t>> parameters;  // per model: name, parameter count
  double limit = 0;  // bytes per rank the plan must fit; 0: unknown
  std::string limit_source;
  double total() const;
  const MemoryItem& biggest() const;
};

// The plan as a table, one item per line.
std::string format_plan(const MemoryPlan& plan);
// InputError when the plan exceeds its limit, naming the biggest item and the setting that shrinks it.
void check_plan_fits(const MemoryPlan& plan);

}  // namespace lf
