// Log-likelihood of continuations given contexts under a model set: a plain model, or the fused
// distribution of method.md §4 applied at every scored position (teacher forcing: the DLF α solve
// runs per position exactly as it would at that decoding step).
#pragma once

#include <cstdint>
#include <vector>

#include "decode/model_set.h"

namespace lf {

struct ScoreRequest {
  std::vector<int64_t> context;       // non-empty
  std::vector<int64_t> continuation;  // the tokens scored
};

struct ScoreResult {
  double logprob = 0;  // Σ log p(continuation token | everything before it)
  int64_t tokens = 0;
  std::vector<double> token_logprobs;  // one per continuation token, in order
};

// Sequences are batched (right-padded: causal attention keeps real positions exact) batch_size at a time.
std::vector<ScoreResult> score_continuations(ModelSet& set, const std::vector<ScoreRequest>& requests, int64_t batch_size);

}  // namespace lf
