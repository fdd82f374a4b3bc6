#include "serve/request_fusion.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <tuple>

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
  // Indices in set.run(): large, base, experts (those loaded); `inputs` lists them in FusedOrder.
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
    view.inputs = {0, 1};  // set.run()'s large and base, at FusedOrder::kLarge and kBase
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

PromptScorer::PromptScorer(ModelSet& set, const RequestFusion& fusion, std::vector<std::vector<int64_t>> prompts, int64_t k)
    : view_(fusion_view(set, fusion)),
      models_(set.run()),
      caches_(models_.size()),
      k_(k),
      prompts_(std::move(prompts)),
      scored_(prompts_.size()) {
  for (const auto& p : prompts_) longest_ = std::max<int64_t>(longest_, static_cast<int64_t>(p.size()));
  const int64_t B = static_cast<int64_t>(prompts_.size());
  // Padding with the prompt's own first token keeps every id in every model's vocabulary.
  ids_ = at::empty({B, longest_}, at::TensorOptions().dtype(at::kLong));
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts_[b];
    ids_[b].fill_(p.empty() ? 0 : p[0]);
    if (!p.empty()) ids_[b].narrow(0, 0, static_cast<int64_t>(p.size())).copy_(at::tensor(p, at::TensorOptions().dtype(at::kLong)));
  }
}

void PromptScorer::advance(int64_t budget) {
  c10::InferenceMode inference;
  const int64_t B = static_cast<int64_t>(prompts_.size());
  const int64_t n = std::min(std::max<int64_t>(budget / std::max<int64_t>(B, 1), 1), longest_ - next_);
  if (n <= 0) return;
  const at::Tensor piece = ids_.narrow(1, next_, n);  // [B, n]
  std::vector<at::Tensor> hidden(models_.size());
  for (size_t i : view_.inputs) {
    ForwardOptions options;
    options.cache = &caches_[i];
    hidden[i] = models_[i]->model->hidden_states(piece.to(models_[i]->device), options);  // [B, n, H]
  }
  // Column c of row b predicts token next_ + c + 1 of prompt b; a prompt's last position predicts
  // nothing of it. The positions to score, over all rows, go through the LM heads kScoreChunk at a time.
  std::vector<int64_t> flat, owner, target;  // a row of hidden.view({B * n, H}), its prompt, the token it predicts
  for (int64_t b = 0; b < B; ++b) {
    const int64_t T = static_cast<int64_t>(prompts_[b].size());
    for (int64_t c = 0; c < std::min(n, T - 1 - next_); ++c) {
      flat.push_back(b * n + c);
      owner.push_back(b);
      target.push_back(prompts_[b][next_ + c + 1]);
    }
  }
  const auto as_long = [](const std::vector<int64_t>& v, int64_t from, int64_t m) {
    return at::tensor(std::vector<int64_t>(v.begin() + from, v.begin() + from + m), at::TensorOptions().dtype(at::kLong));
  };
  for (int64_t begin = 0; begin < static_cast<int64_t>(flat.size()); begin += kScoreChunk) {
    const int64_t m = std::min<int64_t>(kScoreChunk, static_cast<int64_t>(flat.size()) - begin);
    const at::Tensor rows = as_long(flat, begin, m);
    std::vector<at::Tensor> logits(models_.size());
    for (size_t i : view_.inputs) {
      const at::Tensor h = hidden[i].reshape({B * n, hidden[i].size(2)});
      logits[i] = models_[i]->model->logits(h.index_select(0, rows.to(h.device())));
    }
    const at::Tensor lp = at::log_softmax(fuse_view(view_, logits).logits.to(at::kFloat), -1).to(at::kCPU);  // [m, V]
    const at::Tensor actual = lp.gather(1, as_long(target, begin, m).unsqueeze(1));                           // [m, 1]
    const at::Tensor rank = (lp > actual).sum(1) + 1;
    at::Tensor top_lp, top_ids;
    if (k_ > 0) std::tie(top_lp, top_ids) = lp.topk(std::min<int64_t>(k_, lp.size(1)), 1);
    // Hand each prompt its run of the chunk's rows.
    for (int64_t from = 0; from < m;) {
      int64_t to = from;
      while (to < m && owner[begin + to] == owner[begin + from]) ++to;
      Scored& out = scored_[owner[begin + from]];
      out.token_lp.push_back(actual.narrow(0, from, to - from).squeeze(1));
      out.rank.push_back(rank.narrow(0, from, to - from));
      if (k_ > 0) {
        out.top_lp.push_back(top_lp.narrow(0, from, to - from));
        out.top_ids.push_back(top_ids.narrow(0, from, to - from));
      }
      from = to;
    }
  }
  next_ += n;
  if (done()) caches_.clear();  // the results are all that is kept
}

std::vector<PromptLogprobs> PromptScorer::result() {
  std::vector<PromptLogprobs> out(prompts_.size());
  for (size_t b = 0; b < prompts_.size(); ++b) {
    out[b].ids = std::move(prompts_[b]);
    Scored& s = scored_[b];
    if (s.token_lp.empty()) {  // a one-token prompt: nothing to score
      out[b].token_logprob = at::empty({0}, at::kFloat);
      out[b].token_rank = at::empty({0}, at::kLong);
      continue;
    }
    out[b].token_logprob = at::cat(s.token_lp);
    out[b].token_rank = at::cat(s.rank);
    if (k_ > 0) {
      out[b].top_ids = at::cat(s.top_ids);
      out[b].top_logprobs = at::cat(s.top_lp);
    }
  }
  return out;
}

}  // namespace lf::serve
