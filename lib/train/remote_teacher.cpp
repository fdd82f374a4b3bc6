#include "train/remote_teacher.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "train/cache_logits.h"
#ifdef LOGITFUSE_HAVE_SERVE
#include "serve/teacher_client.h"
#endif

namespace lf {

namespace {

std::string server_key(size_t index) { return "teachers." + std::to_string(index) + ".server"; }

}  // namespace

std::vector<TeacherLabelRows> remote_label_rows(const Recipe& r, size_t index, int64_t k,
                                                const std::vector<const TokenizedSequence*>& sequences) {
#ifndef LOGITFUSE_HAVE_SERVE
  (void)r, (void)k, (void)sequences;
  throw NotAvailable(server_key(index) + " in a build without cpp-httplib");
#else
  TeacherServerConfig server = *r.teachers.at(index).server;
  if (server.top_k == 0) server.top_k = k;
  if (server.top_k < k)
    throw InputError(server_key(index) + ".top_k: " + std::to_string(server.top_k) + " is less than the " + std::to_string(k) +
                     " the losses need");
  std::vector<std::vector<int64_t>> ids;
  for (const auto* seq : sequences) ids.push_back(seq->ids);
  const auto scored = serve::score_remote(server, ids);
  std::vector<TeacherLabelRows> out;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t first = sequences[i]->first_label_position(), n = sequences[i]->label_count();
    const auto& s = scored[i];
    out.push_back({s.top_logprobs.narrow(0, first, n).narrow(1, 0, k).exp(), s.top_ids.narrow(0, first, n).narrow(1, 0, k),
                   -s.token_logprob.narrow(0, first, n).to(at::kDouble).mean().item<double>()});
  }
  return out;
#endif
}

void check_teacher_server(const Recipe& r, size_t index) {
#ifndef LOGITFUSE_HAVE_SERVE
  (void)r;
  throw NotAvailable(server_key(index) + " in a build without cpp-httplib");
#else
  const TeacherServerConfig& server = *r.teachers.at(index).server;
  const int64_t k = teacher_rows_k(r, server_key(index));
  if (server.top_k != 0 && server.top_k < k)
    throw InputError(server_key(index) + ".top_k: " + std::to_string(server.top_k) + " is less than the " + std::to_string(k) +
                     " the losses need");
  serve::check_served_model(server);
#endif
}

std::shared_ptr<loss::CachedTeacherRows> remote_rows(const Recipe& r, size_t index, const ModelBatch& batch) {
  const int64_t k = teacher_rows_k(r, server_key(index));
  auto out = std::make_shared<loss::CachedTeacherRows>();
  for (auto& rows : remote_label_rows(r, index, k, batch.rows)) {
    // As cached_rows: the graph reads all k, the token loss its own top_k of them.
    const int64_t token_k = std::min(r.loss.token.top_k.value_or(k), k);
    out->token_probs.push_back(rows.probs.narrow(1, 0, token_k));
    out->token_ids.push_back(rows.ids.narrow(1, 0, token_k));
    out->graph_probs.push_back(std::move(rows.probs));
    out->graph_ids.push_back(std::move(rows.ids));
    out->ce.push_back(rows.ce);
  }
  return out;
}

}  // namespace lf
