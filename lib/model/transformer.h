// The decoder-only transformer behind every supported family (Llama, Mistral, Qwen2/3, Phi-3,
// Gemma 2/3).
// Parameter names are the Hugging Face ones, so a state dict is a checkpoint and vice versa.
// Runs under autograd (training) and with a KV cache (decoding).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <optional>
#include <string>
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

// ZeRO-3 seam: when a model has one, its parameters are not kept whole. They are grouped in units
// (CausalLM::parameter_units) whose owner (train/zero3.h) holds a shard of each per rank, gathers a
// unit's parameters for a computation and frees them after; the model asks for them unit by unit.
class ParameterUnits {
 public:
  virtual ~ParameterUnits() = default;
  // Between gather() and the matching release() the unit's parameters are whole (no gradients).
  // Nested gathers of one unit are counted.
  virtual void gather(int64_t unit) = 0;
  virtual void release(int64_t unit) = 0;
  virtual bool is_gathered(int64_t unit) const = 0;
  // Starts gathering `unit` so that its gather() finds it in flight or done (a no-op by default, and
  // for a unit that does not exist). Called on every rank at the same points.
  virtual void prefetch(int64_t unit) { (void)unit; }
  // Under grad mode: CausalLM::compute_unit(unit, x, extras, flags) with the unit gathered for the
  // forward only, keeping just its inputs; the backward gathers it again, recomputes, and hands the
  // gradient of the unit's parameters to their owner.
  virtual at::Tensor run(int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags) = 0;
};

// A LoRA adapter of one linear layer (model/lora.h): out += scale · B A dropout(x), computed in the
// adapter's dtype (x cast to it) and added to the base output in its dtype, as PEFT does.
struct LoraAdapter {
  at::Tensor A;  // [r, in]
  at::Tensor B;  // [out, r]
  double scale = 1.0;
  double dropout = 0.0;  // applied only while the module is in training mode
};

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
  std::shared_ptr<LoraAdapter> lora;  // null: a plain linear layer
};

struct RMSNormImpl : torch::nn::Module {
  // `gemma`: the weight is an offset from one, applied in float32 before the cast back (Gemma 2/3).
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options, bool gemma = false);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight;
  double eps;
  bool gemma;
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
  std::optional<double> scale;    // query_pre_attn_scalar^-1/2; none: SDPA's head_dim^-1/2
  std::optional<double> softcap;  // attention-logit soft-capping (Gemma 2), computed without SDPA
  std::shared_ptr<LinearImpl> q_proj, k_proj, v_proj, qkv_proj, o_proj;
  std::shared_ptr<RMSNormImpl> q_norm, k_norm;
};

struct MLPImpl : torch::nn::Module {
  MLPImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<LinearImpl> gate_proj, up_proj, gate_up_proj, down_proj;
  std::string act;  // silu | gelu_pytorch_tanh | gelu
};

struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const ModelConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& h, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask, bool causal,
                     KVCache* cache, int64_t layer);
  // Llama order: input_layernorm before attention, post_attention_layernorm before the MLP. Gemma:
  // post_attention_layernorm on the attention's output, and pre/post_feedforward_layernorm around the MLP.
  std::shared_ptr<RMSNormImpl> input_layernorm, post_attention_layernorm;
  std::shared_ptr<RMSNormImpl> pre_feedforward_layernorm, post_feedforward_layernorm;
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
  // Parameters are allocated uninitialised; load_model() or init_weights() fills them. They compute
  // with `options`; `parameter_options` (default: the same) is where they are first allocated: host
  // memory that is never touched for a model whose parameters a ParameterUnits owner takes over.
  CausalLM(ModelConfig config, const at::TensorOptions& options);
  CausalLM(ModelConfig config, const at::TensorOptions& options, const at::TensorOptions& parameter_options);

  // Final hidden states [B, T, hidden] (after the last norm). Appends to options.cache if given.
  at::Tensor hidden_states(const at::Tensor& input_ids, const ForwardOptions& options = {});
  // LM head on hidden states (any leading shape): [..., vocab].
  at::Tensor logits(const at::Tensor& hidden) const;
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& options = {}) {
    return logits(hidden_states(input_ids, options));
  }

  // For decoding on the CPU in fp32: keeps a copy of the LM head's weight in oneDNN's blocked
  // layout, which logits() then uses outside autograd. With a few rows (a decoding batch) the plain
  // path's GEMM reads the [vocab, hidden] weight in an order that wastes most of its compute: 16
  // rows of a 49,152 × 256 head take 3.8 ms against 2.1 ms blocked on a 2-core AVX-512 CPU
  // (`python bench/serve_load.py` measures both in its run). Costs one more copy of the head;
  // returns its bytes, or 0 where nothing is packed (not fp32 on the CPU, or parameters gathered
  // in units). The weights must not change afterwards: only decoding calls it.
  int64_t pack_head_for_decoding();

  // A second model over the same weight storage (no copy; its own adapters, if any are added): DLF
  // experts that are adapters over one base load the base once. The packed head is shared too.
  std::shared_ptr<CausalLM> share_weights();

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

  // Parameter units for ZeRO-3, each in checkpoint order: 0 the embedding, 1..L the decoder layers,
  // L+1 the final norm, L+2 the LM head (untied models only).
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> parameter_units();
  int64_t head_unit() const { return lm_head_ ? config_.num_layers + 2 : 0; }
  // From now on the parameters are gathered through `units` (null: kept whole, as by default).
  void set_parameter_units(ParameterUnits* units) { units_ = units; }
  ParameterUnits* units() const { return units_; }
  // One unit's computation with whatever its parameters are now. Embedding: x = token ids; decoder
  // layer: extras = {cos, sin, mask (empty: none)}, flags bit 0 = causal; final norm; LM head.
  at::Tensor compute_unit(int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags);

 private:
  // cos/sin tables for the rotated part of each head, [B, 1, T, rotary_dim], in the model's dtype;
  // `local`: those of the sliding layers, where they have their own RoPE (Gemma 3).
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& positions, bool local = false) const;
  // Embedding lookup, scaled by sqrt(hidden) where the family does so.
  at::Tensor embed(const at::Tensor& ids) const;
  // LM head on hidden states, then final-logit soft-capping where the config sets it.
  at::Tensor head(const at::Tensor& hidden, const at::Tensor& weight) const;

  ModelConfig config_;
  at::TensorOptions options_;
  at::Tensor inv_freq_;       // float32 [rotary_dim / 2], not a parameter
  at::Tensor long_inv_freq_;  // longrope's set beyond the original context; undefined otherwise
  at::Tensor local_inv_freq_;  // the sliding layers' set (Gemma 3); undefined otherwise
  std::shared_ptr<BackboneImpl> model_;
  std::shared_ptr<LinearImpl> lm_head_;  // null when tied to the embedding
  at::Tensor packed_head_;               // pack_head_for_decoding()'s copy; undefined otherwise
  bool checkpointing_ = false;
  ParameterUnits* units_ = nullptr;
};

}  // namespace lf
