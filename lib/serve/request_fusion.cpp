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

PromptLogprobs prompt_logprobs(ModelSet& set, const RequestFusion& fusion, const std::vector<int64_t>& ids, int64_t k) {
  c10::InferenceMode inference;
  const FusionView view = fusion_view(set, fusion);
  auto models = set.run();
  const at::Tensor input = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  std::vector<at::Tensor> hidden(models.size());
  for (size_t i : view.inputs) hidden[i] = models[i]->model->hidden_states(input.to(models[i]->device), {}).squeeze(0);
  const int64_t T = static_cast<int64_t>(ids.size());
  PromptLogprobs out;
  out.ids = ids;
  std::vector<at::Tensor> token_lp, rank, top_ids, top_lp;
  const at::Tensor next_ids = input.squeeze(0).narrow(0, 1, T - 1);
  // Position p predicts token p + 1; the last position predicts nothing of the prompt.
  for (int64_t begin = 0; begin < T - 1; begin += kScoreChunk) {
    const int64_t n = std::min(kScoreChunk, T - 1 - begin);
    std::vector<at::Tensor> logits(models.size());
    for (size_t i : view.inputs) logits[i] = models[i]->model->logits(hidden[i].narrow(0, begin, n));
    const at::Tensor lp = at::log_softmax(fuse_view(view, logits).logits.to(at::kFloat), -1).to(at::kCPU);
    const at::Tensor targets = next_ids.narrow(0, begin, n).unsqueeze(1);
    const at::Tensor actual = lp.gather(1, targets);  // [n, 1]
    token_lp.push_back(actual.squeeze(1));
    rank.push_back((lp > actual).sum(1) + 1);
    if (k > 0) {
      auto [values, indices] = lp.topk(std::min<int64_t>(k, lp.size(1)), 1);
      top_lp.push_back(values);
      top_ids.push_back(indices);
    }
  }
  if (T > 1) {
    out.token_logprob = at::cat(token_lp);
    out.token_rank = at::cat(rank);
    if (k > 0) {
      out.top_ids = at::cat(top_ids);
      out.top_logprobs = at::cat(top_lp);
    }
  }
  return out;
}

}  // namespace lf::serve
