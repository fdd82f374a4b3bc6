// A teacher on a server (teachers.N.server): its top-k prompt logprobs read over HTTP, once into a
// logits cache (cache-logits, with logits_cache) or at every step of `train` (placement: server).
// Both read the same numbers: the probabilities exp(logprob) of the top k at temperature 1 on each
// sequence's label rows, and the response's token-mean CE from its own tokens' logprobs.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
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
std::shared_ptr<loss::PrecomputedTeacherRows> remote_rows(const RemoteTeacher& teacher, const Recipe& recipe, const ModelBatch& batch);

// A step's rows of one served teacher, asked in the background one micro-batch after another (each
// with the server's concurrency in flight), so that the requests overlap the student's compute: its
// forward on the micro-batch they serve, and everything on the micro-batches before. The worker only
// sends requests and parses answers; the answers become rows (tensor math) on the thread that calls
// get(), the training thread: a parallel region started from a second thread would give libgomp a
// second team, and with more of its threads than cores it throttles every team's spinning. The rows
// are the ones remote_rows gives, so a step's numbers do not change.
class RemoteRowsPrefetch {
 public:
  // `batches` must outlive this object.
  RemoteRowsPrefetch(const RemoteTeacher& teacher, const Recipe& recipe, std::vector<const ModelBatch*> batches);
  // Waits for the request in flight (the ones not started are not sent).
  ~RemoteRowsPrefetch();
  RemoteRowsPrefetch(const RemoteRowsPrefetch&) = delete;
  RemoteRowsPrefetch& operator=(const RemoteRowsPrefetch&) = delete;
  // Micro-batch `micro`'s rows, waiting for them; rethrows what asking for them threw.
  std::shared_ptr<loss::PrecomputedTeacherRows> get(size_t micro);

  struct Answers;  // a micro-batch's parsed answers

 private:
  RemoteTeacher teacher_;
  const Recipe& recipe_;
  std::vector<const ModelBatch*> batches_;
  std::vector<std::promise<std::shared_ptr<Answers>>> promises_;
  std::vector<std::future<std::shared_ptr<Answers>>> futures_;
  std::atomic<bool> stop_{false};
  std::thread worker_;
};

}  // namespace lf
