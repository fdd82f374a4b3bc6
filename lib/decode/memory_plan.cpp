#include "decode/memory_plan.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace lf {

MemoryPlan plan_decoding_memory(const DecodingConfig& config, int64_t prompt_tokens, double limit,
                                const std::string& limit_source) {
  MemoryPlan plan;
  plan.decoding = true;
  plan.limit = limit;
  plan.limit_source = limit_source;
  std::vector<std::pair<std::string, const ModelSpec*>> used;  // role, spec
  const std::string strategy = config.models ? config.fusion.strategy : "plain";
  if (config.model) used.emplace_back("model", &*config.model);
  if (config.models) {
    const auto& m = *config.models;
    used.emplace_back("large", &m.large);
    if (strategy == "dynamic" || strategy == "static") {
      if (m.base) used.emplace_back("base", &*m.base);
      for (const auto& e : m.experts) used.emplace_back("expert", &e);
    } else if (strategy == "expert_only" && !m.experts.empty()) {
      used.clear();
      const ModelSpec* chosen = &m.experts.front();
      for (const auto& e : m.experts)
        if (e.name == config.fusion.expert) chosen = &e;
      used.emplace_back("expert", chosen);
    }
  }
  const double batch = static_cast<double>(config.generation.batch_size);
  const double length = static_cast<double>(prompt_tokens + config.generation.max_new_tokens);
  double vocab = 0;
  for (const auto& [role, spec] : used) {
    const ModelConfig c = load_model_config(spec->path);
    const std::string dtype = spec->dtype == "auto" ? c.dtype : spec->dtype;
    const double b = dtype == "float32" || dtype == "fp32" ? 4.0 : 2.0;
    const ModelFootprint f = model_footprint(c);
    const std::string name = spec->name.empty() ? role : spec->name;
    plan.parameters.emplace_back(name, f.params);
    plan.items.push_back({name + " weights (" + dtype + ")", b * static_cast<double>(f.params), "a smaller dtype"});
    const bool on_cpu = spec->device == "cpu" || (spec->device == "auto" && !at::hasCUDA());
    if (config.generation.packed_head && b == 4.0 && on_cpu)
      plan.items.push_back({name + " LM head, packed for CPU decoding",
                            4.0 * static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size),
                            "generation.packed_head: false"});
    if (config.generation.kv_cache)
      plan.items.push_back({name + " KV cache", 2 * b * batch * length * static_cast<double>(c.num_layers * c.num_kv_heads * c.head_dim),
                            "generation.batch_size"});
    vocab = std::max(vocab, static_cast<double>(c.vocab_size));
  }
  // Each model's last-position logits in float32, and the α grid's fused candidates.
  plan.items.push_back({"logit rows (fp32)", 4 * batch * vocab * (static_cast<double>(used.size()) + 2), "generation.batch_size"});
  plan.items.push_back({"runtime (estimate)", 2.0e9, ""});
  return plan;
}

}  // namespace lf
