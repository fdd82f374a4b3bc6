#include "model/model_config.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"

namespace lf {

using nlohmann::json;

int64_t ModelConfig::rotary_dim() const {
  int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * rope.partial_rotary_factor);
  return dim - dim % 2;
}

namespace {

const std::vector<std::string> kSupportedList = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"};
const std::set<std::string> kSupported(kSupportedList.begin(), kSupportedList.end());

bool is_gemma(const std::string& model_type) { return model_type == "gemma2" || model_type == "gemma3_text"; }

// Fields of Gemma 2/3 that logitfuse implements (elsewhere some are refused below).
const std::set<std::string> kGemmaRead = {"hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping",
                                          "final_logit_softcapping", "rope_local_base_freq", "sliding_window_pattern",
                                          "_sliding_window_pattern", "use_bidirectional_attention"};

// transformers' Gemma2Config / Gemma3TextConfig defaults: a field the file leaves out has this value
// (the 4B-and-larger Gemma 3 configs list only what differs from them in their text_config).
const nlohmann::json& gemma_defaults(const std::string& model_type) {
  static const nlohmann::json gemma2 = {
      {"vocab_size", 256000}, {"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
      {"num_attention_heads", 8}, {"num_key_value_heads", 4}, {"head_dim", 256},
      {"hidden_activation", "gelu_pytorch_tanh"}, {"max_position_embeddings", 8192}, {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", true}, {"query_pre_attn_scalar", 256}, {"sliding_window", 4096},
      {"final_logit_softcapping", 30.0}, {"attn_logit_softcapping", 50.0}, {"rope_theta", 10000.0}};
  static const nlohmann::json gemma3 = {
      {"vocab_size", 262208}, {"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
      {"num_attention_heads", 8}, {"num_key_value_heads", 4}, {"head_dim", 256},
      {"hidden_activation", "gelu_pytorch_tanh"}, {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6},
      {"tie_word_embeddings", true}, {"query_pre_attn_scalar", 256}, {"sliding_window", 4096}};
  return model_type == "gemma2" ? gemma2 : gemma3;
}

// Fields that the forward pass reads and logitfuse implements, validated below; plus bookkeeping
// that is known to change nothing.
const std::set<std::string> kRead = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "initializer_range",
    "tie_word_embeddings", "hidden_act", "torch_dtype", "dtype", "rope_theta", "rope_scaling", "rope_parameters",
    "partial_rotary_factor", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "layer_types",
    "max_window_layers", "original_max_position_embeddings"};

// Fields that change the forward pass of some model in ways logitfuse does not implement (quantized
// weights, mixtures of experts, logit or embedding scaling of other families): their presence is an
// error naming them, never a silently different model.
const std::map<std::string, std::string> kRefused = {
    {"quantization_config", "quantized checkpoints are not supported (use a bf16/fp16/fp32 checkpoint)"},
    {"num_local_experts", "mixture-of-experts layers are not supported"},
    {"num_experts", "mixture-of-experts layers are not supported"},
    {"num_experts_per_tok", "mixture-of-experts layers are not supported"},
    {"moe_intermediate_size", "mixture-of-experts layers are not supported"},
    {"attn_logit_softcapping", "attention logit soft-capping is not supported"},
    {"final_logit_softcapping", "final logit soft-capping is not supported"},
    {"logit_scale", "scaled logits are not supported"},
    {"logits_scaling", "scaled logits are not supported"},
    {"embedding_multiplier", "scaled embeddings are not supported"},
    {"residual_multiplier", "scaled residuals are not supported"},
    {"attention_multiplier", "scaled attention is not supported"},
    {"scale_embedding", "scaled embeddings are not supported"},
    {"qk_layernorm", "q/k layer norms outside Qwen3 are not supported"}};

struct Fields {
  const json& j;
  const std::string& origin;

  InputError error(const std::string& field, const std::string& what, const std::string& hint = {}) const {
    return InputError(origin + ": field '" + field + "': " + what, hint);
  }
  bool has(const std::string& key) const { return j.contains(key) && !j[key].is_null(); }
  int64_t integer(const std::string& key, std::optional<int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw error(key, "missing");
    }
    if (!j[key].is_number_integer()) throw error(key, "expected an integer");
    int64_t v = j[key].get<int64_t>();
    if (v <= 0) throw error(key, "must be positive (got " + std::to_string(v) + ")");
    return v;
  }
  double number(const json& obj, const std::string& key, double fallback, const std::string& path) const {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) throw error(path, "expected a number");
    return obj[key].get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_boolean()) throw error(key, "expected true or false");
    return j[key].get<bool>();
  }
};

// LongRoPE as transformers' _compute_longrope_parameters reads it: the original context from the
// block, else the top-level field (Phi-3 keeps it there), else max_position_embeddings; the factor,
// when absent, from the two context lengths; the attention factor, when absent, from the factor.
void parse_longrope(const Fields& f, const json& params, const std::string& key, const ModelConfig& c, RopeConfig& r) {
  const double top_original = f.number(f.j, "original_max_position_embeddings",
                                       static_cast<double>(c.max_position_embeddings), "original_max_position_embeddings");
  const double original = f.number(params, "original_max_position_embeddings", top_original,
                                   key + ".original_max_position_embeddings");
  if (original <= 0) throw f.error(key + ".original_max_position_embeddings", "must be positive");
  // Converted to an integer below: a larger value would not fit (found by fuzz_model_config).
  if (original > 1e15) throw f.error(key + ".original_max_position_embeddings", "is too large");
  r.original_max_position_embeddings = static_cast<int64_t>(original);
  r.factor = params.contains("factor") && !params["factor"].is_null()
                      ? f.number(params, "factor", 1.0, key + ".factor")
                      : static_cast<double>(c.max_position_embeddings) / original;
  if (params.contains("attention_factor") && !params["attention_factor"].is_null())
    r.attention_factor = f.number(params, "attention_factor", 1.0, key + ".attention_factor");
  else
    r.attention_factor = r.factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(r.factor) / std::log(original));
  int64_t rotary = static_cast<int64_t>(static_cast<double>(c.head_dim) * r.partial_rotary_factor);
  const size_t expected = static_cast<size_t>((rotary - rotary % 2) / 2);
  for (const char* name : {"short_factor", "long_factor"}) {
    const std::string field = key + "." + name;
    if (!params.contains(name) || !params[name].is_array()) throw f.error(field, "expected a list of numbers");
    std::vector<double>& out = std::string(name) == "short_factor" ? r.short_factor : r.long_factor;
    for (const auto& v : params[name]) {
      if (!v.is_number() || v.get<double>() <= 0) throw f.error(field, "expected positive numbers");
      out.push_back(v.get<double>());
    }
    if (out.size() != expected)
      throw f.error(field, "has " + std::to_string(out.size()) + " values; the rotary dimension needs " +
                               std::to_string(expected));
  }
}

// One RoPE block ({rope_type, rope_theta, factor, ...}) into `r`. `theta` is the base when the block
// names none; `partial` the rotated fraction when it names none.
void parse_rope_block(const Fields& f, const json& params, const std::string& params_key, double theta, double partial,
                      const ModelConfig& c, RopeConfig& r) {
  if (!params.is_object()) throw f.error(params_key, "expected an object");
  r.theta = f.number(params, "rope_theta", theta, params_key + ".rope_theta");
  r.partial_rotary_factor = f.number(params, "partial_rotary_factor", partial, params_key + ".partial_rotary_factor");
  if (r.partial_rotary_factor <= 0 || r.partial_rotary_factor > 1)
    throw f.error("partial_rotary_factor", "must be in (0, 1]");
  std::string type = "default";
  if (params.contains("rope_type") && params["rope_type"].is_string()) type = params["rope_type"];
  else if (params.contains("type") && params["type"].is_string()) type = params["type"];
  // Phi-3's configuration class reads the LongRoPE block's older names as longrope.
  if (type == "su" || (type == "yarn" && c.model_type == "phi3")) type = "longrope";
  r.type = type;
  const std::set<std::string> known_keys = {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
                                            "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                                            "short_factor", "long_factor", "attention_factor"};
  for (auto it = params.begin(); it != params.end(); ++it)
    if (!known_keys.count(it.key()))
      throw f.error(params_key + "." + it.key(), "not supported by logitfuse's RoPE");
  if (type == "default") {
    if (f.number(params, "factor", 1.0, params_key + ".factor") != 1.0)
      throw f.error(params_key + ".factor", "a factor needs a rope_type (linear or llama3)");
  } else if (type == "linear") {
    r.factor = f.number(params, "factor", 1.0, params_key + ".factor");
  } else if (type == "llama3") {
    r.factor = f.number(params, "factor", 8.0, params_key + ".factor");
    r.low_freq_factor = f.number(params, "low_freq_factor", 1.0, params_key + ".low_freq_factor");
    r.high_freq_factor = f.number(params, "high_freq_factor", 4.0, params_key + ".high_freq_factor");
    const double original =
        f.number(params, "original_max_position_embeddings", 8192, params_key + ".original_max_position_embeddings");
    if (original <= 0 || original > 1e15)
      throw f.error(params_key + ".original_max_position_embeddings", "must be a positive number of positions");
    r.original_max_position_embeddings = static_cast<int64_t>(original);
    if (r.high_freq_factor <= r.low_freq_factor)
      throw f.error(params_key + ".high_freq_factor", "must be greater than low_freq_factor");
  } else if (type == "longrope") {
    parse_longrope(f, params, params_key, c, r);
  } else {
    throw f.error(params_key + ".rope_type", "rope type '" + type + "' is not supported",
                  "logitfuse implements default, linear, llama3 and longrope RoPE");
  }
  if (r.factor <= 0) throw f.error(params_key + ".factor", "must be positive");
}

// Gemma 3 rotates its full-attention layers with one RoPE (rope_theta, and the linear scaling of the
// 4B-and-larger models) and its sliding layers with another (rope_local_base_freq, unscaled).
// transformers 5 writes rope_parameters {full_attention: {...}, sliding_attention: {...}}; the Hub's
// files write rope_theta, rope_local_base_freq and rope_scaling (which applies to the full layers).
void parse_gemma3_rope(const Fields& f, ModelConfig& c) {
  const json& j = f.j;
  json full = json::object(), local = json::object();
  if (f.has("rope_parameters")) {
    const json& p = j["rope_parameters"];
    if (!p.is_object()) throw f.error("rope_parameters", "expected an object");
    for (auto it = p.begin(); it != p.end(); ++it)
      if (it.key() != "full_attention" && it.key() != "sliding_attention")
        throw f.error("rope_parameters." + it.key(), "expected full_attention and sliding_attention blocks");
    if (p.contains("full_attention") && !p["full_attention"].is_null()) full = p["full_attention"];
    if (p.contains("sliding_attention") && !p["sliding_attention"].is_null()) local = p["sliding_attention"];
  }
  if (f.has("rope_scaling")) {
    if (!j["rope_scaling"].is_object()) throw f.error("rope_scaling", "expected an object");
    if (!full.is_object()) throw f.error("rope_parameters.full_attention", "expected an object");
    full.update(j["rope_scaling"]);
  }
  // Errors name the field the file has: the Hub's rope_scaling, or transformers 5's block.
  const std::string full_key = f.has("rope_scaling") && !f.has("rope_parameters") ? "rope_scaling"
                                                                                   : "rope_parameters.full_attention";
  parse_rope_block(f, full, full_key, f.number(j, "rope_theta", 1000000.0, "rope_theta"), 1.0, c,
                   c.rope);
  RopeConfig sliding;
  parse_rope_block(f, local, "rope_parameters.sliding_attention",
                   f.number(j, "rope_local_base_freq", 10000.0, "rope_local_base_freq"), 1.0, c, sliding);
  c.local_rope = sliding;
}

void parse_rope(const Fields& f, ModelConfig& c) {
  if (c.model_type == "gemma3_text") return parse_gemma3_rope(f, c);
  const json& j = f.j;
  // transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; older files write rope_theta
  // and rope_scaling {type|rope_type, factor, ...}. Both are read.
  json params = json::object();
  std::string params_key = "rope_parameters";
  if (f.has("rope_parameters")) {
    params = j["rope_parameters"];
  } else if (f.has("rope_scaling")) {
    params = j["rope_scaling"];
    params_key = "rope_scaling";
  }
  parse_rope_block(f, params, params_key, f.number(j, "rope_theta", 10000.0, "rope_theta"),
                   f.number(j, "partial_rotary_factor", 1.0, "partial_rotary_factor"), c, c.rope);
}

// Which layers slide, for Gemma: layer_types when given, else the family's pattern (Gemma 2: every
// other layer; Gemma 3: five of every six, sliding_window_pattern), as transformers derives them.
void parse_gemma_layers(const Fields& f, ModelConfig& c) {
  const json& j = f.j;
  if (f.has("layer_types")) {
    if (!j["layer_types"].is_array()) throw f.error("layer_types", "expected a list");
    for (size_t i = 0; i < j["layer_types"].size(); ++i) {
      const json& t = j["layer_types"][i];
      if (!t.is_string() || (t != "full_attention" && t != "sliding_attention"))
        throw f.error("layer_types[" + std::to_string(i) + "]",
                      (t.is_string() ? "'" + t.get<std::string>() + "'" : std::string("this value")) + " is not supported",
                      "logitfuse implements full_attention and sliding_attention layers");
      c.layer_types.push_back(t.get<std::string>());
    }
    if (static_cast<int64_t>(c.layer_types.size()) != c.num_layers)
      throw f.error("layer_types", "has " + std::to_string(c.layer_types.size()) + " entries for " +
                                       std::to_string(c.num_layers) + " layers");
  } else {
    int64_t pattern = 2;
    if (c.model_type == "gemma3_text") {
      pattern = 6;
      if (f.has("sliding_window_pattern")) {
        if (!j["sliding_window_pattern"].is_number_integer() || j["sliding_window_pattern"].get<int64_t>() <= 0)
          throw f.error("sliding_window_pattern", "expected a positive integer");
        pattern = j["sliding_window_pattern"].get<int64_t>();
      }
    }
    for (int64_t i = 0; i < c.num_layers; ++i)
      c.layer_types.push_back((i + 1) % pattern != 0 ? "sliding_attention" : "full_attention");
  }
  if (f.has("sliding_window")) {
    if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0)
      throw f.error("sliding_window", "expected a positive integer");
    c.sliding_window = j["sliding_window"].get<int64_t>();
  } else if (std::count(c.layer_types.begin(), c.layer_types.end(), "sliding_attention") > 0) {
    throw f.error("sliding_window", "missing, and layer_types has sliding_attention layers");
  }
}

// The Gemma-only fields: activation, attention scale, soft-capping, norms and embedding scale.
void parse_gemma(const Fields& f, ModelConfig& c) {
  const json& j = f.j;
  if (f.boolean("use_bidirectional_attention", false))
    throw f.error("use_bidirectional_attention", "bidirectional attention (EmbeddingGemma) is not supported",
                  "logitfuse runs causal language models");
  c.gemma_norms = c.scale_embeddings = true;
  c.qk_norm = c.model_type == "gemma3_text";
  const double scalar = f.number(j, "query_pre_attn_scalar", 0.0, "query_pre_attn_scalar");
  if (scalar <= 0) throw f.error("query_pre_attn_scalar", "must be a positive number");
  c.query_pre_attn_scalar = scalar;
  for (auto [key, slot] : {std::pair{"attn_logit_softcapping", &c.attn_logit_softcapping},
                           std::pair{"final_logit_softcapping", &c.final_logit_softcapping}}) {
    if (!f.has(key)) continue;
    const double cap = f.number(j, key, 0.0, key);
    if (cap <= 0) throw f.error(key, "must be a positive number or null");
    *slot = cap;
  }
  parse_gemma_layers(f, c);
}

// A multimodal Gemma 3 config (`gemma3`): its text_config, as Gemma3ForCausalLM reads it, with the
// special-token ids and dtype of the outer config where the text part has none.
json gemma3_text_part(const json& j, const std::string& origin) {
  if (!j.contains("text_config") || !j["text_config"].is_object())
    throw InputError(origin + ": field 'text_config': missing", "a gemma3 config keeps its language model there");
  json text = j["text_config"];
  if (text.contains("model_type") && text["model_type"] != "gemma3_text")
    throw InputError(origin + ": field 'text_config.model_type': expected gemma3_text");
  text["model_type"] = "gemma3_text";
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "tie_word_embeddings"})
    if (!text.contains(key) && j.contains(key)) text[key] = j[key];
  return text;
}

// Every field of the (Gemma-filled) config is read, refused with the reason, or ignored as
// transformers' modeling code ignores it (`_name_or_path`, token ids, generation defaults, dropout,
// `auto_map` of a type transformers implements natively, ...), listed at debug level.
void check_known_fields(const Fields& f, bool gemma) {
  std::vector<std::string> ignored;
  for (auto it = f.j.begin(); it != f.j.end(); ++it) {
    const std::string& key = it.key();
    if (kRead.count(key) || (gemma && kGemmaRead.count(key))) continue;
    const auto refused = kRefused.find(key);
    if (refused != kRefused.end() && !it.value().is_null() && it.value() != false && it.value() != 0)
      throw f.error(key, refused->second);
    ignored.push_back(key);
  }
  if (!ignored.empty()) spdlog::debug("{}: fields the forward pass does not read, ignored: {}", f.origin, join(ignored, ", "));
}

// Sizes, norm epsilon, activation, dtype.
void parse_shapes(const Fields& f, ModelConfig& c, bool gemma) {
  const json& j = f.j;
  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_layers = f.integer("num_hidden_layers");
  c.num_heads = f.integer("num_attention_heads");
  c.num_kv_heads = f.integer("num_key_value_heads", c.num_heads);
  c.head_dim = f.integer("head_dim", c.hidden_size / c.num_heads);
  if (!f.has("head_dim") && c.hidden_size % c.num_heads != 0)
    throw f.error("num_attention_heads", "must divide hidden_size when head_dim is not given");
  if (c.num_heads % c.num_kv_heads != 0)
    throw f.error("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(c.num_heads) + ")");
  c.max_position_embeddings = f.integer("max_position_embeddings", 2048);
  if (f.has("rms_norm_eps")) {
    if (!j["rms_norm_eps"].is_number()) throw f.error("rms_norm_eps", "expected a number");
    c.rms_norm_eps = j["rms_norm_eps"].get<double>();
  }
  if (f.has("initializer_range") && j["initializer_range"].is_number()) c.initializer_range = j["initializer_range"];
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  // Gemma's modeling code reads hidden_activation (its configs may carry an unused hidden_act too).
  const char* act_key = gemma ? "hidden_activation" : "hidden_act";
  if (f.has(act_key) && !j[act_key].is_string()) throw f.error(act_key, "expected a string");
  c.hidden_act = f.has(act_key) ? j[act_key].get<std::string>() : "silu";
  if (c.hidden_act != "silu" && !(gemma && (c.hidden_act == "gelu_pytorch_tanh" || c.hidden_act == "gelu")))
    throw f.error(act_key, "'" + c.hidden_act + "' is not supported",
                  gemma ? "Gemma models: gelu_pytorch_tanh or gelu" : "SwiGLU with silu only");
  for (const char* key : {"torch_dtype", "dtype"})
    if (f.has(key) && j[key].is_string()) c.dtype = j[key];
}

// Attention and MLP biases, q/k norms, fused projections, as each family lays them out.
void parse_layout(const Fields& f, ModelConfig& c, bool gemma) {
  const bool attention_bias = f.boolean("attention_bias", false);
  c.mlp_bias = f.boolean("mlp_bias", false);
  if (c.mlp_bias && c.model_type != "llama") throw f.error("mlp_bias", "only Llama models have an MLP bias");
  if (c.model_type == "llama" || c.model_type == "qwen3" || gemma) {
    c.qkv_bias = c.o_bias = attention_bias;
  } else if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no output bias
    if (attention_bias) throw f.error("attention_bias", "Qwen2 has a fixed bias layout");
  } else if (attention_bias) {
    throw f.error("attention_bias", "not supported for " + c.model_type);
  }
  c.qk_norm = c.model_type == "qwen3";
  c.fused_qkv = c.model_type == "phi3";
  if (c.model_type != "phi3" && c.rope.partial_rotary_factor != 1.0)
    throw f.error("partial_rotary_factor", "only Phi-3 models rotate part of the head");
}

// Sliding-window attention outside Gemma: Mistral applies it whenever sliding_window is set; Qwen2/3
// and Phi-3 only when use_sliding_window says so (transformers ignores their sliding_window otherwise).
void parse_sliding_window(const Fields& f, ModelConfig& c) {
  const json& j = f.j;
  std::optional<int64_t> window;
  if (f.has("sliding_window")) {
    if (!j["sliding_window"].is_number_integer()) throw f.error("sliding_window", "expected an integer or null");
    window = j["sliding_window"].get<int64_t>();
  }
  if (c.model_type == "mistral" || c.model_type == "phi3") {
    c.sliding_window = window;
  } else if (c.model_type == "qwen2" || c.model_type == "qwen3") {
    if (f.boolean("use_sliding_window", false))
      throw f.error("use_sliding_window", "per-layer sliding windows are not supported", "set it to false");
  }
  if (f.has("layer_types")) {
    for (const auto& t : j["layer_types"])
      if (!t.is_string() || (t != "full_attention" && !(t == "sliding_attention" && c.sliding_window)))
        throw f.error("layer_types", "only full_attention layers are supported");
  }
  if (c.sliding_window && *c.sliding_window <= 0) throw f.error("sliding_window", "must be positive");
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& origin_name) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw InputError(origin_name + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw InputError(origin_name + ": expected a JSON object");
  ModelConfig c;
  c.source_json = json_text;
  std::string origin = origin_name;
  if (j.contains("model_type") && j["model_type"] == "gemma3") {
    j = gemma3_text_part(j, origin);
    origin += " (text_config)";
    c.text_of_multimodal = true;
    c.source_json = j.dump();
  }
  if (!j.contains("model_type") || !j["model_type"].is_string()) throw InputError(origin + ": field 'model_type': missing");
  c.model_type = j["model_type"];
  if (!kSupported.count(c.model_type))
    throw InputError(origin + ": field 'model_type': '" + c.model_type + "' is not supported",
                     "supported: " + join(kSupportedList, ", "));
  const bool gemma = is_gemma(c.model_type);
  if (gemma) {  // absent fields take the configuration class's defaults, as transformers fills them in
    json filled = gemma_defaults(c.model_type);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!it.value().is_null() || !filled.contains(it.key()) || it.key().find("softcapping") != std::string::npos)
        filled[it.key()] = it.value();
    j = filled;
  }
  Fields f{j, origin};
  check_known_fields(f, gemma);
  parse_shapes(f, c, gemma);
  parse_rope(f, c);
  parse_layout(f, c, gemma);
  if (gemma) {
    parse_gemma(f, c);
    return c;
  }
  parse_sliding_window(f, c);
  return c;
}

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  if (!std::filesystem::exists(path))
    throw InputError(model_dir + ": no config.json", "a model directory is in Hugging Face layout");
  return parse_model_config(read_text_file(path), path);
}

const std::vector<std::string>& supported_model_types() { return kSupportedList; }

bool ModelConfig::sliding(int64_t layer) const {
  if (!sliding_window) return false;
  return layer_types.empty() || layer_types.at(static_cast<size_t>(layer)) == "sliding_attention";
}

std::string checkpoint_tensor_name(const ModelConfig& config, const std::string& param_name,
                                   const std::function<bool(const std::string&)>& has) {
  if (!config.text_of_multimodal || has(param_name)) return param_name;
  // transformers 5 writes model.language_model.* and lm_head.*; the Hub's Gemma 3 files
  // language_model.model.* and language_model.lm_head.*.
  const std::string rest = param_name.rfind("model.", 0) == 0 ? param_name.substr(6) : std::string();
  for (const std::string& candidate : rest.empty() ? std::vector<std::string>{"language_model." + param_name}
                                                   : std::vector<std::string>{"model.language_model." + rest,
                                                                              "language_model.model." + rest})
    if (has(candidate)) return candidate;
  return param_name;
}

bool checkpoint_tensor_skippable(const ModelConfig& config, const std::string& name) {
  if (name.find("rotary_emb.inv_freq") != std::string::npos) return true;  // old Llama exports
  const bool tied_head = name == "lm_head.weight" || name == "language_model.lm_head.weight";
  if (tied_head && config.tie_word_embeddings) return true;
  if (config.text_of_multimodal)
    for (const char* part : {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."})
      if (name.rfind(part, 0) == 0) return true;
  return false;
}

ModelConfig default_model_config(const std::string& model_type) {
  json j = {{"model_type", model_type}, {"vocab_size", 32000}, {"hidden_size", 256}, {"intermediate_size", 688},
            {"num_hidden_layers", 4}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
            {"rms_norm_eps", 1e-6}, {"max_position_embeddings", 4096}};
  if (!kSupported.count(model_type))
    throw InputError("--arch: '" + model_type + "' is not supported", "supported: " + join(kSupportedList, ", "));
  if (model_type == "phi3") j["rms_norm_eps"] = 1e-5;
  if (model_type == "qwen2" || model_type == "qwen3") j["rope_theta"] = 1000000.0;
  if (is_gemma(model_type)) {
    // The family's layout at a small size: heads of hidden / heads channels, the attention scaled
    // by them, a window that the default context outgrows.
    j["head_dim"] = 64;
    j["query_pre_attn_scalar"] = 64;
    j["sliding_window"] = 512;
    j["tie_word_embeddings"] = true;
  }
  ModelConfig c = parse_model_config(j.dump(), "--arch " + model_type);
  c.source_json.clear();
  return c;
}

namespace {

json rope_scaling_json(const RopeConfig& r) {
  if (r.type == "linear") return {{"rope_type", "linear"}, {"type", "linear"}, {"factor", r.factor}};
  if (r.type == "llama3")
    return {{"rope_type", "llama3"}, {"factor", r.factor}, {"low_freq_factor", r.low_freq_factor},
            {"high_freq_factor", r.high_freq_factor}, {"original_max_position_embeddings", r.original_max_position_embeddings}};
  if (r.type == "longrope")
    return {{"rope_type", "longrope"}, {"type", "longrope"}, {"short_factor", r.short_factor},
            {"long_factor", r.long_factor}, {"factor", r.factor}, {"attention_factor", r.attention_factor},
            {"original_max_position_embeddings", r.original_max_position_embeddings}};
  return nullptr;
}

// Gemma's fields, in the layout of the Hub's files (which transformers 4.x and 5.x and vLLM read).
void write_gemma_fields(const ModelConfig& c, json& j) {
  j.erase("hidden_act");
  j["hidden_activation"] = c.hidden_act;
  // An integer where it is one: transformers' config classes type-check it as int.
  const double scalar = *c.query_pre_attn_scalar;
  j["query_pre_attn_scalar"] = scalar == std::floor(scalar) ? json(static_cast<int64_t>(scalar)) : json(scalar);
  j["attn_logit_softcapping"] = c.attn_logit_softcapping ? json(*c.attn_logit_softcapping) : json(nullptr);
  j["final_logit_softcapping"] = c.final_logit_softcapping ? json(*c.final_logit_softcapping) : json(nullptr);
  j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
  if (c.layer_types.empty()) j.erase("layer_types");  // derived from the family's pattern when read
  else j["layer_types"] = c.layer_types;
  j["attention_bias"] = c.qkv_bias;
  j.erase("sliding_window_pattern");
  if (c.local_rope) j["rope_local_base_freq"] = c.local_rope->theta;
}

}  // namespace

std::string model_config_to_json(const ModelConfig& c) {
  json j = c.source_json.empty() ? json::object() : json::parse(c.source_json);
  // Drop the transformers-5 RoPE block: the legacy rope_theta/rope_scaling pair is read by every
  // transformers version and by vLLM.
  j.erase("rope_parameters");
  j.erase("rope_scaling");
  j.erase("partial_rotary_factor");
  static const std::map<std::string, std::string> kArchitectures = {
      {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}, {"phi3", "Phi3ForCausalLM"}, {"gemma2", "Gemma2ForCausalLM"},
      {"gemma3_text", "Gemma3ForCausalLM"}};
  j["architectures"] = {kArchitectures.at(c.model_type)};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["torch_dtype"] = c.dtype;
  j["rope_theta"] = c.rope.theta;
  j["rope_scaling"] = rope_scaling_json(c.rope);
  if (c.rope.type == "longrope") j["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
  if (c.model_type == "phi3") j["partial_rotary_factor"] = c.rope.partial_rotary_factor;
  if (c.model_type == "llama" || c.model_type == "qwen3") j["attention_bias"] = c.qkv_bias;
  if (c.model_type == "llama") j["mlp_bias"] = c.mlp_bias;
  if (c.model_type == "mistral" || c.model_type == "phi3") {
    if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
    else j["sliding_window"] = nullptr;
  }
  if (c.model_type == "qwen2" || c.model_type == "qwen3") j["use_sliding_window"] = false;
  if (c.model_type == "qwen2" || c.model_type == "qwen3") j.erase("layer_types");
  if (is_gemma(c.model_type)) write_gemma_fields(c, j);
  // transformers fills absent special-token ids with family defaults (Phi-3: 32000) that may lie outside
  // this vocabulary; write them explicitly, dropping ids the vocabulary does not have.
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    json& id = j[key];
    if (id.is_number_integer() && (id.get<int64_t>() < 0 || id.get<int64_t>() >= c.vocab_size)) id = nullptr;
    if (id.is_array()) {
      json kept = json::array();
      for (const auto& one : id)
        if (one.is_number_integer() && one.get<int64_t>() >= 0 && one.get<int64_t>() < c.vocab_size) kept.push_back(one);
      id = kept.empty() ? json(nullptr) : kept;
    }
  }
  return j.dump(2) + "\n";
}

}  // namespace lf
