#include "train/evaluation.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/device_runtime.h"
#include "data/batch.h"

namespace lf {

double evaluate_student(const Participant& student, const std::vector<TokenizedSequence>& eval, int64_t batch_size,
                        bool bf16, Communicator& comm, bool lockstep) {
  at::NoGradGuard no_grad;
  student.model->eval();
  std::vector<const TokenizedSequence*> mine;
  for (size_t i = static_cast<size_t>(comm.rank()); i < eval.size(); i += static_cast<size_t>(comm.world_size()))
    mine.push_back(&eval[i]);
  const size_t most = (eval.size() + comm.world_size() - 1) / comm.world_size();
  const size_t batches = ((lockstep ? most : mine.size()) + batch_size - 1) / batch_size;
  double loss_sum = 0, tokens = 0;
  for (size_t i = 0; i < batches; ++i) {
    const size_t start = std::min(mine.size(), i * batch_size);
    std::vector<const TokenizedSequence*> rows(mine.begin() + start, mine.begin() + std::min(mine.size(), start + batch_size));
    const bool idle = rows.empty();
    if (idle) rows.push_back(&eval.front());
    ModelBatch batch = collate(rows, student.pad_id());
    AutocastGuard autocast(student.device.type(), bf16);
    at::Tensor hidden = student.model->hidden_states(batch.input_ids.to(student.device));
    at::Tensor labels = batch.labels.to(student.device);
    at::Tensor where = (labels != kIgnoreIndex).nonzero();
    at::Tensor logits = student.logits(hidden.index({where.select(1, 0), where.select(1, 1)}));
    if (idle) continue;
    loss_sum += at::cross_entropy_loss(logits.to(at::kFloat), labels.index({where.select(1, 0), where.select(1, 1)}),
                                       {}, at::Reduction::Sum).item<double>();
    tokens += static_cast<double>(where.size(0));
  }
  student.model->train();
  return comm.all_reduce_sum(loss_sum) / std::max(1.0, comm.all_reduce_sum(tokens));
}

}  // namespace lf
