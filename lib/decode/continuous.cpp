#include "decode/continuous.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "core/error.h"
#include "model/kv_cache_rows.h"

namespace lf {

namespace {

at::Tensor long_tensor(const std::vector<int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

// slot[r] for `rows` rows of which `members` (ascending) run a model.
std::vector<int64_t> slots(int64_t rows, const std::vector<int64_t>& members) {
  std::vector<int64_t> slot(rows, -1);
  for (size_t k = 0; k < members.size(); ++k) slot[members[k]] = static_cast<int64_t>(k);
  return slot;
}

}  // namespace

at::Tensor BatchLogits::of(size_t model, const std::vector<int64_t>& rows) const {
  std::vector<int64_t> index;
  index.reserve(rows.size());
  for (int64_t r : rows) {
    const int64_t s = slot.at(model).at(r);
    if (s < 0) throw std::logic_error("BatchLogits::of: a row that does not run this model");
    index.push_back(s);
  }
  const at::Tensor& l = logits.at(model);
  if (static_cast<int64_t>(index.size()) == l.size(0)) {
    bool identity = true;
    for (size_t k = 0; k < index.size() && identity; ++k) identity = index[k] == static_cast<int64_t>(k);
    if (identity) return l;
  }
  return l.index_select(0, long_tensor(index).to(l.device()));
}

at::Tensor BatchLogits::of_or(size_t model, const std::vector<int64_t>& rows, size_t fallback) const {
  std::vector<int64_t> own;  // positions in `rows` of the rows that run `model`
  for (size_t k = 0; k < rows.size(); ++k)
    if (slot.at(model).at(rows[k]) >= 0) own.push_back(static_cast<int64_t>(k));
  if (own.size() == rows.size()) return of(model, rows);
  const int64_t vocab = std::min(logits.at(fallback).size(1),
                                 logits.at(model).defined() ? logits.at(model).size(1) : logits.at(fallback).size(1));
  at::Tensor out = of(fallback, rows).narrow(1, 0, vocab).clone();
  if (!own.empty()) {
    std::vector<int64_t> own_rows;
    for (int64_t k : own) own_rows.push_back(rows[k]);
    out.index_copy_(0, long_tensor(own).to(out.device()), of(model, own_rows).narrow(1, 0, vocab).to(out.scalar_type()));
  }
  return out;
}

ContinuousBatch::ContinuousBatch(ModelSet& set)
    : set_(set), models_(set.run()), caches_(models_.size()), members_(models_.size()), tokens_run_(models_.size(), 0) {}

int64_t ContinuousBatch::columns() const {
  int64_t longest = 0;
  for (const auto& cache : caches_) longest = std::max(longest, cache.length);
  return longest;
}

at::Tensor ContinuousBatch::forward(size_t model, KVCache& cache, const at::Tensor& ids, const at::Tensor& mask,
                                    const at::Tensor& positions, bool decoding) {
  c10::InferenceMode inference;
  ForwardOptions options;
  options.positions = positions;
  if (mask.defined()) options.token_mask = mask;
  options.cache = &cache;
  CausalLM& m = *models_[model]->model;
  tokens_run_[model] += ids.numel();
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  at::Tensor h = m.hidden_states(ids.to(models_[model]->device), options);
  const auto layers_done = Clock::now();
  // Only the last position's logits are needed: the LM head runs on one row per sequence.
  at::Tensor logits = m.logits(h.select(1, -1));
  const auto end = Clock::now();
  if (decoding) {
    seconds_.layers += std::chrono::duration<double>(layers_done - start).count();
    seconds_.head += std::chrono::duration<double>(end - layers_done).count();
  } else {
    seconds_.prefill += std::chrono::duration<double>(end - start).count();
  }
  return logits;
}

void ContinuousBatch::begin_admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id,
                                  const std::vector<std::vector<size_t>>& uses) {
  if (admitting()) throw std::logic_error("ContinuousBatch::begin_admit: a group is already joining");
  const int64_t n = static_cast<int64_t>(prompts.size());
  if (n == 0) return;
  if (!uses.empty() && static_cast<int64_t>(uses.size()) != n)
    throw std::logic_error("ContinuousBatch::begin_admit: one model list per prompt");
  for (const auto& p : prompts)
    if (p.empty()) throw InputError("a prompt has no tokens");
  std::vector<Joining> joining(models_.size());
  for (int64_t r = 0; r < n; ++r) {
    if (uses.empty()) {
      for (auto& j : joining) j.prompts.push_back(r);
      continue;
    }
    if (uses[r].empty()) throw std::logic_error("ContinuousBatch::begin_admit: a prompt runs no model");
    for (size_t i : uses[r]) joining.at(i).prompts.push_back(r);
  }
  // Left padding, as generate's batches: every joiner's last token in the last column.
  for (auto& j : joining) {
    if (j.prompts.empty()) continue;
    int64_t longest = 0;
    for (int64_t r : j.prompts) longest = std::max<int64_t>(longest, prompts[r].size());
    const int64_t k = static_cast<int64_t>(j.prompts.size());
    j.ids = at::full({k, longest}, pad_id, at::TensorOptions().dtype(at::kLong));
    j.mask = at::zeros({k, longest}, at::TensorOptions().dtype(at::kBool));
    for (int64_t row = 0; row < k; ++row) {
      const auto& p = prompts[j.prompts[row]];
      const int64_t pad = longest - static_cast<int64_t>(p.size());
      j.ids[row].narrow(0, pad, p.size()).copy_(long_tensor(p));
      j.mask[row].narrow(0, pad, p.size()).fill_(true);
    }
    j.positions = (j.mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  }
  std::vector<int64_t> next;
  for (const auto& p : prompts) next.push_back(static_cast<int64_t>(p.size()));
  joining_ = std::move(joining);
  joining_next_ = long_tensor(next);
  joining_rows_ = n;
}

void ContinuousBatch::abort_admit() {
  joining_.clear();
  joining_next_ = at::Tensor();
  joining_rows_ = 0;
}

std::optional<BatchLogits> ContinuousBatch::prefill(int64_t token_budget) {
  if (!admitting()) throw std::logic_error("ContinuousBatch::prefill: no group is joining");
  bool complete = true;
  for (size_t i = 0; i < joining_.size(); ++i) {
    Joining& j = joining_[i];
    if (j.prompts.empty()) continue;
    const int64_t longest = j.ids.size(1), left = longest - j.done;
    if (left > 0) {
      const int64_t k = j.ids.size(0);
      const int64_t columns = token_budget > 0 ? std::clamp<int64_t>(token_budget / k, 1, left) : left;
      at::Tensor out = forward(i, j.cache, j.ids.narrow(1, j.done, columns), j.mask.narrow(1, j.done, columns),
                               j.positions.narrow(1, j.done, columns), /*decoding=*/false);
      j.done += columns;
      if (j.done == longest) j.last = out;
    }
    complete = complete && j.done == longest;
  }
  if (!complete) return std::nullopt;

  BatchLogits result;
  result.rows = joining_rows_;
  result.logits.resize(models_.size());
  result.slot.resize(models_.size());
  for (size_t i = 0; i < joining_.size(); ++i) {
    Joining& j = joining_[i];
    result.slot[i] = slots(joining_rows_, j.prompts);
    if (j.prompts.empty()) continue;
    result.logits[i] = j.last;
    append_cache_rows(caches_[i], j.cache);
    for (int64_t r : j.prompts) members_[i].push_back(rows_ + r);
  }
  next_position_ = rows_ == 0 ? joining_next_ : at::cat({next_position_, joining_next_});
  rows_ += joining_rows_;
  abort_admit();
  return result;
}

std::vector<at::Tensor> ContinuousBatch::admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id) {
  if (prompts.empty()) return {};
  begin_admit(prompts, pad_id);
  std::optional<BatchLogits> joined;
  try {
    joined = prefill(0);
  } catch (...) {
    abort_admit();
    throw;
  }
  return joined->logits;
}

BatchLogits ContinuousBatch::step(const std::vector<int64_t>& tokens) {
  if (static_cast<int64_t>(tokens.size()) != rows_) throw std::logic_error("ContinuousBatch::step: one token per row");
  const at::Tensor column = long_tensor(tokens).view({-1, 1});
  const at::Tensor position = next_position_.view({-1, 1});
  next_position_ = next_position_ + 1;
  BatchLogits result;
  result.rows = rows_;
  result.logits.resize(models_.size());
  result.slot.resize(models_.size());
  for (size_t i = 0; i < models_.size(); ++i) {
    const auto& members = members_[i];
    result.slot[i] = slots(rows_, members);
    if (members.empty()) continue;
    if (static_cast<int64_t>(members.size()) == rows_) {
      result.logits[i] = forward(i, caches_[i], column, at::Tensor(), position, /*decoding=*/true);
    } else {
      const at::Tensor index = long_tensor(members);
      result.logits[i] =
          forward(i, caches_[i], column.index_select(0, index), at::Tensor(), position.index_select(0, index),
                  /*decoding=*/true);
    }
  }
  return result;
}

void ContinuousBatch::leave(size_t model, const std::vector<int64_t>& rows) {
  std::vector<int64_t>& members = members_.at(model);
  std::vector<int64_t> local, kept;
  for (size_t s = 0; s < members.size(); ++s) {
    if (std::find(rows.begin(), rows.end(), members[s]) != rows.end()) continue;
    local.push_back(static_cast<int64_t>(s));
    kept.push_back(members[s]);
  }
  if (kept.size() == members.size()) return;
  keep_cache_rows(caches_[model], local);
  members = std::move(kept);
}

void ContinuousBatch::keep(const std::vector<int64_t>& keep) {
  for (size_t i = 0; i < models_.size(); ++i) {
    const std::vector<int64_t> slot = slots(rows_, members_[i]);
    std::vector<int64_t> local, members;
    for (size_t k = 0; k < keep.size(); ++k) {
      const int64_t s = slot.at(keep[k]);
      if (s < 0) continue;
      local.push_back(s);
      members.push_back(static_cast<int64_t>(k));
    }
    if (local.size() != members_[i].size() || !std::is_sorted(local.begin(), local.end()) ||
        (!local.empty() && local.back() != static_cast<int64_t>(local.size()) - 1))
      keep_cache_rows(caches_[i], local);
    members_[i] = std::move(members);
  }
  rows_ = static_cast<int64_t>(keep.size());
  if (rows_ == 0) {
    next_position_ = at::Tensor();
    return;
  }
  next_position_ = next_position_.index_select(0, long_tensor(keep));
}

}  // namespace lf
