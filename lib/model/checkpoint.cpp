#include "model/checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/lora.h"

namespace fs = std::filesystem;

namespace lf {

c10::ScalarType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "fp16" || name == "float16") return at::kHalf;
  throw InputError(what + ": unknown dtype '" + name + "'", "use fp32, bf16 or fp16");
}

std::string torch_dtype_name(c10::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: throw InputError(std::string("dtype ") + c10::toString(type) + " is not a model dtype");
  }
}

c10::Device parse_device(const std::string& name) {
  std::string resolved = name == "auto" ? (at::hasCUDA() ? "cuda" : "cpu") : name;
  try {
    c10::Device device(resolved);
    if (device.is_cuda() && !at::hasCUDA())
      throw InputError("device '" + name + "': CUDA is not available on this machine", "use --device cpu");
    return device;
  } catch (const c10::Error&) {
    throw InputError("unknown device '" + name + "'", "use cpu, cuda or cuda:N");
  }
}

void load_weights_into(CausalLM& model, const std::string& dir) {
  const ModelConfig& config = model.config();
  auto checkpoint = SafetensorsCheckpoint::open_dir(dir);
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  const auto has = [&](const std::string& n) { return checkpoint.contains(n); };
  for (auto& [param_name, param] : model.checkpoint_tensors()) {
    const std::string name = checkpoint_tensor_name(config, param_name, has);
    if (!checkpoint.contains(name))
      throw InputError(dir + ": checkpoint has no tensor '" + name + "'", "is config.json the one these weights were saved with?");
    const auto& entry = checkpoint.entry(name);
    if (at::IntArrayRef(entry.shape) != param.sizes())
      throw InputError(dir + ": tensor '" + name + "' has shape " + c10::str(at::IntArrayRef(entry.shape)) +
                       ", config.json implies " + c10::str(param.sizes()));
    param.copy_(checkpoint.tensor(name));
    used.insert(name);
  }
  for (const auto& name : checkpoint.names()) {
    if (used.count(name) || checkpoint_tensor_skippable(config, name)) continue;
    throw InputError(dir + ": unexpected tensor '" + name + "' in the checkpoint",
                     "the weights do not match config.json's architecture");
  }
}

void synchronize(const c10::Device& device) {
  // A host read of a device scalar waits for the stream without needing the CUDA headers here.
  if (device.is_cuda()) at::_local_scalar_dense(at::zeros({1}, at::TensorOptions().device(device)));
}

std::shared_ptr<CausalLM> load_model(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = load_model_config(dir);
  const c10::ScalarType dtype =
      options.dtype == "auto" ? parse_dtype(config.dtype, dir + "/config.json: torch_dtype") : parse_dtype(options.dtype, "--dtype");
  const c10::Device device = parse_device(options.device);
  auto model = std::make_shared<CausalLM>(config, at::TensorOptions().dtype(dtype).device(device));
  load_weights_into(*model, dir);
  if (!options.adapter.empty()) apply_lora_adapter(*model, options.adapter);
  spdlog::debug("loaded {} ({}, {}){}", dir, torch_dtype_name(dtype), device.str(),
                options.adapter.empty() ? "" : " with adapter " + options.adapter);
  return model;
}

namespace {

const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                 "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                                 "generation_config.json", "chat_template.jinja"};

}  // namespace

void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir) {
  if (from_dir.empty()) return;
  for (const char* name : kTokenizerFiles) {
    const fs::path from = fs::path(from_dir) / name;
    if (fs::exists(from)) fs::copy_file(from, fs::path(to_dir) / name);
  }
}

void save_model(CausalLM& model, const std::string& dir, const SaveOptions& options) {
  // Tensor by tensor: one converted copy at a time, never the whole model on the host.
  const auto tensors = model.checkpoint_tensors();
  std::vector<SafetensorsStreamWriter::Spec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  save_model_streamed(model.config(), model.options().dtype().toScalarType(), dir, specs,
                      [&](const std::function<void(const at::Tensor&)>& write) {
                        for (const auto& [name, t] : tensors) write(t);
                      },
                      options);
}

void save_model_streamed(const ModelConfig& model_config, c10::ScalarType model_dtype, const std::string& dir,
                         const std::vector<SafetensorsStreamWriter::Spec>& specs, const TensorProducer& produce,
                         const SaveOptions& options) {
  write_directory_atomic(dir, [&](const std::string& staging_dir) {
    const fs::path staging(staging_dir);
    ModelConfig config = model_config;
    const c10::ScalarType dtype = options.dtype == "auto" ? model_dtype : parse_dtype(options.dtype, "save dtype");
    config.dtype = torch_dtype_name(dtype);
    std::vector<SafetensorsStreamWriter::Spec> saved = specs;
    for (auto& spec : saved) spec.dtype = dtype;
    write_safetensors_sharded_stream(
        staging.string(), saved, options.max_shard_bytes,
        [&](const std::function<void(const at::Tensor&)>& write) {
          produce([&](const at::Tensor& t) { write(t.detach().to(at::kCPU, dtype).contiguous()); });
        },
        {{"format", "pt"}});
    write_file_atomic((staging / "config.json").string(), model_config_to_json(config));
    copy_tokenizer_files(options.tokenizer_from, staging.string());
  });
}

}  // namespace lf
