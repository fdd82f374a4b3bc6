// The `generate` and `eval` configs (interface.md "Generate and eval configs"): plain structs with the
// documented defaults, read and validated by the same schema mechanism as the training recipe.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lf {

struct ModelSpec {
  std::string name;             // for traces and messages; default: the role (large, base, expert0, ...)
  std::string path;
  std::string adapter;          // a PEFT LoRA adapter applied over `path` (not merged); empty: none
  std::string dtype = "auto";   // auto (the checkpoint's torch_dtype) | fp32 | bf16 | fp16
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
};

struct ModelsConfig {
  ModelSpec large;
  std::optional<ModelSpec> base;  // the small untuned model the experts were tuned from
  std::vector<ModelSpec> experts;
};

struct AlphaConfig {
  double min = 0.0, max = 2.0, step = 0.1;
};

struct FusionConfig {
  std::string strategy = "dynamic";  // dynamic | static | large_only | expert_only
  AlphaConfig alpha;
  double static_alpha = 1.0;
  std::string expert;  // expert_only: which expert by name (default: the first)
  // dynamic with several experts: how the active expert and α are chosen (kernels/dlf.h,
  // apply_multi_expert_criterion): sum (the paper's) | active | closest
  std::string multi_expert = "sum";
};

struct SamplingConfig {
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;
  int64_t top_k = 0;  // 0 = off
  int64_t seed = 0;
};

struct GenerationConfig {
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;
  int64_t batch_size = 8;
  std::string chat_template = "plain";
  nlohmann::json chat_template_kwargs = nlohmann::json::object();  // variables of an `auto` (Jinja) template
  bool kv_cache = true;  // false: recompute the whole sequence every step (a check, slow)
  // fp32 models on the CPU keep a blocked copy of their LM head for decoding (CausalLM::
  // pack_head_for_decoding): faster with several rows, one more copy of the head in memory.
  bool packed_head = true;
  // In-context examples (method.md §4b): the first `shots` worked examples of `shots_file` (JSONL
  // {"prompt", "response"}), as user/assistant turns before every prompt, for every model alike.
  int64_t shots = 0;
  std::string shots_file;
};

// What both commands decode with: a plain model, or large/base/experts with a fusion strategy.
struct DecodingConfig {
  std::optional<ModelSpec> model;
  std::optional<ModelsConfig> models;
  FusionConfig fusion;
  SamplingConfig sampling;
  GenerationConfig generation;
};

struct GenerateConfig : DecodingConfig {
  std::string input;   // JSONL {"prompt"[, "system"]}
  std::string output;  // JSONL, input order
  std::optional<std::string> trace;  // JSONL of (step, row, expert, α, J); also --trace
};

struct TaskConfig {
  std::string name;
  std::string type;  // exact_match | multiple_choice | perplexity
  std::string data;
  std::string extract = "last_number";  // exact_match: last_number | regex
  std::string regex;                    // exact_match with extract=regex: group 1 if any, else the match
  std::string score = "sum";            // multiple_choice: sum | mean (per-token mean log-likelihood)
  std::optional<int64_t> limit;         // first N examples only
  // This task's in-context examples, instead of generation.shots / generation.shots_file.
  std::optional<int64_t> shots;
  std::optional<std::string> shots_file;
};

struct EvalConfig : DecodingConfig {
  std::vector<TaskConfig> tasks;
  std::string output_dir = "eval";
};

// `serve`'s own settings (the `serve:` section); the models, fusion, sampling and generation keys are
// generate's, and a generate config's input/output/trace are accepted and unused.
struct ServeSettings {
  std::string host = "127.0.0.1";
  int64_t port = 8000;          // 0: any free port (logged)
  std::string model_name;       // the name clients pass as "model"; default: the model's path as configured (as vLLM)
  int64_t max_batch = 16;       // requests decoded together
  int64_t max_queue = 64;       // requests waiting for a batch slot; beyond it: 429
  int64_t prefill_tokens = 512; // prompt tokens prefilled per step and model while the batch decodes; 0: whole
  int64_t max_context = 0;      // prompt + completion tokens; 0: the model's max_position_embeddings
  int64_t threads = 0;          // requests handled at once; 0: max_batch + max_queue + 8
  int64_t max_body_bytes = 16ll << 20;  // a request body past it: 413
  double request_timeout = 5.0;         // seconds for a request's head and body to arrive: 408 past it
  int64_t max_connections = 1024;       // open connections; past it the longest-waiting idle or slow one is closed
};

struct ServeConfig : DecodingConfig {
  ServeSettings serve;
  std::optional<std::string> input, output, trace;  // generate's keys: accepted, unused
};

// Read `path`, apply `key.path=value` overrides, validate every key; InputError names key path and line.
GenerateConfig load_generate_config(const std::string& path, const std::vector<std::string>& overrides = {});
EvalConfig load_eval_config(const std::string& path, const std::vector<std::string>& overrides = {});
ServeConfig load_serve_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The resolved config as YAML (--print-config).
std::string generate_config_to_yaml(const GenerateConfig& config);
std::string eval_config_to_yaml(const EvalConfig& config);
std::string serve_config_to_yaml(const ServeConfig& config);

}  // namespace lf
