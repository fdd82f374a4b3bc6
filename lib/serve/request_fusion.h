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

// Where each model's logits stand in a fusion's inputs (FusionView::inputs, fuse_rows' order):
// the large model, the base, then the experts. expert_only fuses the experts alone, from 0.
struct FusedOrder {
  static constexpr size_t kLarge = 0;
  static constexpr size_t kBase = 1;
  static constexpr size_t kFirstExpert = 2;
};

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
// Scores prompts together, a piece at a time: each advance() runs the models over up to `budget` more
// prompt tokens (padding counted; their KV caches keep what came before) and the LM heads over those
// positions in chunks, so no [T, V] float32 block is held for a whole prompt, and the server decodes
// its running rows between two pieces of a long prompt instead of stalling for the whole of it.
// Prompts of a batch are right-padded to the longest: a causal model's real positions never attend
// the padding after them, so each prompt's logprobs are its own (up to float rounding of the batched
// matrix products).
class PromptScorer {
 public:
  PromptScorer(ModelSet& set, const RequestFusion& fusion, std::vector<std::vector<int64_t>> prompts, int64_t k);
  bool done() const { return next_ >= longest_; }
  void advance(int64_t budget);
  std::vector<PromptLogprobs> result();  // once done(), in prompt order

 private:
  struct Scored {  // one prompt's pieces, concatenated by result()
    std::vector<at::Tensor> token_lp, rank, top_ids, top_lp;
  };
  FusionView view_;
  std::vector<DecodingModel*> models_;
  std::vector<KVCache> caches_;  // per model of set.run() that the fusion reads
  int64_t k_;
  std::vector<std::vector<int64_t>> prompts_;
  at::Tensor ids_;    // [B, longest] int64, right-padded
  int64_t longest_ = 0;
  int64_t next_ = 0;  // columns run so far
  std::vector<Scored> scored_;
};

}  // namespace lf::serve
