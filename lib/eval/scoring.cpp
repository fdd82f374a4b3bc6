#include "eval/scoring.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"

namespace lf {

std::vector<ScoreResult> score_continuations(ModelSet& set, const std::vector<ScoreRequest>& requests, int64_t batch_size) {
  c10::InferenceMode inference;
  std::vector<ScoreResult> out(requests.size());
  const int64_t n = static_cast<int64_t>(requests.size());
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t end = std::min(n, begin + batch_size);
    int64_t longest = 0;
    for (int64_t i = begin; i < end; ++i) {
      const auto& r = requests[i];
      if (r.context.empty()) throw InputError("scoring: a request has an empty context");
      longest = std::max<int64_t>(longest, r.context.size() + r.continuation.size());
    }
    at::Tensor ids = at::zeros({end - begin, longest}, at::TensorOptions().dtype(at::kLong));
    // Scored rows: (batch row, position predicting the target), flattened across the batch.
    std::vector<int64_t> row_of, position_of, target_of, request_of;
    for (int64_t i = begin; i < end; ++i) {
      const auto& r = requests[i];
      std::vector<int64_t> seq = r.context;
      seq.insert(seq.end(), r.continuation.begin(), r.continuation.end());
      ids[i - begin].narrow(0, 0, seq.size()).copy_(at::tensor(seq, at::TensorOptions().dtype(at::kLong)));
      for (size_t k = 0; k < r.continuation.size(); ++k) {
        row_of.push_back(i - begin);
        position_of.push_back(static_cast<int64_t>(r.context.size() + k) - 1);
        target_of.push_back(r.continuation[k]);
        request_of.push_back(i);
      }
    }
    if (row_of.empty()) continue;
    const at::Tensor rows = at::tensor(row_of, at::TensorOptions().dtype(at::kLong));
    const at::Tensor positions = at::tensor(position_of, at::TensorOptions().dtype(at::kLong));
    std::vector<at::Tensor> logits;
    for (DecodingModel* m : set.run()) {
      at::Tensor h = m->model->hidden_states(ids.to(m->device));
      // The LM head only on the scored positions: [rows, hidden] -> [rows, V].
      h = h.index({rows.to(m->device), positions.to(m->device)});
      logits.push_back(m->model->logits(h));
    }
    const FusedRows fused = fuse_rows(set, logits);
    const at::Tensor targets = at::tensor(target_of, at::TensorOptions().dtype(at::kLong)).to(fused.logits.device());
    if (targets.max().item<int64_t>() >= set.vocab)
      throw InputError("scoring: a target token id is outside the shared vocabulary of " + std::to_string(set.vocab));
    const at::Tensor logp = at::log_softmax(fused.logits.to(at::kDouble), -1).gather(1, targets.unsqueeze(1)).squeeze(1).to(at::kCPU);
    const double* lp = logp.data_ptr<double>();
    for (size_t k = 0; k < request_of.size(); ++k) {
      out[request_of[k]].logprob += lp[k];
      out[request_of[k]].tokens += 1;
      out[request_of[k]].token_logprobs.push_back(lp[k]);
    }
  }
  return out;
}

}  // namespace lf
