// Per-request fusion (the `fusion` extension field of serve's API): which of the loaded models a
// request's next-token distribution is fused from, and how; plus the prompt logprobs a teacher reads.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "decode/model_set.h"

namespace lf::serve {

// A fusion resolved against the server's set: a strategy (FusionSpec's) over a subset of its experts.
struct RequestFusion {
  FusionSpec spec;
  std::vector<size_t> experts;  // indices into set.experts that take part (all, by default)
  // Requests with equal keys are fused together in one call.
  std::string key() const;
};

// The server's own fusion: its strategy over every loaded expert.
RequestFusion default_fusion(const ModelSet& set);

// The set a request's rows are fused with, and which of set.run()'s logits feed it, in order.
struct FusionView {
  ModelSet set;
  std::vector<size_t> inputs;
};
FusionView fusion_view(const ModelSet& set, const RequestFusion& fusion);

// Rows of every model's logits (set.run() order) fused under `view`.
FusedRows fuse_view(const FusionView& view, const std::vector<at::Tensor>& logits, at::Tensor* route = nullptr);

// Log-probabilities of a prompt under the request's fused distribution, at every position after the
// first: the prompt token's logprob and rank (1 = likeliest), and the top `k` tokens with theirs.
struct PromptLogprobs {
  std::vector<int64_t> ids;
  at::Tensor token_logprob;  // [T-1] float32
  at::Tensor token_rank;     // [T-1] int64
  at::Tensor top_ids;        // [T-1, k] int64
  at::Tensor top_logprobs;   // [T-1, k] float32
};
// Runs every model over `ids` once and the LM heads in chunks of positions, so no [T, V] float32
// block is held for the whole prompt.
PromptLogprobs prompt_logprobs(ModelSet& set, const RequestFusion& fusion, const std::vector<int64_t>& ids, int64_t k);

}  // namespace lf::serve
