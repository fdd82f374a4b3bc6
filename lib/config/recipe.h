// The training recipe (interface.md "Recipe"): plain structs with the documented defaults.
// Loaded and validated once at start-up by load_recipe(); nothing else reads YAML.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace lf {

struct RunConfig {
  std::string name = "run";
  std::string output_dir = "runs/run";
  int64_t seed = 1234;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N (the student's device)
  // Memory per rank that the memory plan must fit, GB (1e9 bytes); default: the device's (a GPU's
  // total memory, or the host's RAM divided by the ranks on the node).
  std::optional<double> memory_gb;
};

// student.lora: train LoRA adapters (model/lora.h) instead of the student's weights. The base stays
// frozen in student.dtype; adapters and their optimizer state are float32.
struct LoraRecipe {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.05;
  // PEFT's module names: an entry matches a module whose name is it or ends with "." + it;
  // "all-linear": every linear layer but the LM head. Default: attention and MLP (Phi-3's fused
  // qkv_proj and gate_up_proj included).
  std::vector<std::string> target_modules = {"q_proj",  "k_proj",  "v_proj",   "o_proj",      "gate_proj",
                                             "up_proj", "down_proj", "qkv_proj", "gate_up_proj"};
  bool use_rslora = false;       // scale α/√r instead of α/r
  std::string init = "kaiming";  // kaiming (PEFT's default) | gaussian; B starts at zero either way
};

struct StudentConfig {
  std::string path;
  // A PEFT LoRA adapter over `path`: training continues it (student.lora, when unset, is read from
  // its adapter_config.json).
  std::optional<std::string> adapter;
  std::optional<LoraRecipe> lora;
  std::string dtype = "bf16";  // dtype of the final model written to final/; with lora, of the frozen base
  std::string chat_template = "auto";
  nlohmann::json chat_template_kwargs = nlohmann::json::object();  // variables of its Jinja template
  std::optional<std::string> tokenizer;  // default: the model directory
};

// A teacher served over HTTP (serve's /v1/completions with vLLM's prompt_logprobs: logitfuse serve,
// vLLM): cache-logits (with logits_cache) or train (without) reads its top-k logprobs instead of
// running it (docs/serving.md).
struct TeacherServerConfig {
  std::string url;          // http://host:port
  std::string model;        // the served model's name
  int64_t top_k = 0;        // logprobs asked per position; 0: the cache's k
  double timeout_s = 300;   // per request
  int64_t retries = 4;      // after the first attempt, backing off from 0.5 s
  int64_t concurrency = 4;  // requests in flight
};

struct TeacherConfig {
  std::string name;
  std::string path;
  std::optional<std::string> adapter;  // a PEFT LoRA adapter applied over `path` (not merged)
  std::string dtype = "bf16";
  std::string chat_template = "auto";
  nlohmann::json chat_template_kwargs = nlohmann::json::object();
  double weight = 1.0;
  std::optional<std::string> logits_cache;
  std::string device = "auto";  // auto = the student's device
  std::optional<std::string> tokenizer;
  // replicate (whole on every rank) | shard (1/N per rank, gathered layer by layer, ZeRO-3 style) |
  // cache (logits_cache) | server (teachers.N.server queried at every step) | auto: cache with a
  // logits_cache, else server with a server, else replicate unless only shard fits.
  std::string placement = "auto";
  // Remote: `path` still gives the teacher's config.json and tokenizer (no weights are read).
  std::optional<TeacherServerConfig> server;
};

struct DataConfig {
  std::string train;
  std::optional<std::string> eval;
  int64_t max_length = 2048;
  int64_t max_prompt_length = 1024;  // unset: min(1024, max_length / 2)
  bool skip_invalid = false;
};

struct TokenLossConfig {
  std::string type = "uld";  // uld | kl | rkl | jsd | none
  std::optional<int64_t> top_k;
  double temperature = 1.0;
  double beta = 0.5;
};

struct GraphLossConfig {
  std::string type = "gld";  // gld | none
  double weight = 1.0;
  int64_t top_k = 10;
  double temperature = 1.0;
  std::string nodes = "rank";        // rank | vocab
  std::string feature = "strength";  // strength | self | norm
  bool normalize_features = true;
  int64_t p = 1;
  std::string solver = "sorted";  // sorted | entropic
  double epsilon = 0.005;
};

// On-policy distillation (an extension of method.md §1, as in GKD / MiniLLM): a share of the
// distillation terms is taken on the student's own greedy completions of the batch's prompts, where
// the teachers say what should follow what the student actually wrote.
struct OnPolicyConfig {
  double weight = 0.0;           // ρ: that share (0 = off); the SFT term stays on the data's responses
  int64_t max_new_tokens = 128;  // length of each completion
};

struct LossConfig {
  double distill_weight = 0.5;
  std::string teacher_mix = "uniform";  // uniform | weights | min_ce
  TokenLossConfig token;
  GraphLossConfig graph;
  OnPolicyConfig on_policy;
};

struct AlignmentConfig {
  std::string positions = "offsets";  // offsets | exact | dtw | index
  std::string vocab = "exact";        // exact | mined
  std::optional<std::string> cache_dir;  // vocabulary-map cache; default $LOGITFUSE_HOME/vocab-maps
};

struct TrainConfig {
  int64_t epochs = 1;
  std::optional<int64_t> max_steps;
  int64_t micro_batch_size = 1;
  int64_t grad_accum = 1;
  double lr = 1.0e-5;
  double weight_decay = 0.0;
  std::string schedule = "cosine";  // constant | linear | cosine
  double warmup_ratio = 0.0;
  double clip_grad = 1.0;
  std::string precision = "bf16";  // fp32 | bf16
  bool activation_checkpointing = false;
  int64_t logit_chunk_size = 1024;  // logit rows alive at once (memory grows with this, not with T×V)
  int64_t eval_every_steps = 0;     // 0: evaluate at the end only
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  bool skip_nonfinite = false;  // skip a step with a non-finite loss or gradient instead of stopping
};

struct CheckpointConfig {
  int64_t every_steps = 0;
  int64_t keep_last = 2;
};

struct LogConfig {
  int64_t every_steps = 10;
  bool tensorboard = false;  // also write OUTPUT_DIR/tensorboard/events.out.tfevents.* (every metric)
};

struct DistConfig {
  std::string backend = "auto";  // auto | nccl | cpu (auto: nccl when the student is on CUDA)
  int64_t zero = 0;              // 0 none, 1 AdamW state sharded, 2 also gradients, 3 also parameters (ZeRO-3)
  double bucket_mb = 25.0;       // gradient all-reduce / reduce-scatter bucket, MiB of float32
  double timeout_s = 600.0;      // a collective that waits longer ends the job (NCCL's watchdog)
  bool overlap = true;           // start bucket reductions during the last backward pass (zero 0/1)
};

struct Recipe {
  RunConfig run;
  StudentConfig student;
  std::vector<TeacherConfig> teachers;
  DataConfig data;
  LossConfig loss;
  AlignmentConfig alignment;
  TrainConfig train;
  CheckpointConfig checkpoint;
  LogConfig log;
  DistConfig dist;
  std::map<std::string, ChatTemplate> chat_templates;  // custom templates, referenced by name
};

// Reads `path`, applies `key.path=value` overrides, validates every key (unknown keys, wrong types,
// out-of-range values, cross-key rules) and throws InputError naming the key path and YAML line.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// Whether the run distils: it has teachers and λ > 0. Without, the loss's token, graph and on-policy
// terms and the alignment are not used (a sweep that switches the teachers off keeps their keys), and
// the cross-key rules about them do not apply.
bool distils(const Recipe& recipe);
// Whether the run trains LoRA adapters (student.lora or student.adapter set).
bool trains_adapters(const Recipe& recipe);

// loss.on_policy.weight where the run distils, else 0: no completions are generated for nothing.
double effective_on_policy_weight(const Recipe& recipe);

// The resolved recipe as YAML (for --print-config and recipe.resolved.yaml); loads back unchanged.
std::string recipe_to_yaml(const Recipe& recipe);

}  // namespace lf
