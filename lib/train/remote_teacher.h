// A teacher on a server (teachers.N.server): its top-k prompt logprobs read over HTTP, once into a
// logits cache (cache-logits, with logits_cache) or at every step of `train` (placement: server).
// Both read the same numbers: the probabilities exp(logprob) of the top k at temperature 1 on each
// sequence's label rows, and the response's token-mean CE from its own tokens' logprobs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "data/batch.h"
#include "data/sequence.h"
#include "loss/objective.h"

namespace lf {

// teachers.N.server resolved once against the recipe: what to ask (top_k 0 filled in with k) and
// how many of the answers the losses read (k).
struct RemoteTeacher {
  TeacherServerConfig server;
  int64_t k = 0;
  std::string key;  // teachers.N.server, for errors
};

// InputError if the server's top_k is below the k the losses need.
RemoteTeacher resolve_remote_teacher(const Recipe& recipe, size_t index, int64_t k);

// For `train`: resolved with the losses' k, and the server checked to answer and serve the model
// (RuntimeFailure naming the URL otherwise).
RemoteTeacher connect_remote_teacher(const Recipe& recipe, size_t index);

// One sequence's label rows, as a logits cache stores them.
struct TeacherLabelRows {
  at::Tensor probs;  // [n, k] float32, descending
  at::Tensor ids;    // [n, k] int64
  double ce = 0;     // token-mean over the response
};

// Asks the server for every sequence; results in input order. NotAvailable in a build without
// cpp-httplib.
std::vector<TeacherLabelRows> remote_label_rows(const RemoteTeacher& teacher, const std::vector<const TokenizedSequence*>& sequences);

// The rows of one micro-batch for the objective (the same shape cached_rows gives), asked now.
std::shared_ptr<loss::CachedTeacherRows> remote_rows(const RemoteTeacher& teacher, const Recipe& recipe, const ModelBatch& batch);

}  // namespace lf
