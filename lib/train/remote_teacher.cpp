#include "train/remote_teacher.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "train/cache_logits.h"
#ifdef LOGITFUSE_HAVE_SERVE
#include "serve/teacher_client.h"
#endif

namespace lf {

RemoteTeacher resolve_remote_teacher(const Recipe& r, size_t index, int64_t k) {
  RemoteTeacher out{*r.teachers.at(index).server, k, "teachers." + std::to_string(index) + ".server"};
  if (out.server.top_k == 0) out.server.top_k = k;
  if (out.server.top_k < k)
    throw InputError(out.key + ".top_k: " + std::to_string(out.server.top_k) + " is less than the " + std::to_string(k) +
                     " the losses need");
  return out;
}

RemoteTeacher connect_remote_teacher(const Recipe& r, size_t index) {
  const std::string key = "teachers." + std::to_string(index) + ".server";
  RemoteTeacher teacher = resolve_remote_teacher(r, index, teacher_rows_k(r, key));
#ifndef LOGITFUSE_HAVE_SERVE
  throw NotAvailable(key + " in a build without cpp-httplib");
#else
  serve::check_served_model(teacher.server);
  return teacher;
#endif
}

#ifdef LOGITFUSE_HAVE_SERVE
struct RemoteRowsPrefetch::Answers {
  std::vector<serve::RemoteLogprobs> scored;
};
#else
struct RemoteRowsPrefetch::Answers {};
#endif

namespace {

// The server's answers for `sequences` (requests and parsing only: no parallel tensor math).
std::shared_ptr<RemoteRowsPrefetch::Answers> ask(const RemoteTeacher& teacher,
                                                 const std::vector<const TokenizedSequence*>& sequences) {
#ifndef LOGITFUSE_HAVE_SERVE
  (void)sequences;
  throw NotAvailable(teacher.key + " in a build without cpp-httplib");
#else
  std::vector<std::vector<int64_t>> ids;
  for (const auto* seq : sequences) ids.push_back(seq->ids);
  return std::make_shared<RemoteRowsPrefetch::Answers>(RemoteRowsPrefetch::Answers{serve::score_remote(teacher.server, ids)});
#endif
}

// The answers as label rows: probabilities exp(logprob) of the top k on each sequence's label rows.
std::vector<TeacherLabelRows> label_rows(const RemoteTeacher& teacher, const std::vector<const TokenizedSequence*>& sequences,
                                         const RemoteRowsPrefetch::Answers& answers) {
  std::vector<TeacherLabelRows> out;
#ifdef LOGITFUSE_HAVE_SERVE
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t first = sequences[i]->first_label_position(), n = sequences[i]->label_count(), k = teacher.k;
    const auto& s = answers.scored.at(i);
    out.push_back({s.top_logprobs.narrow(0, first, n).narrow(1, 0, k).exp(), s.top_ids.narrow(0, first, n).narrow(1, 0, k),
                   -s.token_logprob.narrow(0, first, n).to(at::kDouble).mean().item<double>()});
  }
#else
  (void)teacher, (void)sequences, (void)answers;
#endif
  return out;
}

std::shared_ptr<loss::PrecomputedTeacherRows> rows_of(const RemoteTeacher& teacher, const Recipe& r, const ModelBatch& batch,
                                                 const RemoteRowsPrefetch::Answers& answers) {
  auto out = std::make_shared<loss::PrecomputedTeacherRows>();
  for (auto& rows : label_rows(teacher, batch.rows, answers))
    append_teacher_rows(*out, r, teacher.k, rows.probs, rows.ids, rows.probs, rows.ids, rows.ce);
  return out;
}

}  // namespace

std::vector<TeacherLabelRows> remote_label_rows(const RemoteTeacher& teacher, const std::vector<const TokenizedSequence*>& sequences) {
  return label_rows(teacher, sequences, *ask(teacher, sequences));
}

std::shared_ptr<loss::PrecomputedTeacherRows> remote_rows(const RemoteTeacher& teacher, const Recipe& r, const ModelBatch& batch) {
  return rows_of(teacher, r, batch, *ask(teacher, batch.rows));
}

RemoteRowsPrefetch::RemoteRowsPrefetch(const RemoteTeacher& teacher, const Recipe& recipe,
                                       std::vector<const ModelBatch*> batches)
    : teacher_(teacher), recipe_(recipe), batches_(std::move(batches)), promises_(batches_.size()) {
  for (auto& p : promises_) futures_.push_back(p.get_future());
  worker_ = std::thread([this] {
    for (size_t m = 0; m < batches_.size(); ++m) {
      if (stop_) {
        promises_[m].set_exception(std::make_exception_ptr(std::runtime_error("prefetch stopped")));
        continue;
      }
      try {
        promises_[m].set_value(ask(teacher_, batches_[m]->rows));
      } catch (...) {
        // The micro-batches after a failed one are not asked: the step fails on this one.
        stop_ = true;
        promises_[m].set_exception(std::current_exception());
      }
    }
  });
}

RemoteRowsPrefetch::~RemoteRowsPrefetch() {
  stop_ = true;
  if (worker_.joinable()) worker_.join();
}

std::shared_ptr<loss::PrecomputedTeacherRows> RemoteRowsPrefetch::get(size_t micro) {
  return rows_of(teacher_, recipe_, *batches_.at(micro), *futures_.at(micro).get());
}

}  // namespace lf
