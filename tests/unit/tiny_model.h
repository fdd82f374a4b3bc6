// A tiny randomly initialised model of a family, for the unit tests of the model and its adapters.
#pragma once

#include <memory>
#include <string>

#include "model/model_config.h"
#include "model/transformer.h"

namespace lf::test {

inline ModelConfig tiny_config(const std::string& arch) {
  ModelConfig c = default_model_config(arch);
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  return c;
}

inline std::shared_ptr<CausalLM> tiny_model(const std::string& arch, int64_t window = 0) {
  ModelConfig c = tiny_config(arch);
  if (window > 0) c.sliding_window = window;
  auto model = std::make_shared<CausalLM>(c, at::TensorOptions().dtype(at::kFloat));
  model->init_weights(11);
  return model;
}

}  // namespace lf::test
