#include "decode/continuous.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "model/kv_cache_rows.h"

namespace lf {

ContinuousBatch::ContinuousBatch(ModelSet& set) : set_(set), caches_(set.run().size()) {}

int64_t ContinuousBatch::columns() const { return caches_.empty() ? 0 : caches_[0].length; }

std::vector<at::Tensor> ContinuousBatch::forward(std::vector<KVCache>& caches, const at::Tensor& ids,
                                                 const at::Tensor& mask, const at::Tensor& positions) {
  c10::InferenceMode inference;
  auto models = set_.run();
  std::vector<at::Tensor> logits;
  for (size_t i = 0; i < models.size(); ++i) {
    ForwardOptions options;
    options.positions = positions;
    if (mask.defined()) options.token_mask = mask;
    options.cache = &caches[i];
    CausalLM& model = *models[i]->model;
    // Only the last position's logits are needed: the LM head runs on one row per sequence.
    at::Tensor h = model.hidden_states(ids.to(models[i]->device), options);
    logits.push_back(model.logits(h.select(1, -1)));
  }
  return logits;
}

std::vector<at::Tensor> ContinuousBatch::admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id) {
  const int64_t n = static_cast<int64_t>(prompts.size());
  if (n == 0) return {};
  int64_t longest = 0;
  for (const auto& p : prompts) {
    if (p.empty()) throw InputError("a prompt has no tokens");
    longest = std::max<int64_t>(longest, p.size());
  }
  // Left padding, as generate's batches: every joiner's last token in the last column.
  at::Tensor ids = at::full({n, longest}, pad_id, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::zeros({n, longest}, at::TensorOptions().dtype(at::kBool));
  for (int64_t r = 0; r < n; ++r) {
    const auto& p = prompts[r];
    const int64_t pad = longest - static_cast<int64_t>(p.size());
    ids[r].narrow(0, pad, p.size()).copy_(at::tensor(p, at::TensorOptions().dtype(at::kLong)));
    mask[r].narrow(0, pad, p.size()).fill_(true);
  }
  const at::Tensor positions = (mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  std::vector<KVCache> joined(caches_.size());
  std::vector<at::Tensor> logits = forward(joined, ids, mask, positions);
  for (size_t i = 0; i < caches_.size(); ++i) append_cache_rows(caches_[i], joined[i]);
  const at::Tensor next = mask.to(at::kLong).sum(1);
  next_position_ = rows_ == 0 ? next : at::cat({next_position_, next});
  rows_ += n;
  return logits;
}

std::vector<at::Tensor> ContinuousBatch::step(const std::vector<int64_t>& tokens) {
  if (static_cast<int64_t>(tokens.size()) != rows_) throw std::logic_error("ContinuousBatch::step: one token per row");
  const at::Tensor column = at::tensor(tokens, at::TensorOptions().dtype(at::kLong)).view({-1, 1});
  const at::Tensor position = next_position_.view({-1, 1});
  next_position_ = next_position_ + 1;
  return forward(caches_, column, at::Tensor(), position);
}

void ContinuousBatch::keep(const std::vector<int64_t>& keep) {
  for (auto& cache : caches_) keep_cache_rows(cache, keep);
  rows_ = static_cast<int64_t>(keep.size());
  if (rows_ == 0) {
    next_position_ = at::Tensor();
    return;
  }
  next_position_ = next_position_.index_select(0, at::tensor(keep, at::TensorOptions().dtype(at::kLong)));
}

}  // namespace lf
