#include "model/memory_footprint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "core/error.h"
#include "core/strings.h"
#include "model/transformer.h"

namespace lf {

ModelFootprint model_footprint(const ModelConfig& config) {
  // Parameters on the meta device: exact shapes, no memory.
  CausalLM model(config, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  ModelFootprint f;
  const auto units = model.parameter_units();
  for (size_t u = 0; u < units.size(); ++u) {
    int64_t n = 0;
    for (const auto& [name, p] : units[u]) n += p.numel();
    f.params += n;
    f.largest_unit = std::max(f.largest_unit, n);
    if (static_cast<int64_t>(u) == model.head_unit()) f.head = n;
  }
  return f;
}

Placement parse_placement(const std::string& name) {
  if (name == "replicate") return Placement::kReplicate;
  if (name == "shard") return Placement::kShard;
  if (name == "cache") return Placement::kCache;
  if (name == "server") return Placement::kServer;
  throw std::invalid_argument("unknown placement '" + name + "'");
}

const char* placement_name(Placement placement) {
  switch (placement) {
    case Placement::kReplicate: return "replicate";
    case Placement::kShard: return "shard";
    case Placement::kCache: return "cache";
    case Placement::kServer: return "server";
  }
  return "?";
}

double MemoryPlan::total() const {
  double sum = 0;
  for (const auto& item : items) sum += item.bytes;
  return sum;
}

const MemoryItem& MemoryPlan::biggest() const {
  return *std::max_element(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.bytes < b.bytes; });
}

std::string format_plan(const MemoryPlan& plan) {
  std::string out = plan.decoding ? std::string("memory plan (one process):\n")
                                  : "memory plan per rank (" + std::to_string(plan.world_size) + " rank(s), dist.zero " +
                                        std::to_string(plan.zero) + "):\n";
  for (const auto& [name, count] : plan.parameters) out += "  parameters of " + name + ": " + std::to_string(count) + "\n";
  for (const auto& item : plan.items) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-58s %12s\n", item.name.c_str(), format_bytes(item.bytes).c_str());
    out += line;
  }
  char line[256];
  std::snprintf(line, sizeof line, "  %-58s %12s\n", "total", format_bytes(plan.total()).c_str());
  out += line;
  if (plan.limit > 0)
    out += "  limit " + format_bytes(plan.limit) + " (" + plan.limit_source + "): " +
           (plan.total() <= plan.limit ? "fits" : "does NOT fit") + "\n";
  else
    out += "  limit unknown (" + plan.limit_source + ")\n";
  return out;
}

void check_plan_fits(const MemoryPlan& plan) {
  if (plan.limit <= 0 || plan.total() <= plan.limit) return;
  const MemoryItem& big = plan.biggest();
  throw InputError("memory plan: " +
                       (plan.decoding ? std::string("decoding needs")
                                      : std::to_string(plan.world_size) + " rank(s) at dist.zero " + std::to_string(plan.zero) + " need") +
                       " " + format_bytes(plan.total()) + " per rank, more than the " + format_bytes(plan.limit) +
                       " of " + plan.limit_source + "; the biggest item is " + big.name + " (" + format_bytes(big.bytes) + ")",
                   big.fix.empty() ? "set run.memory_gb if the limit is wrong" : "try " + big.fix);
}

}  // namespace lf
