// A teacher on a server (teachers.N.server): its top-k prompt logprobs read over HTTP, once into a
// logits cache (cache-logits, with logits_cache) or at every step of `train` (placement: server).
// Both read the same numbers: the probabilities exp(logprob) of the top k at temperature 1 on each
// sequence's label rows, and the response's token-mean CE from its own tokens' logprobs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "config/recipe.h"
#include "data/batch.h"
#include "data/sequence.h"
#include "loss/objective.h"

namespace lf {

// One sequence's label rows, as a logits cache stores them.
struct TeacherLabelRows {
  at::Tensor probs;  // [n, k] float32, descending
  at::Tensor ids;    // [n, k] int64
  double ce = 0;     // token-mean over the response
};

// Asks teachers[index].server for every sequence (its top_k, 0 meaning k, must reach k); results
// in input order. NotAvailable in a build without cpp-httplib.
std::vector<TeacherLabelRows> remote_label_rows(const Recipe& recipe, size_t index, int64_t k,
                                                const std::vector<const TokenizedSequence*>& sequences);

// Before a run reads it step by step: the losses can be read from top-k rows (InputError), and the
// server answers and serves teachers[index].server.model (RuntimeFailure naming the URL).
void check_teacher_server(const Recipe& recipe, size_t index);

// The rows of one micro-batch for the objective (the same shape cached_rows gives), asked now.
std::shared_ptr<loss::CachedTeacherRows> remote_rows(const Recipe& recipe, size_t index, const ModelBatch& batch);

}  // namespace lf
