// The models one decoding run uses (a plain model, or large/base/experts with a fusion strategy),
// their shared vocabulary, and how their logits become one next-token distribution (method.md §4).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "decode/config.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace lf {

struct DecodingModel {
  std::string name, path;
  std::shared_ptr<CausalLM> model;
  c10::Device device = c10::Device(c10::kCPU);
};

struct FusionSpec {
  std::string strategy = "large_only";  // dynamic | static | large_only | expert_only
  std::vector<double> grid;             // dynamic: the α values searched
  double static_alpha = 1.0;
  std::string multi_expert = "sum";     // dynamic with several experts: sum | active | closest
};

// Only the models the strategy needs are loaded: large_only runs the large model (or the plain model),
// expert_only one expert, dynamic and static all of them. run() lists them in the order fuse_rows
// expects their logits: large, base, experts.
struct ModelSet {
  std::optional<DecodingModel> large, base;
  std::vector<DecodingModel> experts;
  FusionSpec fusion;
  int64_t vocab = 0;  // shared vocabulary: logit columns kept (padding rows beyond it are dropped)
  std::shared_ptr<Tokenizer> tokenizer;
  std::string model_dir;  // the directory chat_template=auto reads (the large or plain model)
  c10::Device device = c10::Device(c10::kCPU);  // where fused logits live (the first model's device)

  std::vector<DecodingModel*> run();
};

// Loads the models and checks the shared vocabulary: every configured model (loaded or not) must
// have an identical tokenizer (same size, same token strings, same special tokens); otherwise an
// InputError names the two models that differ.
ModelSet load_model_set(const DecodingConfig& config);

// A set from models already in memory (tests): roles as in run() order; tokenizer may be null.
ModelSet make_model_set(std::vector<DecodingModel> models, const FusionSpec& fusion, int64_t vocab);

// The vocabulary size shared by identical tokenizers and models: min(tokenizer size, every model's
// vocab_size). Exposed for tests; `names` label the tokenizers in the error message.
int64_t shared_vocabulary(const std::vector<const Tokenizer*>& tokenizers, const std::vector<std::string>& names,
                          const std::vector<int64_t>& model_vocab_sizes);

// One next-token distribution per row: logits [N, V] in float32 (double if the inputs are double) on
// set.device, and for fused strategies the active expert, α and J of each row (undefined otherwise;
// static has α but no J; expert index -1 means "every expert").
struct FusedRows {
  at::Tensor logits;
  at::Tensor expert, alpha, objective;
};

// `logits[i]` are rows [N, V_i] of run()[i], in that order; columns beyond set.vocab are dropped.
// `route`: the rows' state for fusion.multi_expert route (each row's expert, chosen at its first
// step: pass an undefined tensor then, and the same one on every later step of those rows).
FusedRows fuse_rows(const ModelSet& set, const std::vector<at::Tensor>& logits, at::Tensor* route = nullptr);

}  // namespace lf
