// Small decoding fixtures shared by the decode and continuous-batching tests: random tiny models
// over one vocabulary, a fused set of them, and prompts of different lengths.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "decode/generate.h"
#include "decode/model_set.h"
#include "kernels/dlf.h"
#include "model/model_config.h"
#include "model/transformer.h"

namespace lf::test {

inline constexpr int64_t kVocab = 50;

// `adjust` changes the config before the weights are made (a sliding window, layer types, ...).
inline lf::DecodingModel tiny(const std::string& name, uint64_t seed, int64_t hidden = 32, const std::string& arch = "llama",
                              const std::function<void(lf::ModelConfig&)>& adjust = {}) {
  lf::ModelConfig c = lf::default_model_config(arch);
  c.vocab_size = kVocab;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = hidden / 4;
  if (adjust) adjust(c);
  lf::DecodingModel m;
  m.name = name;
  m.model = std::make_shared<lf::CausalLM>(c, at::TensorOptions().dtype(at::kFloat));
  m.model->init_weights(seed);
  m.model->eval();
  return m;
}

// large (hidden 48), base, and `experts` experts: all random, sharing the vocabulary.
inline lf::ModelSet fused_set(const std::string& strategy, std::vector<double> grid = lf::kernels::alpha_grid(0, 2, 0.1),
                       int experts = 2, double static_alpha = 1.0) {
  std::vector<lf::DecodingModel> models = {tiny("large", 1, 48, "qwen3"), tiny("base", 2)};
  for (int i = 0; i < experts; ++i) models.push_back(tiny("e" + std::to_string(i), 3 + i));
  lf::FusionSpec spec{strategy, grid, static_alpha};
  if (strategy == "large_only") models.resize(1);
  return lf::make_model_set(models, spec, kVocab);
}

inline std::vector<std::vector<int64_t>> prompts() {
  return {{5, 6, 7, 8, 9, 10, 11}, {12, 13}, {14, 15, 16, 17}, {18}, {19, 20, 21, 22, 23}};
}

inline std::vector<std::vector<int64_t>> ids_of(const std::vector<lf::Completion>& cs) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& c : cs) out.push_back(c.ids);
  return out;
}

}  // namespace lf::test
