// Continuous batching: sequences join and leave a running batch at step boundaries (`serve`).
// Every model of a set keeps one KV cache over the running rows. Joiners are prefilled together in
// caches of their own and then appended (model/kv_cache_rows.h); finished rows are dropped. Each row
// keeps its own positions, so a row's logits do not depend on which rows share its batch (up to
// float rounding of the batched matrix products).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "decode/model_set.h"
#include "model/transformer.h"

namespace lf {

class ContinuousBatch {
 public:
  explicit ContinuousBatch(ModelSet& set);
  int64_t rows() const { return rows_; }
  // Prefills `prompts` (non-empty token ids) and appends them as the last rows. Returns, per model of
  // set.run(), the next-token logits of the new rows [prompts, V_i], in prompt order.
  std::vector<at::Tensor> admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);
  // Appends one token to every row (row order) and returns each model's next-token logits [rows, V_i].
  std::vector<at::Tensor> step(const std::vector<int64_t>& tokens);
  // Keeps rows `keep` (in that order) and frees the rest; the cache shrinks to what they attend to.
  void keep(const std::vector<int64_t>& keep);
  // Filled columns of the running rows' caches (the longest row's length, padding included).
  int64_t columns() const;

 private:
  std::vector<at::Tensor> forward(std::vector<KVCache>& caches, const at::Tensor& ids, const at::Tensor& mask,
                                  const at::Tensor& positions);

  ModelSet& set_;
  std::vector<KVCache> caches_;  // one per model of set_.run()
  at::Tensor next_position_;     // [rows] int64, the position of each row's next token
  int64_t rows_ = 0;
};

}  // namespace lf
