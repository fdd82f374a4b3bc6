// `logitfuse init-model`: a randomly initialised checkpoint in Hugging Face layout.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>

#include "commands.h"
#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"
#include "model/checkpoint.h"
#include "tokenizer/vocab_size.h"

namespace lf::app {

namespace {

// "5GB", "200MB", "1GiB", "123" -> bytes, as transformers' max_shard_size accepts.
uint64_t parse_size(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw InputError("--max-shard-size: '" + text + "' is not a size", "e.g. 5GB, 200MB or a byte count");
  }
  std::string unit = text.substr(pos);
  const std::pair<const char*, double> units[] = {{"", 1},          {"B", 1},           {"KB", 1e3},
                                                  {"MB", 1e6},      {"GB", 1e9},        {"KiB", 1024.0},
                                                  {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  for (const auto& [name, scale] : units)
    if (unit == name && value > 0) return static_cast<uint64_t>(value * scale);
  throw InputError("--max-shard-size: '" + text + "' is not a size", "e.g. 5GB, 200MB or a byte count");
}

}  // namespace

void add_init_model(CLI::App& root) {
  struct Options {
    std::string arch, out, config, tokenizer, dtype = "fp32", max_shard_size = "5GB";
    std::optional<int64_t> vocab_size, hidden, layers, heads, kv_heads, intermediate, head_dim;
    std::optional<double> rope_theta;
    bool tie_embeddings = false;
    uint64_t seed = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("init-model", "Write a randomly initialised model in Hugging Face layout");
  cmd->add_option("--arch", opt->arch, "Hugging Face model_type: llama, mistral, qwen2, qwen3, phi3")->required();
  cmd->add_option("--out", opt->out, "output directory (must not exist or be empty)")->required();
  cmd->add_option("--config", opt->config, "start from this config.json (sizes below override it)");
  auto* vocab = cmd->add_option("--vocab-size", opt->vocab_size, "vocabulary size");
  auto* tok = cmd->add_option("--tokenizer", opt->tokenizer, "take the vocabulary size from this tokenizer and copy its files");
  vocab->excludes(tok);
  cmd->add_option("--hidden", opt->hidden, "hidden size");
  cmd->add_option("--layers", opt->layers, "number of layers");
  cmd->add_option("--heads", opt->heads, "attention heads");
  cmd->add_option("--kv-heads", opt->kv_heads, "key/value heads (GQA)");
  cmd->add_option("--intermediate", opt->intermediate, "MLP intermediate size");
  cmd->add_option("--head-dim", opt->head_dim, "head dimension (default hidden/heads)");
  cmd->add_option("--rope-theta", opt->rope_theta, "RoPE base");
  cmd->add_flag("--tie-embeddings", opt->tie_embeddings, "share the embedding and LM head weights");
  cmd->add_option("--dtype", opt->dtype, "fp32|bf16|fp16")->capture_default_str();
  cmd->add_option("--max-shard-size", opt->max_shard_size, "shard the weights above this size (e.g. 5GB)")->capture_default_str();
  cmd->add_option("--seed", opt->seed, "initialisation seed")->capture_default_str();
  cmd->callback([opt] {
    ModelConfig config;
    if (!opt->config.empty()) {
      config = parse_model_config(read_text_file(opt->config), opt->config);
      if (config.model_type != opt->arch)
        throw InputError("--config " + opt->config + ": model_type '" + config.model_type + "' differs from --arch " + opt->arch);
    } else {
      config = default_model_config(opt->arch);
    }
    std::string tokenizer_dir;
    if (!opt->tokenizer.empty()) {
      config.vocab_size = tokenizer_vocab_size(opt->tokenizer);
      tokenizer_dir = std::filesystem::is_directory(opt->tokenizer)
                          ? opt->tokenizer
                          : std::filesystem::path(resolve_tokenizer_file(opt->tokenizer)).parent_path().string();
    }
    if (opt->vocab_size) config.vocab_size = *opt->vocab_size;
    if (opt->hidden) config.hidden_size = *opt->hidden;
    if (opt->layers && *opt->layers != config.num_layers) {
      config.num_layers = *opt->layers;
      config.layer_types.clear();  // Gemma: the family's sliding/full pattern over the new depth
    }
    if (opt->heads) config.num_heads = *opt->heads;
    if (opt->kv_heads) config.num_kv_heads = *opt->kv_heads;
    else if (opt->heads && config.num_kv_heads > config.num_heads) config.num_kv_heads = config.num_heads;
    if (opt->intermediate) config.intermediate_size = *opt->intermediate;
    const int64_t old_head_dim = config.head_dim;
    if (opt->head_dim) config.head_dim = *opt->head_dim;
    else if (opt->hidden || opt->heads) config.head_dim = config.hidden_size / config.num_heads;
    // Gemma scales attention by query_pre_attn_scalar, which its configs set to the head size.
    if (config.query_pre_attn_scalar && *config.query_pre_attn_scalar == static_cast<double>(old_head_dim))
      config.query_pre_attn_scalar = static_cast<double>(config.head_dim);
    if (opt->rope_theta) config.rope.theta = *opt->rope_theta;
    if (opt->tie_embeddings) config.tie_word_embeddings = true;
    const c10::ScalarType dtype = parse_dtype(opt->dtype, "--dtype");
    config.dtype = torch_dtype_name(dtype);
    // Round-trip through config.json so the sizes get the same checks as a loaded model.
    config = parse_model_config(model_config_to_json(config), "init-model options");

    CausalLM model(config, at::TensorOptions().dtype(dtype));
    model.init_weights(opt->seed);
    int64_t params = 0;
    for (auto& [name, t] : model.checkpoint_tensors()) params += t.numel();
    SaveOptions save;
    save.max_shard_bytes = parse_size(opt->max_shard_size);
    save.tokenizer_from = tokenizer_dir;
    save_model(model, opt->out, save);
    spdlog::info("wrote {} ({}, {} parameters, vocab {}, {} layers, hidden {})", opt->out, config.model_type, params,
                 config.vocab_size, config.num_layers, config.hidden_size);
  });
}

}  // namespace lf::app
