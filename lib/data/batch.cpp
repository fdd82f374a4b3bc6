#include "data/batch.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace lf {

ModelBatch collate(const std::vector<const TokenizedSequence*>& rows, int64_t pad_id) {
  ModelBatch batch;
  batch.rows = rows;
  int64_t T = 1;
  for (const auto* row : rows) T = std::max(T, row->length());
  const int64_t B = static_cast<int64_t>(rows.size());
  batch.input_ids = at::full({B, T}, pad_id, at::TensorOptions().dtype(at::kLong));
  batch.labels = at::full({B, T}, kIgnoreIndex, at::TensorOptions().dtype(at::kLong));
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& row = *rows[b];
    for (int64_t t = 0; t < row.length(); ++t) ids[b][t] = row.ids[t];
    for (int64_t t = row.first_label_position(); t + 1 < row.length(); ++t) {
      labels[b][t] = row.ids[t + 1];
      ++batch.label_tokens;
    }
  }
  return batch;
}

}  // namespace lf
