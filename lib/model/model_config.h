// A Hugging Face `config.json` as the one decoder-only architecture logitfuse runs: Llama 2/3,
// Mistral, Qwen2/2.5, Qwen3 and Phi-3/Phi-4. Anything the file asks for that the model does not
// implement is an InputError naming the field, never a silent approximation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lf {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | longrope
  double theta = 10000.0;
  double factor = 1.0;            // linear, llama3 and longrope
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3 and longrope
  // longrope (Phi-3/3.5 128k): per-frequency divisors, the short set up to the original context, the
  // long set beyond it (chosen per forward call from its largest position, as transformers does), and
  // the factor cos/sin are multiplied by.
  std::vector<double> short_factor, long_factor;
  double attention_factor = 1.0;
  double partial_rotary_factor = 1.0;               // fraction of head_dim that is rotated (Phi)
};

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2 | qwen3 | phi3
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 2048;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   // q/k/v projections carry a bias (Qwen2, attention_bias)
  bool o_bias = false;     // output projection carries a bias (attention_bias on Llama/Qwen3)
  bool mlp_bias = false;   // gate/up/down carry a bias (Llama mlp_bias)
  bool qk_norm = false;    // RMSNorm on q and k per head (Qwen3)
  bool fused_qkv = false;  // one qkv_proj and one gate_up_proj weight (Phi-3)
  std::optional<int64_t> sliding_window;  // tokens a query may look back, itself included
  double initializer_range = 0.02;
  std::string dtype = "float32";  // the checkpoint's torch dtype name
  std::string source_json;        // the file as read, so a save keeps fields we do not use

  int64_t rotary_dim() const;
};

// Parses and checks a config.json text. `origin` names the file in errors.
ModelConfig parse_model_config(const std::string& json_text, const std::string& origin);
ModelConfig load_model_config(const std::string& model_dir);

// A config for `init-model`: the family's defaults from transformers with the given sizes.
ModelConfig default_model_config(const std::string& model_type);

// config.json text for a model written by logitfuse. Keeps every field of source_json and sets the
// ones logitfuse knows, in the layout that transformers 4.x and 5.x and vLLM all read.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace lf
