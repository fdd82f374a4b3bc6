// A teacher read over HTTP (teachers.N.server): top-k prompt logprobs from any server that speaks
// serve's /v1/completions with vLLM's prompt_logprobs (logitfuse serve, vLLM), for cache-logits and
// train (train/remote_teacher.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "config/recipe.h"

namespace lf::serve {

// Per sequence, positions 0..T-2 (position p predicts token p+1): the top-k ids and logprobs
// [T-1, k] (descending) and the logprob of the sequence's own next token [T-1], float32.
struct RemoteLogprobs {
  at::Tensor top_ids, top_logprobs, token_logprob;
};

// The server answers GET /v1/models and lists server.model; else a RuntimeFailure naming the URL
// (after the retries where it does not answer).
void check_served_model(const TeacherServerConfig& server);

// Scores every sequence (token ids, as the teacher's tokenizer gives them) with server.top_k (> 0)
// logprobs per position; results in input order.
// The server must return these ids as its prompt_token_ids. A server that cannot be reached after
// the retries, or that answers something else, is a RuntimeFailure naming the URL.
std::vector<RemoteLogprobs> score_remote(const TeacherServerConfig& server, const std::vector<std::vector<int64_t>>& sequences);

}  // namespace lf::serve
