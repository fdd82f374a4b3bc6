// A Hugging Face `config.json` as the one decoder-only architecture logitfuse runs: Llama 2/3,
// Mistral, Qwen2/2.5, Qwen3, Phi-3/Phi-4, Gemma 2 and Gemma 3 (text). Anything the file asks for that
// the model does not implement is an InputError naming the field, never a silent approximation.
#pragma once

#include <cstdint>
#include <functional>
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
  std::string model_type;  // llama | mistral | qwen2 | qwen3 | phi3 | gemma2 | gemma3_text
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
  // Per layer, "full_attention" or "sliding_attention" (Gemma 2/3); empty: every layer slides when
  // sliding_window is set (Mistral, Phi-3).
  std::vector<std::string> layer_types;
  // RoPE of the sliding layers where it differs from `rope` (Gemma 3: its own base, no scaling).
  std::optional<RopeConfig> local_rope;

  // The Gemma family's differences from Llama.
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh | gelu (the MLP's gate)
  bool gemma_norms = false;         // RMSNorm scales by (1 + w) in float32; extra norms after attention
                                    // and around the MLP (pre/post_feedforward_layernorm)
  bool scale_embeddings = false;    // embeddings times sqrt(hidden_size), in the weights' dtype
  std::optional<double> query_pre_attn_scalar;   // attention scale scalar^-1/2 instead of head_dim^-1/2
  std::optional<double> attn_logit_softcapping;  // scores -> cap * tanh(scores / cap) (Gemma 2)
  std::optional<double> final_logit_softcapping;  // logits -> cap * tanh(logits / cap) (Gemma 2)
  // Read from the text part of a multimodal checkpoint (`gemma3` with text_config): its tensors are
  // named language_model.model.* / model.language_model.*, and the vision tower's are skipped.
  bool text_of_multimodal = false;

  double initializer_range = 0.02;
  std::string dtype = "float32";  // the checkpoint's torch dtype name
  std::string source_json;        // the file as read, so a save keeps fields we do not use

  int64_t rotary_dim() const;
  // Whether layer `layer` attends through the sliding window.
  bool sliding(int64_t layer) const;
};

// Parses and checks a config.json text. `origin` names the file in errors.
ModelConfig parse_model_config(const std::string& json_text, const std::string& origin);
ModelConfig load_model_config(const std::string& model_dir);

// Every model_type parse_model_config accepts.
const std::vector<std::string>& supported_model_types();

// The name of `param_name` (a CausalLM parameter) in a checkpoint of this config: the same, except
// for the text part of a multimodal checkpoint. `has` says whether the checkpoint holds a name.
std::string checkpoint_tensor_name(const ModelConfig& config, const std::string& param_name,
                                   const std::function<bool(const std::string&)>& has);
// Whether a checkpoint tensor that no parameter reads may be skipped (the vision tower of a
// multimodal checkpoint, an old export's rotary table, a tied model's stored lm_head).
bool checkpoint_tensor_skippable(const ModelConfig& config, const std::string& tensor_name);

// A config for `init-model`: the family's defaults from transformers with the given sizes.
ModelConfig default_model_config(const std::string& model_type);

// config.json text for a model written by logitfuse. Keeps every field of source_json and sets the
// ones logitfuse knows, in the layout that transformers 4.x and 5.x and vLLM all read.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace lf
