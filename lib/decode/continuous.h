// Continuous batching: sequences join and leave a running batch at step boundaries (`serve`).
// Every model of a set keeps one KV cache over the running rows that run it: a row whose fusion needs
// only some models (`fusion: off` needs the large model alone, one expert needs its own) never enters
// the others' caches and costs them nothing. Joiners are prefilled in caches of their own, in chunks
// between decoding steps if asked (so a long prompt does not stall the running rows), and then
// appended (model/kv_cache_rows.h); finished rows are dropped. Each row keeps its own positions, so a
// row's logits do not depend on which rows share its batch (up to float rounding of the batched
// matrix products).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "decode/model_set.h"
#include "model/transformer.h"

namespace lf {

// Next-token logits of some rows, per model of set.run().
struct BatchLogits {
  int64_t rows = 0;
  std::vector<at::Tensor> logits;          // per model: [rows that run it, V_i]; undefined when none does
  std::vector<std::vector<int64_t>> slot;  // slot[i][r]: row r's row in logits[i], or -1 if it does not run model i
  // Rows `rows` (each must run model i) of model i's logits, in that order.
  at::Tensor of(size_t model, const std::vector<int64_t>& rows) const;
  // The same, where a row that no longer runs `model` takes its row of `fallback`'s logits (both
  // cut to the narrower vocabulary).
  at::Tensor of_or(size_t model, const std::vector<int64_t>& rows, size_t fallback) const;
};

class ContinuousBatch {
 public:
  explicit ContinuousBatch(ModelSet& set);
  int64_t rows() const { return rows_; }

  // Starts admitting `prompts` (non-empty token ids); `uses[r]` lists the models (indices into
  // set.run()) prompt r runs through, every model when `uses` is empty. One group joins at a time.
  void begin_admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id,
                   const std::vector<std::vector<size_t>>& uses = {});
  bool admitting() const { return joining_rows_ > 0; }
  // Prefills the joining group's next chunk: at most `token_budget` prompt tokens per model (padding
  // counted, at least one column), all of it when 0. After the last chunk the joiners are the last
  // rows, in prompt order, and their logits are returned (rows 0.. of the result); nullopt before.
  std::optional<BatchLogits> prefill(int64_t token_budget = 0);
  // Forgets a joining group (its prefill failed); the running rows are untouched.
  void abort_admit();
  // begin_admit + prefill whole, every model: logits per model of set.run(), [prompts, V_i].
  std::vector<at::Tensor> admit(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);

  // Appends one token to every row (row order): each model's next-token logits of the rows that run it.
  BatchLogits step(const std::vector<int64_t>& tokens);
  // Keeps rows `keep` (in that order) and frees the rest; the caches shrink to what they attend to.
  void keep(const std::vector<int64_t>& keep);
  // Running rows `rows` stop running `model` (their fusion no longer reads it): they leave its cache
  // and its later steps.
  void leave(size_t model, const std::vector<int64_t>& rows);
  // Filled columns of the running rows' caches (the longest row's length, padding included).
  int64_t columns() const;
  // Token positions each model has run (prefill, padding included, and decoding), set.run() order.
  const std::vector<int64_t>& tokens_run() const { return tokens_run_; }
  // Host seconds in the forward passes, summed over models: joining groups' prefill, and decoding
  // steps' layers and LM head apart. On a GPU, kernels run asynchronously: there these are the
  // host's times, which show where it waited rather than what each kernel took.
  struct ForwardSeconds {
    double prefill = 0, layers = 0, head = 0;
  };
  const ForwardSeconds& forward_seconds() const { return seconds_; }

 private:
  // One model's share of a joining group: the prompts that run it, left-padded to their longest.
  struct Joining {
    std::vector<int64_t> prompts;  // indices into the group
    at::Tensor ids, mask, positions;
    KVCache cache;
    int64_t done = 0;  // columns prefilled
    at::Tensor last;   // next-token logits once every column is in
  };
  at::Tensor forward(size_t model, KVCache& cache, const at::Tensor& ids, const at::Tensor& mask,
                     const at::Tensor& positions, bool decoding);

  ModelSet& set_;
  std::vector<DecodingModel*> models_;         // set_.run()
  std::vector<KVCache> caches_;                // per model, over members_[i]
  std::vector<std::vector<int64_t>> members_;  // per model: the running rows that run it, ascending
  at::Tensor next_position_;                   // [rows] int64, the position of each row's next token
  int64_t rows_ = 0;
  std::vector<Joining> joining_;  // per model, while a group is admitted
  at::Tensor joining_next_;       // [group] int64, each joiner's next position
  int64_t joining_rows_ = 0;
  std::vector<int64_t> tokens_run_;
  ForwardSeconds seconds_;
};

}  // namespace lf
