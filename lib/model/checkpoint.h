// Hugging Face checkpoints: load a model directory into a CausalLM, save one back.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/transformer.h"

namespace lf {

struct LoadOptions {
  std::string dtype = "auto";  // auto (the checkpoint's torch_dtype) | fp32 | bf16 | fp16
  std::string device = "cpu";  // cpu | cuda | cuda:N | auto
  // A PEFT LoRA adapter directory applied over the weights without merging them (model/lora.h);
  // empty: none. Its adapters are float32 whatever the base's dtype, as PEFT keeps them.
  std::string adapter;
};

// Reads config.json and the safetensors weights. Missing tensors, shape mismatches and
// unexpected tensors are InputErrors naming the tensor and the directory.
std::shared_ptr<CausalLM> load_model(const std::string& dir, const LoadOptions& options = {});

// Copies a checkpoint directory's weights into an existing model (same architecture), with the same
// checks as load_model.
void load_weights_into(CausalLM& model, const std::string& dir);

struct SaveOptions {
  uint64_t max_shard_bytes = 5ull << 30;  // transformers' default shard size
  std::string dtype = "auto";             // auto = the model's dtype
  std::string tokenizer_from;             // copy tokenizer files from this directory, if set
};

// Writes config.json, the weights (sharded above max_shard_bytes) and tokenizer files into `dir`,
// atomically: into a temporary sibling first, then renamed. An existing non-empty `dir` is refused.
void save_model(CausalLM& model, const std::string& dir, const SaveOptions& options = {});

// save_model for tensors produced one at a time (ZeRO-3 gathers them unit by unit, so the whole
// model is never in one rank's memory): `specs` names them in checkpoint order (dtype: as produced),
// and `produce` hands each, in that order, to the function it is given.
using TensorProducer = std::function<void(const std::function<void(const at::Tensor&)>&)>;
void save_model_streamed(const ModelConfig& config, c10::ScalarType model_dtype, const std::string& dir,
                         const std::vector<SafetensorsStreamWriter::Spec>& specs, const TensorProducer& produce,
                         const SaveOptions& options = {});

// Copies the tokenizer (and generation config) files that exist in `from_dir` into `to_dir`; a no-op
// for an empty `from_dir`.
void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir);

// "fp32" | "float32" | "bf16" | "bfloat16" | "fp16" | "float16" -> ScalarType; InputError otherwise.
c10::ScalarType parse_dtype(const std::string& name, const std::string& what);
std::string torch_dtype_name(c10::ScalarType type);  // "float32", "bfloat16", "float16"
c10::Device parse_device(const std::string& name);
// Waits for the device's queued work (a no-op on CPU): for timing.
void synchronize(const c10::Device& device);

}  // namespace lf
