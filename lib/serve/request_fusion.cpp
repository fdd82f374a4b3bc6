#include "serve/request_fusion.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

namespace lf::serve {

namespace {

constexpr int64_t kScoreChunk = 128;  // positions whose logits are held at once

}  // namespace

std::string RequestFusion::key() const {
  std::string key = fmt::format("{}|{:.17g}|{}|", spec.strategy, spec.static_alpha, spec.multi_expert);
  for (size_t e : experts) key += std::to_string(e) + ",";
  return key;
}

RequestFusion default_fusion(const ModelSet& set) {
  RequestFusion f;
  f.spec = set.fusion;
  for (size_t i = 0; i < set.experts.size(); ++i) f.experts.push_back(i);
  return f;
}

FusionView fusion_view(const ModelSet& set, const RequestFusion& fusion) {
  FusionView view{set, {}};
  view.set.fusion = fusion.spec;
  const std::string& s = fusion.spec.strategy;
  // Indices in set.run(): large, base, experts (those loaded).
  const size_t first_expert = (set.large ? 1 : 0) + (set.base ? 1 : 0);
  if (s == "large_only") {
    view.inputs = {0};
    view.set.base.reset();
    view.set.experts.clear();
    return view;
  }
  view.set.experts.clear();
  if (s == "expert_only") {
    view.set.large.reset();
    view.set.base.reset();
  } else {
    view.inputs = {0, 1};
  }
  for (size_t e : fusion.experts) {
    view.set.experts.push_back(set.experts.at(e));
    view.inputs.push_back(first_expert + e);
  }
  return view;
}

FusedRows fuse_view(const FusionView& view, const std::vector<at::Tensor>& logits, at::Tensor* route) {
  std::vector<at::Tensor> inputs;
  for (size_t i : view.inputs) inputs.push_back(logits.at(i));
  return fuse_rows(view.set, inputs, route);
}

PromptScorer::PromptScorer(ModelSet& set, const RequestFusion& fusion, std::vector<int64_t> ids, int64_t k)
    : view_(fusion_view(set, fusion)),
      models_(set.run()),
      caches_(models_.size()),
      k_(k),
      ids_(at::tensor(ids, at::TensorOptions().dtype(at::kLong))) {
  out_.ids = std::move(ids);
}

void PromptScorer::advance(int64_t budget) {
  c10::InferenceMode inference;
  const int64_t T = static_cast<int64_t>(out_.ids.size());
  const int64_t n = std::min(std::max<int64_t>(budget, 1), T - next_);
  if (n <= 0) return;
  const at::Tensor piece = ids_.narrow(0, next_, n).unsqueeze(0);
  std::vector<at::Tensor> hidden(models_.size());
  for (size_t i : view_.inputs) {
    ForwardOptions options;
    options.cache = &caches_[i];
    hidden[i] = models_[i]->model->hidden_states(piece.to(models_[i]->device), options).squeeze(0);
  }
  // Position p predicts token p + 1; the prompt's last position predicts nothing of it.
  const int64_t scored = std::min(n, T - 1 - next_);
  for (int64_t begin = 0; begin < scored; begin += kScoreChunk) {
    const int64_t m = std::min(kScoreChunk, scored - begin);
    std::vector<at::Tensor> logits(models_.size());
    for (size_t i : view_.inputs) logits[i] = models_[i]->model->logits(hidden[i].narrow(0, begin, m));
    const at::Tensor lp = at::log_softmax(fuse_view(view_, logits).logits.to(at::kFloat), -1).to(at::kCPU);
    const at::Tensor actual = lp.gather(1, ids_.narrow(0, next_ + begin + 1, m).unsqueeze(1));  // [m, 1]
    token_lp_.push_back(actual.squeeze(1));
    rank_.push_back((lp > actual).sum(1) + 1);
    if (k_ > 0) {
      auto [values, indices] = lp.topk(std::min<int64_t>(k_, lp.size(1)), 1);
      top_lp_.push_back(values);
      top_ids_.push_back(indices);
    }
  }
  next_ += n;
  if (done()) caches_.clear();  // the result is all that is kept
}

PromptLogprobs PromptScorer::result() {
  if (!token_lp_.empty()) {
    out_.token_logprob = at::cat(token_lp_);
    out_.token_rank = at::cat(rank_);
    if (k_ > 0) {
      out_.top_ids = at::cat(top_ids_);
      out_.top_logprobs = at::cat(top_lp_);
    }
  }
  return std::move(out_);
}

}  // namespace lf::serve
