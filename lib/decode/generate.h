// The generation loop: batches of left-padded prompts, one KV cache per model, fused next-token
// logits (decode/model_set.h), sampling, and per-row EOS and stop strings. Results come back in
// prompt order and do not depend on how prompts were batched.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "decode/config.h"
#include "decode/model_set.h"
#include "model/transformer.h"

namespace lf {

// One batch across every model of a set: each model keeps its own KV cache (or, with kv_cache off,
// the whole sequence is recomputed each step: the reference the cache is tested against).
class BatchDecoder {
 public:
  BatchDecoder(ModelSet& set, bool kv_cache);
  // ids [B, T] int64 left-padded, mask [B, T] bool (true on real tokens); CPU tensors. Returns the
  // fused next-token rows after each prompt's last token.
  FusedRows prefill(const at::Tensor& ids, const at::Tensor& mask);
  // Appends one token per row ([B] int64) and returns the fused rows after it.
  FusedRows step(const at::Tensor& tokens);

 private:
  FusedRows run(const at::Tensor& ids, const std::optional<at::Tensor>& mask, const at::Tensor& positions);

  ModelSet& set_;
  bool kv_cache_;
  std::vector<KVCache> caches_;
  at::Tensor ids_, mask_, positions_;  // the whole sequences so far (no-cache path)
  at::Tensor next_position_;           // [B] position of the next token of each row
  at::Tensor route_;                   // [B] each row's expert under fusion.multi_expert route
};

struct Completion {
  std::vector<int64_t> ids;   // generated tokens, without the EOS that ended them
  std::string text;           // decoded (special tokens skipped), cut before the first stop string
  std::string finish_reason;  // eos | stop | length
};

// What the fusion chose at one step of one batch, for --trace.
struct TraceStep {
  int64_t step = 0;
  std::vector<int64_t> keys;  // prompt index of each row
  std::vector<bool> active;   // rows that were still generating at this step
  at::Tensor tokens;          // [B] chosen tokens (CPU)
  const FusedRows* fused = nullptr;
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;
  int64_t batch_size = 8;
  bool kv_cache = true;
  SamplingConfig sampling;
  std::vector<int64_t> eos_ids;
  int64_t pad_id = 0;
  const Tokenizer* tokenizer = nullptr;  // for text and stop strings; without it text stays empty
  std::function<void(const TraceStep&)> trace;
};

// prompts: token ids (non-empty). Batches are consecutive prompts of up to batch_size.
std::vector<Completion> generate(ModelSet& set, const std::vector<std::vector<int64_t>>& prompts,
                                 const GenerateOptions& options);

}  // namespace lf
