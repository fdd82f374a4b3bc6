#include "decode/model_set.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/hash.h"
#include "kernels/dlf.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/model_config.h"

namespace lf {

std::vector<DecodingModel*> ModelSet::run() {
  std::vector<DecodingModel*> out;
  if (large) out.push_back(&*large);
  if (base) out.push_back(&*base);
  for (auto& e : experts) out.push_back(&e);
  return out;
}

namespace {

// Why two tokenizers are not the same vocabulary, or "" when they are.
std::string vocabulary_difference(const Tokenizer& a, const Tokenizer& b) {
  if (a.vocab_size() != b.vocab_size())
    return "vocabulary sizes " + std::to_string(a.vocab_size()) + " and " + std::to_string(b.vocab_size());
  const SpecialTokens &sa = a.special_tokens(), &sb = b.special_tokens();
  if (sa.eos != sb.eos || sa.bos != sb.bos) return "different BOS/EOS tokens";
  // Identical files are identical vocabularies; otherwise compare token by token.
  namespace fs = std::filesystem;
  if (fs::is_regular_file(a.source()) && fs::is_regular_file(b.source()) && hash_file(a.source()) == hash_file(b.source()))
    return "";
  for (int64_t id = 0; id < a.vocab_size(); ++id)
    if (a.id_to_token(id) != b.id_to_token(id))
      return "token " + std::to_string(id) + " is '" + a.id_to_token(id) + "' vs '" + b.id_to_token(id) + "'";
  return "";
}

// Models already loaded by (path, dtype, device), without adapters: a second spec of the same model
// reuses it, and one with an adapter shares its weights (CausalLM::share_weights), so experts that
// are adapters over one base hold the base once.
using LoadedModels = std::map<std::string, std::shared_ptr<CausalLM>>;

DecodingModel load_one(const ModelSpec& spec, bool packed_head, LoadedModels& loaded) {
  DecodingModel m;
  m.name = spec.name;
  m.path = spec.path;
  const std::string key = spec.path + "\n" + spec.dtype + "\n" + spec.device;
  auto& plain = loaded[key];
  if (!plain) {
    plain = load_model(spec.path, {spec.dtype, spec.device});
    plain->eval();
    if (const int64_t bytes = packed_head ? plain->pack_head_for_decoding() : 0)
      spdlog::info("{}: LM head packed for CPU decoding (+{:.1f} MB)", spec.path, bytes / 1e6);
  }
  m.model = plain;
  if (!spec.adapter.empty()) {
    m.model = plain->share_weights();
    apply_lora_adapter(*m.model, spec.adapter);
    spdlog::info("{}: adapter {} over {} (its weights shared, not copied)", spec.name, spec.adapter, spec.path);
  }
  m.device = parse_device(spec.device);
  return m;
}

int64_t model_vocab_size(const std::string& dir) { return load_model_config(dir).vocab_size; }

}  // namespace

int64_t shared_vocabulary(const std::vector<const Tokenizer*>& tokenizers, const std::vector<std::string>& names,
                          const std::vector<int64_t>& model_vocab_sizes) {
  for (size_t i = 1; i < tokenizers.size(); ++i) {
    const std::string why = vocabulary_difference(*tokenizers[0], *tokenizers[i]);
    if (!why.empty())
      throw InputError("models '" + names[0] + "' and '" + names[i] + "' do not share a vocabulary (" + why + ")",
                       "Dynamic Logit Fusion needs identical tokenizers");
  }
  int64_t vocab = tokenizers.empty() ? model_vocab_sizes.at(0) : tokenizers[0]->vocab_size();
  for (int64_t v : model_vocab_sizes) vocab = std::min(vocab, v);
  return vocab;
}

ModelSet load_model_set(const DecodingConfig& config) {
  std::vector<ModelSpec> all;  // every configured model, for the vocabulary check
  ModelSet set;
  if (config.model) {
    all.push_back(*config.model);
    set.fusion.strategy = "large_only";
  } else {
    const ModelsConfig& m = *config.models;
    all.push_back(m.large);
    if (m.base) all.push_back(*m.base);
    all.insert(all.end(), m.experts.begin(), m.experts.end());
    set.fusion.strategy = config.fusion.strategy;
    set.fusion.static_alpha = config.fusion.static_alpha;
    set.fusion.multi_expert = config.fusion.multi_expert;
    set.fusion.grid = kernels::alpha_grid(config.fusion.alpha.min, config.fusion.alpha.max, config.fusion.alpha.step);
  }
  std::vector<std::unique_ptr<Tokenizer>> tokenizers;
  std::vector<const Tokenizer*> views;
  std::vector<std::string> names;
  std::vector<int64_t> sizes;
  for (const auto& spec : all) {
    tokenizers.push_back(load_tokenizer(spec.path));
    views.push_back(tokenizers.back().get());
    names.push_back(spec.name);
    sizes.push_back(model_vocab_size(spec.path));
  }
  set.vocab = shared_vocabulary(views, names, sizes);
  set.tokenizer = std::move(tokenizers[0]);
  set.model_dir = all[0].path;

  const std::string& s = set.fusion.strategy;
  const bool pack = config.generation.packed_head;
  LoadedModels loaded;
  if (config.model) {
    set.large = load_one(*config.model, pack, loaded);
  } else if (s == "large_only") {
    set.large = load_one(config.models->large, pack, loaded);
  } else if (s == "expert_only") {
    const auto& experts = config.models->experts;
    auto it = std::find_if(experts.begin(), experts.end(), [&](const ModelSpec& e) {
      return config.fusion.expert.empty() || e.name == config.fusion.expert;
    });
    set.experts.push_back(load_one(*it, pack, loaded));
  } else {
    set.large = load_one(config.models->large, pack, loaded);
    set.base = load_one(*config.models->base, pack, loaded);
    for (const auto& e : config.models->experts) set.experts.push_back(load_one(e, pack, loaded));
  }
  set.device = set.run().front()->device;
  spdlog::info("decoding with {} model(s), strategy {}, shared vocabulary {}", set.run().size(), s, set.vocab);
  return set;
}

ModelSet make_model_set(std::vector<DecodingModel> models, const FusionSpec& fusion, int64_t vocab) {
  ModelSet set;
  set.fusion = fusion;
  set.vocab = vocab;
  size_t i = 0;
  if (fusion.strategy != "expert_only") set.large = models.at(i++);
  if (fusion.strategy == "dynamic" || fusion.strategy == "static") set.base = models.at(i++);
  for (; i < models.size(); ++i) set.experts.push_back(models[i]);
  set.device = set.run().front()->device;
  return set;
}

FusedRows fuse_rows(const ModelSet& set, const std::vector<at::Tensor>& logits, at::Tensor* route) {
  // Float32 statistics whatever the model dtype (double stays double, for the reference tests).
  auto prepare = [&](const at::Tensor& z) {
    at::Tensor out = z.narrow(-1, 0, set.vocab).to(set.device);
    return out.scalar_type() == at::kDouble ? out : out.to(at::kFloat);
  };
  const std::string& s = set.fusion.strategy;
  FusedRows out;
  if (s == "large_only" || s == "expert_only") {
    out.logits = prepare(logits.at(0));
    return out;
  }
  const at::Tensor zl = prepare(logits.at(0)), zs = prepare(logits.at(1));
  std::vector<at::Tensor> experts;
  for (size_t i = 2; i < logits.size(); ++i) experts.push_back(prepare(logits[i]));
  const int64_t rows = zl.size(0);
  if (s == "static") {
    at::Tensor fused = zl.clone();
    for (const auto& z : experts) fused.add_(z - zs, set.fusion.static_alpha);
    out.logits = fused;
    out.expert = at::full({rows}, -1, at::TensorOptions().dtype(at::kLong));
    out.alpha = at::full({rows}, set.fusion.static_alpha, at::TensorOptions().dtype(at::kDouble));
    return out;
  }
  // Another multi-expert criterion chooses anew and fuses once, after the solve.
  const bool rechoose = experts.size() > 1 && set.fusion.multi_expert != "sum";
  kernels::DlfOptions options;
  options.fused = !rechoose;
  kernels::DlfSolve solve = kernels::dlf_solve(zl, zs, experts, set.fusion.grid, options);
  if (rechoose)
    kernels::apply_multi_expert_criterion(solve, set.fusion.multi_expert, zl, zs, experts, set.fusion.grid, route);
  out.logits = solve.fused;
  out.expert = solve.expert;
  out.alpha = solve.alpha;
  out.objective = solve.objective;
  return out;
}

}  // namespace lf
