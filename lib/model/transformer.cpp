#include "model/transformer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cmath>
#include <functional>
#include <limits>
#include <tuple>

#include "core/error.h"
#include "model/lora_branch.h"

namespace lf {

void KVCache::clear() {
  keys.clear();
  values.clear();
  key_mask = at::Tensor();
  length = 0;
}

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out, in}, options));
  if (with_bias) bias = register_parameter("bias", at::empty({out}, options));
}

at::Tensor LinearImpl::forward(const at::Tensor& x) const {
  at::Tensor out = at::linear(x, weight, bias);
  if (!lora) return out;
  // PEFT's sum: the base output plus the adapter branch (model/lora_branch.h), cast back to the base
  // output's dtype.
  at::Tensor sum = out + lora_branch(x, *lora, is_training());
  return sum.scalar_type() == out.scalar_type() ? sum : sum.to(out.scalar_type());
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const at::TensorOptions& options, bool gemma_)
    : eps(eps_), gemma(gemma_) {
  weight = register_parameter("weight", at::empty({dim}, options));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) const {
  // Same order of operations as transformers: normalise in float32, then Llama casts back and scales,
  // Gemma scales by (1 + w) in float32 and casts back.
  const auto dtype = x.scalar_type();
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (gemma) return (h * (1.0 + weight.to(at::kFloat))).to(dtype);
  return weight * h.to(dtype);
}

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({vocab, dim}, options));
}

AttentionImpl::AttentionImpl(const ModelConfig& c, const at::TensorOptions& options)
    : num_heads(c.num_heads), num_kv_heads(c.num_kv_heads), head_dim(c.head_dim), qk_norm_enabled(c.qk_norm),
      softcap(c.attn_logit_softcapping) {
  if (c.query_pre_attn_scalar) scale = 1.0 / std::sqrt(*c.query_pre_attn_scalar);
  const int64_t q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  if (c.fused_qkv) {
    qkv_proj = register_module("qkv_proj", std::make_shared<LinearImpl>(c.hidden_size, q_out + 2 * kv_out, false, options));
  } else {
    q_proj = register_module("q_proj", std::make_shared<LinearImpl>(c.hidden_size, q_out, c.qkv_bias, options));
    k_proj = register_module("k_proj", std::make_shared<LinearImpl>(c.hidden_size, kv_out, c.qkv_bias, options));
    v_proj = register_module("v_proj", std::make_shared<LinearImpl>(c.hidden_size, kv_out, c.qkv_bias, options));
  }
  o_proj = register_module("o_proj", std::make_shared<LinearImpl>(q_out, c.hidden_size, c.o_bias, options));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", std::make_shared<RMSNormImpl>(c.head_dim, c.rms_norm_eps, options, c.gemma_norms));
    k_norm = register_module("k_norm", std::make_shared<RMSNormImpl>(c.head_dim, c.rms_norm_eps, options, c.gemma_norms));
  }
}

namespace {

// Rotates the first cos.size(-1) channels of x [B, heads, T, D] (rotate-half convention).
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rotary = cos.size(-1), half = rotary / 2;
  const bool partial = rotary < x.size(-1);
  at::Tensor rot = partial ? x.narrow(-1, 0, rotary) : x;
  at::Tensor rotated = at::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  at::Tensor out = rot * cos + rotated * sin;
  return partial ? at::cat({out, x.narrow(-1, rotary, x.size(-1) - rotary)}, -1) : out;
}

// Makes room for `needed` positions in every layer's cache, doubling the capacity when it grows.
void reserve_cache(KVCache& cache, int64_t layers, int64_t batch, int64_t kv_heads, int64_t head_dim, int64_t needed,
                   const at::TensorOptions& options) {
  if (!cache.keys.empty()) {
    if (cache.keys[0].size(0) != batch)
      throw InputError("KV cache holds a batch of " + std::to_string(cache.keys[0].size(0)) + ", got " + std::to_string(batch));
    if (cache.keys[0].size(2) >= needed) return;
  }
  int64_t capacity = cache.keys.empty() ? 0 : cache.keys[0].size(2);
  capacity = std::max<int64_t>({needed, 2 * capacity, 16});
  cache.keys.resize(layers);
  cache.values.resize(layers);
  for (int64_t l = 0; l < layers; ++l) {
    for (auto* buffers : {&cache.keys, &cache.values}) {
      at::Tensor grown = at::empty({batch, kv_heads, capacity, head_dim}, options);
      if ((*buffers)[l].defined() && cache.length > 0)
        grown.narrow(2, 0, cache.length).copy_((*buffers)[l].narrow(2, 0, cache.length));
      (*buffers)[l] = grown;
    }
  }
}

// Attention with soft-capped scores, as transformers' eager path computes it (SDPA cannot cap):
// scores = cap * tanh(q k^T * scale / cap), masked, softmax in float32, times v. k/v [B, kv_heads, S, D].
at::Tensor softcapped_attention(const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& mask, bool causal,
                                double scale, double cap) {
  const int64_t groups = q.size(1) / k.size(1);
  if (groups > 1) {
    k = k.repeat_interleave(groups, 1);
    v = v.repeat_interleave(groups, 1);
  }
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * scale;
  scores = at::tanh(scores / cap) * cap;
  at::Tensor allowed = mask;
  if (!allowed.defined() && causal) {
    const int64_t T = q.size(2), S = k.size(2);
    allowed = at::ones({T, S}, q.options().dtype(at::kBool)).tril(S - T);
  }
  if (allowed.defined()) scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1, at::kFloat).to(q.scalar_type()), v);
}

}  // namespace

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  const at::Tensor& mask, bool causal, KVCache* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t q_out = num_heads * head_dim, kv_out = num_kv_heads * head_dim;
  at::Tensor q, k, v;
  if (qkv_proj) {
    at::Tensor qkv = qkv_proj->forward(x);
    q = qkv.narrow(-1, 0, q_out);
    k = qkv.narrow(-1, q_out, kv_out);
    v = qkv.narrow(-1, q_out + kv_out, kv_out);
  } else {
    q = q_proj->forward(x);
    k = k_proj->forward(x);
    v = v_proj->forward(x);
  }
  q = q.view({B, T, num_heads, head_dim});
  k = k.view({B, T, num_kv_heads, head_dim});
  if (qk_norm_enabled) {
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  q = apply_rotary(q.transpose(1, 2), cos, sin);
  k = apply_rotary(k.transpose(1, 2), cos, sin);
  v = v.view({B, T, num_kv_heads, head_dim}).transpose(1, 2);
  if (cache) {
    const int64_t past = cache->length;
    cache->keys[layer].narrow(2, past, T).copy_(k);
    cache->values[layer].narrow(2, past, T).copy_(v);
    k = cache->keys[layer].narrow(2, 0, past + T);
    v = cache->values[layer].narrow(2, 0, past + T);
  }
  at::Tensor out =
      softcap ? softcapped_attention(q, k, v, mask, causal, scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))), *softcap)
              : at::scaled_dot_product_attention(q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, 0.0,
                                                 causal, scale, /*enable_gqa=*/num_heads != num_kv_heads);
  return o_proj->forward(out.transpose(1, 2).reshape({B, T, q_out}));
}

MLPImpl::MLPImpl(const ModelConfig& c, const at::TensorOptions& options) : act(c.hidden_act) {
  if (c.fused_qkv) {
    gate_up_proj = register_module("gate_up_proj", std::make_shared<LinearImpl>(c.hidden_size, 2 * c.intermediate_size, false, options));
  } else {
    gate_proj = register_module("gate_proj", std::make_shared<LinearImpl>(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
    up_proj = register_module("up_proj", std::make_shared<LinearImpl>(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  }
  down_proj = register_module("down_proj", std::make_shared<LinearImpl>(c.intermediate_size, c.hidden_size, c.mlp_bias, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) const {
  auto gate = [this](const at::Tensor& g) {
    if (act == "gelu_pytorch_tanh") return at::gelu(g, "tanh");
    if (act == "gelu") return at::gelu(g);
    return at::silu(g);
  };
  if (gate_up_proj) {
    at::Tensor gate_up = gate_up_proj->forward(x);
    const int64_t n = gate_up.size(-1) / 2;
    return down_proj->forward(gate(gate_up.narrow(-1, 0, n)) * gate_up.narrow(-1, n, n));
  }
  return down_proj->forward(gate(gate_proj->forward(x)) * up_proj->forward(x));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, const at::TensorOptions& options) {
  auto norm = [&](const char* name) {
    return register_module(name, std::make_shared<RMSNormImpl>(c.hidden_size, c.rms_norm_eps, options, c.gemma_norms));
  };
  input_layernorm = norm("input_layernorm");
  self_attn = register_module("self_attn", std::make_shared<AttentionImpl>(c, options));
  post_attention_layernorm = norm("post_attention_layernorm");
  if (c.gemma_norms) {
    pre_feedforward_layernorm = norm("pre_feedforward_layernorm");
    post_feedforward_layernorm = norm("post_feedforward_layernorm");
  }
  mlp = register_module("mlp", std::make_shared<MLPImpl>(c, options));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                                     bool causal, KVCache* cache, int64_t layer) {
  at::Tensor attended = self_attn->forward(input_layernorm->forward(x), cos, sin, mask, causal, cache, layer);
  if (!pre_feedforward_layernorm) {
    at::Tensor h = x + attended;
    return h + mlp->forward(post_attention_layernorm->forward(h));
  }
  at::Tensor h = x + post_attention_layernorm->forward(attended);
  return h + post_feedforward_layernorm->forward(mlp->forward(pre_feedforward_layernorm->forward(h)));
}

namespace {

// Whether a decoder layer's forward draws random numbers (LoRA dropout in training mode).
bool uses_dropout(DecoderLayerImpl& layer) {
  if (!layer.is_training()) return false;
  for (const auto& module : layer.modules(/*include_self=*/false))
    if (auto* linear = dynamic_cast<LinearImpl*>(module.get()); linear && linear->lora && linear->lora->dropout > 0)
      return true;
  return false;
}

// A decoder layer that saves only its input: the forward runs without building a graph, and the
// backward recomputes the layer with one (under the same autocast state) and backpropagates through
// it, which also accumulates the layer's parameter gradients.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin, const at::Tensor& mask, bool causal, int64_t layer_address) {
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["has_mask"] = mask.numel() > 0;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["layer"] = layer_address;
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(x.device().type());
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(layer_address);
    // LoRA dropout draws its seeds from the CPU generator (model/lora_branch.h): the recomputation
    // must draw the same ones.
    if (uses_dropout(*layer)) ctx->saved_data["rng"] = at::detail::getDefaultCPUGenerator().get_state();
    at::NoGradGuard no_grad;
    return layer->forward(x, cos, sin, mask.numel() > 0 ? mask : at::Tensor(), causal, nullptr, 0);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    at::Tensor x = saved[0].detach().requires_grad_(true);
    const auto device_type = x.device().type();
    const bool autocast = ctx->saved_data["autocast"].toBool();
    const bool previous = at::autocast::is_autocast_enabled(device_type);
    at::autocast::set_autocast_enabled(device_type, autocast);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const bool replay = ctx->saved_data.count("rng") > 0;
    at::Tensor now;  // the generator's state outside this recomputation, restored after it
    if (replay) {
      now = generator.get_state();
      generator.set_state(ctx->saved_data["rng"].toTensor());
    }
    at::Tensor out;
    {
      at::AutoGradMode enable_grad(true);
      const at::Tensor mask = ctx->saved_data["has_mask"].toBool() ? saved[3] : at::Tensor();
      out = layer->forward(x, saved[1], saved[2], mask, ctx->saved_data["causal"].toBool(), nullptr, 0);
    }
    if (replay) generator.set_state(now);
    at::autocast::set_autocast_enabled(device_type, previous);
    torch::autograd::backward({out}, {grad_outputs[0]});
    return {x.grad(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

BackboneImpl::BackboneImpl(const ModelConfig& c, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", std::make_shared<EmbeddingImpl>(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) {
    decoder_layers.push_back(std::make_shared<DecoderLayerImpl>(c, options));
    layers->push_back(decoder_layers.back());
  }
  norm = register_module("norm", std::make_shared<RMSNormImpl>(c.hidden_size, c.rms_norm_eps, options, c.gemma_norms));
}

namespace {

// Inverse frequencies exactly as transformers computes them (float32), with llama3/linear scaling;
// for longrope, the set for `long_context` (positions beyond the original context) or the short one.
at::Tensor inverse_frequencies(const RopeConfig& rope, int64_t dim, bool long_context = false) {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor exponent = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(rope.theta, f32), exponent);
  if (rope.type == "linear") {
    inv_freq = inv_freq / rope.factor;
  } else if (rope.type == "llama3") {
    const double factor = rope.factor, low = rope.low_freq_factor, high = rope.high_freq_factor;
    const double old_context = static_cast<double>(rope.original_max_position_embeddings);
    const double low_wavelen = old_context / low, high_wavelen = old_context / high;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / factor, inv_freq);
    at::Tensor smooth = (old_context / wavelen - low) / (high - low);
    at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  } else if (rope.type == "longrope") {
    const auto& factors = long_context ? rope.long_factor : rope.short_factor;
    std::vector<float> ext(factors.begin(), factors.end());
    at::Tensor ext_factors = at::tensor(ext, f32);
    inv_freq = 1.0 / (ext_factors * at::pow(at::scalar_tensor(rope.theta, f32), exponent));
  }
  return inv_freq;
}

}  // namespace

CausalLM::CausalLM(ModelConfig config, const at::TensorOptions& options) : CausalLM(std::move(config), options, options) {}

CausalLM::CausalLM(ModelConfig config, const at::TensorOptions& options, const at::TensorOptions& parameter_options)
    : config_(std::move(config)), options_(options) {
  model_ = register_module("model", std::make_shared<BackboneImpl>(config_, parameter_options));
  if (!config_.tie_word_embeddings)
    lm_head_ = register_module("lm_head", std::make_shared<LinearImpl>(config_.hidden_size, config_.vocab_size, false,
                                                                        parameter_options));
  const int64_t rotary = config_.rotary_dim();
  inv_freq_ = inverse_frequencies(config_.rope, rotary).to(options_.device());
  if (config_.rope.type == "longrope") long_inv_freq_ = inverse_frequencies(config_.rope, rotary, true).to(options_.device());
  if (config_.local_rope) local_inv_freq_ = inverse_frequencies(*config_.local_rope, rotary).to(options_.device());
}

std::pair<at::Tensor, at::Tensor> CausalLM::rotary(const at::Tensor& positions, bool local) const {
  const RopeConfig& rope = local ? *config_.local_rope : config_.rope;
  // longrope switches to its long set when this call reaches past the original context (transformers
  // decides per forward call from the largest position, so a cached prefix keeps the short set).
  const bool long_context = !local && long_inv_freq_.defined() &&
                            positions.max().item<int64_t>() + 1 > config_.rope.original_max_position_embeddings;
  const at::Tensor& inv_freq = local ? local_inv_freq_ : long_context ? long_inv_freq_ : inv_freq_;
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, rotary/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  const auto dtype = options_.dtype().toScalarType();
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (rope.attention_factor != 1.0) {
    cos = cos * rope.attention_factor;
    sin = sin * rope.attention_factor;
  }
  return {cos.to(dtype).unsqueeze(1), sin.to(dtype).unsqueeze(1)};
}

at::Tensor CausalLM::embed(const at::Tensor& ids) const {
  at::Tensor h = at::embedding(model_->embed_tokens->weight, ids);
  if (!config_.scale_embeddings) return h;
  // transformers multiplies by sqrt(hidden) made a float32 scalar and cast to the weights' dtype.
  const at::Tensor scale = at::scalar_tensor(std::sqrt(static_cast<double>(config_.hidden_size)), at::kFloat);
  return h * scale.to(h.scalar_type());
}

namespace {

// Final-logit soft-capping (Gemma 2) where the config sets it: cap · tanh(logits / cap).
at::Tensor soft_cap(const at::Tensor& logits, const std::optional<double>& cap) {
  return cap ? at::tanh(logits / *cap) * *cap : logits;
}

// What a layer attends with: its RoPE tables, mask (undefined: none) and whether SDPA masks causally.
struct LayerInputs {
  const at::Tensor &cos, &sin, &mask;
  bool causal;
};

// Key validity over the whole attended range ([B, past + T] bool) when any padding is involved (the
// cache keeps it for the next call); undefined otherwise.
at::Tensor key_validity(const ForwardOptions& options, KVCache* cache, int64_t B, int64_t T, int64_t past,
                        const c10::Device& device) {
  if (!options.token_mask && !(cache && cache->key_mask.defined())) return {};
  at::Tensor past_valid = cache && cache->key_mask.defined() ? cache->key_mask
                                                             : at::ones({B, past}, at::TensorOptions().dtype(at::kBool).device(device));
  at::Tensor new_valid = options.token_mask ? options.token_mask->to(device).to(at::kBool)
                                            : at::ones({B, T}, at::TensorOptions().dtype(at::kBool).device(device));
  at::Tensor key_valid = at::cat({past_valid, new_valid}, 1);
  if (cache) cache->key_mask = key_valid;
  return key_valid;
}

// The mask of T queries after `past` over S = past + T keys ([B, 1, T, S] bool; undefined: none) and
// whether SDPA masks causally itself. SDPA's own causal mask is enough for a plain prefill or a single
// new token; anything else (a chunk after a prefix, padding, a sliding `window` that matters) gets an
// explicit mask.
std::pair<at::Tensor, bool> attention_mask(const at::Tensor& key_valid, std::optional<int64_t> window, int64_t B, int64_t T,
                                           int64_t past, const c10::Device& device) {
  const int64_t S = past + T;
  const bool window_matters = window && S > *window;
  if (!key_valid.defined() && !window_matters && !(past > 0 && T > 1)) return {at::Tensor(), past == 0 && T > 1};
  auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q_idx = at::arange(past, S, long_options).unsqueeze(1);  // [T, 1]
  at::Tensor k_idx = at::arange(0, S, long_options).unsqueeze(0);     // [1, S]
  at::Tensor allowed = k_idx <= q_idx;
  if (window_matters) allowed = allowed.logical_and(q_idx - k_idx < *window);
  allowed = allowed.unsqueeze(0).expand({B, T, S});
  if (key_valid.defined()) allowed = allowed.logical_and(key_valid.unsqueeze(1));
  // A padding query may see no valid key at all; let it see itself so the row stays finite.
  allowed = allowed.logical_or((k_idx == q_idx).unsqueeze(0));
  return {allowed.unsqueeze(1), false};
}

}  // namespace

at::Tensor CausalLM::head(const at::Tensor& hidden, const at::Tensor& weight) const {
  if (lm_head_ && lm_head_->lora) return soft_cap(lm_head_->forward(hidden), config_.final_logit_softcapping);
  return soft_cap(at::linear(hidden, weight), config_.final_logit_softcapping);
}

at::Tensor CausalLM::hidden_states(const at::Tensor& input_ids, const ForwardOptions& options) {
  if (input_ids.dim() != 2) throw InputError("input_ids must be [batch, seq]");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  KVCache* cache = options.cache;
  const int64_t past = cache ? cache->length : 0;
  const int64_t S = past + T;
  const auto device = options_.device();

  at::Tensor positions = options.positions ? options.positions->to(device)
                                           : at::arange(past, S, at::TensorOptions().dtype(at::kLong).device(device)).expand({B, T});
  // RoPE tables and attention masks per kind of layer: full attention, and the sliding window's
  // (Mistral and Phi-3 slide on every layer, Gemma on those layer_types names; Gemma 3 also rotates
  // them with its own base).
  bool any_sliding = false, any_full = false;
  for (int64_t l = 0; l < config_.num_layers; ++l) (config_.sliding(l) ? any_sliding : any_full) = true;
  at::Tensor cos, sin, local_cos, local_sin;
  std::tie(cos, sin) = rotary(positions);
  if (config_.local_rope && any_sliding) std::tie(local_cos, local_sin) = rotary(positions, /*local=*/true);

  const at::Tensor key_valid = key_validity(options, cache, B, T, past, device);
  std::pair<at::Tensor, bool> full_mask, sliding_mask;
  if (any_full) full_mask = attention_mask(key_valid, std::nullopt, B, T, past, device);
  if (any_sliding)
    sliding_mask = any_full && S <= *config_.sliding_window ? full_mask
                                                            : attention_mask(key_valid, config_.sliding_window, B, T, past, device);
  auto layer_inputs = [&](int64_t l) -> LayerInputs {
    const bool slides = config_.sliding(l);
    const auto& [mask, causal] = slides ? sliding_mask : full_mask;
    const bool local = slides && local_cos.defined();
    return {local ? local_cos : cos, local ? local_sin : sin, mask, causal};
  };

  if (cache)
    reserve_cache(*cache, config_.num_layers, B, config_.num_kv_heads, config_.head_dim, S, options_);

  if (units_) {
    // ZeRO-3: each unit gathered for its computation only. Under autograd (training) the unit's
    // owner also recomputes it in the backward; without (evaluation, decoding) it is run directly.
    const bool differentiable = at::GradMode::is_enabled() && !cache;
    // The next unit's gather starts before this one computes.
    auto through = [&](int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags,
                       const std::function<at::Tensor()>& direct) {
      if (unit < config_.num_layers + 1) units_->prefetch(unit + 1);
      if (differentiable) return units_->run(unit, x, extras, flags);
      units_->gather(unit);
      at::Tensor out = direct();
      units_->release(unit);
      return out;
    };
    const at::Tensor ids = input_ids.to(device);
    at::Tensor h = through(0, ids, {}, 0, [&] { return embed(ids); });
    const at::Tensor no_mask = at::empty({0}, at::TensorOptions().dtype(at::kBool).device(device));
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      DecoderLayerImpl& layer = *model_->decoder_layers[l];
      const LayerInputs in = layer_inputs(l);
      h = through(l + 1, h, {in.cos, in.sin, in.mask.defined() ? in.mask : no_mask}, in.causal ? 1 : 0,
                  [&] { return layer.forward(h, in.cos, in.sin, in.mask, in.causal, cache, l); });
    }
    if (cache) cache->length = S;
    return through(config_.num_layers + 1, h, {}, 0, [&] { return model_->norm->forward(h); });
  }

  at::Tensor h = embed(input_ids.to(device));
  const bool checkpoint = checkpointing_ && !cache && at::GradMode::is_enabled();
  // A checkpointed layer's output needs a gradient only if its input does: with a frozen embedding (a
  // LoRA student) the adapters inside the layers would get none. (transformers' enable_input_require_grads.)
  if (checkpoint && !h.requires_grad()) h = h.detach().requires_grad_(true);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    DecoderLayerImpl& layer = *model_->decoder_layers[l];
    const LayerInputs in = layer_inputs(l);
    // Autograd functions take defined tensors only: no mask travels as an empty one.
    h = checkpoint ? CheckpointedLayer::apply(h, in.cos, in.sin,
                                              in.mask.defined() ? in.mask : at::empty({0}, h.options().dtype(at::kBool)),
                                              in.causal, reinterpret_cast<int64_t>(&layer))
                   : layer.forward(h, in.cos, in.sin, in.mask, in.causal, cache, l);
  }
  if (cache) cache->length = S;
  return model_->norm->forward(h);
}

namespace {

// oneDNN's blocked-weight linear, registered by libtorch_cpu as mkldnn:: operators (what
// torch.compile's CPU freezing uses). Called boxed: their C++ signatures are not a public header.
// Each handle is looked up once, not on every decoding step.
at::Tensor call_mkldnn(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}
const c10::OperatorHandle& mkldnn_reorder() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  return op;
}
const c10::OperatorHandle& mkldnn_linear() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return op;
}

}  // namespace

std::shared_ptr<CausalLM> CausalLM::share_weights() {
  auto twin = std::make_shared<CausalLM>(config_, options_);
  at::NoGradGuard no_grad;
  auto mine = named_parameters(/*recurse=*/true), theirs = twin->named_parameters(/*recurse=*/true);
  for (const auto& item : mine) theirs[item.key()].set_(item.value());  // the twin's tensors now view these storages
  twin->packed_head_ = packed_head_;
  twin->checkpointing_ = checkpointing_;
  if (!is_training()) twin->eval();
  return twin;
}

int64_t CausalLM::pack_head_for_decoding() {
  const at::Tensor& weight = lm_head_ ? lm_head_->weight : model_->embed_tokens->weight;
  if (units_ || !weight.device().is_cpu() || weight.scalar_type() != at::kFloat || !at::hasMKLDNN()) return 0;
  if (lm_head_ && lm_head_->lora) return 0;  // an adapted head is not the weight alone
  if (packed_head_.defined()) return 0;       // shared with the model whose weights this one shares
  at::NoGradGuard no_grad;
  packed_head_ = call_mkldnn(mkldnn_reorder(), {weight.detach(), c10::IValue()});
  return weight.numel() * static_cast<int64_t>(weight.element_size());
}

at::Tensor CausalLM::logits(const at::Tensor& hidden) const {
  const at::Tensor& weight = lm_head_ ? lm_head_->weight : model_->embed_tokens->weight;
  if (packed_head_.defined() && !(lm_head_ && lm_head_->lora) && !(at::GradMode::is_enabled() && hidden.requires_grad())) {
    return soft_cap(call_mkldnn(mkldnn_linear(), {hidden.contiguous(), packed_head_, c10::IValue(), std::string("none"),
                                                  c10::List<std::optional<at::Scalar>>(), c10::IValue()}),
                    config_.final_logit_softcapping);
  }
  if (!units_ || units_->is_gathered(head_unit())) return head(hidden, weight);
  // A head gathered for this call alone cannot serve a backward: a trainer gathers it for the loss.
  if (at::GradMode::is_enabled() && hidden.requires_grad())
    throw RuntimeFailure("ZeRO-3: differentiable logits need the LM head gathered first (ParameterUnits::gather)");
  units_->gather(head_unit());
  at::Tensor out = head(hidden, weight);
  units_->release(head_unit());
  return out;
}

std::vector<std::vector<std::pair<std::string, at::Tensor>>> CausalLM::parameter_units() {
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> units(config_.num_layers + (lm_head_ ? 3 : 2));
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    size_t unit = 0;
    if (name.rfind("model.layers.", 0) == 0) unit = 1 + std::stoul(name.substr(13));
    else if (name.rfind("model.norm.", 0) == 0) unit = config_.num_layers + 1;
    else if (name.rfind("lm_head.", 0) == 0) unit = config_.num_layers + 2;
    else if (name.rfind("model.embed_tokens.", 0) != 0) throw RuntimeFailure("parameter " + name + " belongs to no unit");
    units[unit].emplace_back(name, item.value());
  }
  return units;
}

at::Tensor CausalLM::compute_unit(int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags) {
  const int64_t L = config_.num_layers;
  if (unit == 0) return embed(x);
  if (unit <= L) {
    const at::Tensor mask = extras[2].numel() > 0 ? extras[2] : at::Tensor();
    return model_->decoder_layers[unit - 1]->forward(x, extras[0], extras[1], mask, (flags & 1) != 0, nullptr, 0);
  }
  if (unit == L + 1) return model_->norm->forward(x);
  return head(x, lm_head_->weight);
}

void CausalLM::init_weights(uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor& param = item.value();
    at::Tensor init = at::empty(param.sizes(), at::TensorOptions().dtype(at::kFloat));
    const bool is_norm = name.find("norm.weight") != std::string::npos || name.find("layernorm.weight") != std::string::npos;
    if (is_norm) init.fill_(config_.gemma_norms ? 0.0 : 1.0);  // Gemma's norms scale by (1 + w)
    else if (param.dim() == 1) init.zero_();
    else init.normal_(0.0, config_.initializer_range, generator);
    param.copy_(init);
  }
}

std::vector<std::pair<std::string, at::Tensor>> CausalLM::checkpoint_tensors() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& item : named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace lf
