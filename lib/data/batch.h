// Micro-batch tensors for one model: token ids right-padded (so causal attention needs no mask)
// and next-token labels at response positions.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "data/sequence.h"

namespace lf {

constexpr int64_t kIgnoreIndex = -100;

struct ModelBatch {
  at::Tensor input_ids;  // [B, T] int64
  at::Tensor labels;     // [B, T] int64: ids[t + 1] where that is a response token, else kIgnoreIndex
  std::vector<const TokenizedSequence*> rows;
  int64_t label_tokens = 0;
};

ModelBatch collate(const std::vector<const TokenizedSequence*>& rows, int64_t pad_id);

}  // namespace lf
