// LoRA adapters (Hu et al. 2021) on a model's linear layers, in PEFT's arithmetic and file format:
// y = W x + b + s · B A dropout(x), with A [r, in], B [out, r] and s = α/r (α/√r with rsLoRA).
// The base weights stay as they are (frozen, in their dtype); the adapters live beside them in each
// LinearImpl, are not parameters of the module (a model's state dict is still its checkpoint), and
// are what a LoRA run trains, checkpoints and writes as a PEFT adapter directory:
//   adapter_config.json        peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, target_modules, ...
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r]
// which peft.PeftModel.from_pretrained and vLLM's --lora-modules load.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer.h"

namespace lf {

struct LoraConfig {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.05;
  // Module names as PEFT matches them: a module is a target when its name is an entry or ends with
  // "." + an entry; "all-linear" means every linear layer except the LM head. Default: attention and MLP.
  std::vector<std::string> target_modules = default_lora_targets();
  bool use_rslora = false;
  std::string init = "kaiming";  // kaiming: PEFT's default (A Kaiming-uniform, a = √5); gaussian: A ~ N(0, 1/r); B = 0
  double scale() const;          // α/r, or α/√r with rsLoRA
  static std::vector<std::string> default_lora_targets();
};

// The linear layers of a model by module name ("model.layers.0.self_attn.q_proj", "lm_head"), in
// module order; the LM head only when untied.
std::vector<std::pair<std::string, LinearImpl*>> linear_layers(CausalLM& model);

// The module names `config` targets in `model`. InputError naming `key` when an entry matches no
// linear layer of the model (naming the ones it has), or targets what LoRA here cannot adapt (the
// embedding, or the LM head of a model whose head is tied to it).
std::vector<std::string> lora_targets(CausalLM& model, const LoraConfig& config, const std::string& key);

// Adds fresh adapters to the targets, in `dtype` on the model's device, A initialised as `config.init`
// says from a generator seeded with `seed`, B zeros; freezes every base parameter. Adapters that
// require gradients when `trainable`. Returns the named adapter tensors (lora_tensors()).
std::vector<std::pair<std::string, at::Tensor>> add_lora(CausalLM& model, const LoraConfig& config, uint64_t seed,
                                                         c10::ScalarType dtype, bool trainable,
                                                         const std::string& key = "student.lora");

// Puts the model's adapters back to add_lora's start (the same draws for the same seed): A as
// `config.init` says, B zeros, in place (tensors that an optimizer refers to stay the same).
void reset_lora(CausalLM& model, const LoraConfig& config, uint64_t seed);

// The adapters of a model as PEFT names them in adapter_model.safetensors, module order, A before B:
// "base_model.model.<module>.lora_A.weight", "...lora_B.weight".
std::vector<std::pair<std::string, at::Tensor>> lora_tensors(CausalLM& model);
bool has_lora(CausalLM& model);

// A PEFT adapter directory as read: its config and each adapted module's A [r, in] and B [out, r]
// (float32, module order of the file). InputError naming the file for a missing or malformed
// adapter_config.json or adapter_model.safetensors, a tensor that is not a LoRA A or B weight, a
// module with only one of them, or a rank other than r; "not yet available" for the kinds this does
// not apply (not LORA, DoRA, biases, modules_to_save, per-module ranks, embedding adapters, .bin).
struct LoraModuleWeights {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  at::Tensor A, B;
};
struct LoraAdapterFile {
  LoraConfig config;  // dropout as saved; target_modules: the full names of the modules the file adapts
  std::string weights_file;
  std::vector<LoraModuleWeights> modules;
};
LoraAdapterFile read_lora_adapter(const std::string& dir);

// read_lora_adapter's config: add_lora turns it into adapters of the same shapes, for
// load_lora_weights to fill.
LoraConfig adapter_lora_config(const std::string& dir);

// Trainable parameters that add_lora would create: r · (in + out) per target.
int64_t lora_parameter_count(CausalLM& model, const LoraConfig& config, const std::string& key = "student.lora");

// Applies a PEFT adapter directory to `model` without merging: adds its adapters (not trainable) and
// loads their weights. InputError naming the directory and tensor when a module is not in the model
// or a shape does not fit it.
void apply_lora_adapter(CausalLM& model, const std::string& dir, c10::ScalarType dtype = at::kFloat);

// Loads an adapter directory's weights into adapters `model` already has (same targets and rank).
void load_lora_weights(CausalLM& model, const std::string& dir);

struct AdapterSaveOptions {
  std::string base_model;      // base_model_name_or_path
  std::string tokenizer_from;  // copy the tokenizer files from this directory, if set
};
// Writes the model's adapters as a PEFT adapter directory (float32), atomically.
void save_lora_adapter(CausalLM& model, const LoraConfig& config, const std::string& dir,
                       const AdapterSaveOptions& options);

// `logitfuse merge --lora`: W + Σ_i weight_i · s_i · B_i A_i for every adapted weight of the base
// directory, as PEFT's merge_and_unload computes it (the product in float32, cast to the weight's
// dtype, then added), written in the base's shard layout with its config and tokenizer. Streams
// tensor by tensor. Returns the number of weights changed.
int64_t merge_lora_adapters(const std::string& base, const std::vector<std::string>& adapters,
                            const std::vector<double>& weights, const std::string& out);

}  // namespace lf
