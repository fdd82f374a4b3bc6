// The decoder-only transformer behind every supported family (Llama, Mistral, Qwen2/3, Phi-3).
// Parameter names are the Hugging Face ones, so a state dict is a checkpoint and vice versa.
// Runs under autograd (training) and with a KV cache (decoding).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <optional>
#include <vector>

#include "model/model_config.h"

namespace lf {

// Per-layer key/value buffers for incremental decoding. Capacity grows by doubling, so appending a
// token is a copy into a slice, not a concatenation of the whole history.
struct KVCache {
  std::vector<at::Tensor> keys, values;  // [batch, kv_heads, capacity, head_dim] per layer
  int64_t length = 0;                    // positions filled so far
  // Key validity over the filled positions, [batch, length] bool; undefined = all valid.
  at::Tensor key_mask;
  void clear();
};

// What one forward call gets besides the token ids.
struct ForwardOptions {
  // [batch, seq] int64 absolute positions; default: cache length + 0..seq-1 for every row.
  std::optional<at::Tensor> positions;
  // [batch, seq] bool, true where the new tokens are real (false = padding, never attended to).
  std::optional<at::Tensor> token_mask;
  KVCache* cache = nullptr;
};

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
};

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight;
  double eps;
};

struct EmbeddingImpl : torch::nn::Module {
  EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options);
  at::Tensor weight;
};

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const ModelConfig& config, const at::TensorOptions& options);
  // x [B, T, hidden]; cos/sin [B, T, rotary_dim]; mask: bool [B, 1, T, S] or undefined (causal).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                     bool causal, KVCache* cache, int64_t layer);
  int64_t num_heads, num_kv_heads, head_dim;
  bool qk_norm_enabled;
  std::shared_ptr<LinearImpl> q_proj, k_proj, v_proj, qkv_proj, o_proj;
  std::shared_ptr<RMSNormImpl> q_norm, k_norm;
};

struct MLPImpl : torch::nn::Module {
  MLPImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<LinearImpl> gate_proj, up_proj, gate_up_proj, down_proj;
};

struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& h, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask, bool causal,
                     KVCache* cache, int64_t layer);
  std::shared_ptr<RMSNormImpl> input_layernorm, post_attention_layernorm;
  std::shared_ptr<AttentionImpl> self_attn;
  std::shared_ptr<MLPImpl> mlp;
};

struct BackboneImpl : torch::nn::Module {
  BackboneImpl(const ModelConfig& config, const at::TensorOptions& options);
  std::shared_ptr<EmbeddingImpl> embed_tokens;
  torch::nn::ModuleList layers;  // registers the parameter names model.layers.N.*
  std::vector<std::shared_ptr<DecoderLayerImpl>> decoder_layers;  // the same layers, typed
  std::shared_ptr<RMSNormImpl> norm;
};

class CausalLM : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised; load_model() or init_weights() fills them.
  CausalLM(ModelConfig config, const at::TensorOptions& options);

  // Final hidden states [B, T, hidden] (after the last norm). Appends to options.cache if given.
  at::Tensor hidden_states(const at::Tensor& input_ids, const ForwardOptions& options = {});
  // LM head on hidden states (any leading shape): [..., vocab].
  at::Tensor logits(const at::Tensor& hidden) const;
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& options = {}) {
    return logits(hidden_states(input_ids, options));
  }

  // Hugging Face initialisation: normal(0, initializer_range) for matrices, zeros for biases,
  // ones for norms, from a generator seeded with `seed`.
  void init_weights(uint64_t seed);

  // Named tensors as a checkpoint stores them (lm_head omitted when tied).
  std::vector<std::pair<std::string, at::Tensor>> checkpoint_tensors();

  const ModelConfig& config() const { return config_; }
  at::TensorOptions options() const { return options_; }

  // Activation checkpointing for training: each decoder layer keeps only its input and recomputes
  // its activations during backward (memory of one layer instead of all, for one extra forward).
  void set_activation_checkpointing(bool enabled) { checkpointing_ = enabled; }

 private:
  // cos/sin tables for the rotated part of each head, [B, T, rotary_dim], in float32.
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& positions) const;

  ModelConfig config_;
  at::TensorOptions options_;
  at::Tensor inv_freq_;  // float32 [rotary_dim / 2], not a parameter
  std::shared_ptr<BackboneImpl> model_;
  std::shared_ptr<LinearImpl> lm_head_;  // null when tied to the embedding
  bool checkpointing_ = false;
};

}  // namespace lf
