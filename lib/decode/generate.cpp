#include "decode/generate.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"
#include "decode/sampling.h"

namespace lf {

BatchDecoder::BatchDecoder(ModelSet& set, bool kv_cache) : set_(set), kv_cache_(kv_cache) {}

FusedRows BatchDecoder::run(const at::Tensor& ids, const std::optional<at::Tensor>& mask, const at::Tensor& positions) {
  c10::InferenceMode inference;
  auto models = set_.run();
  if (caches_.size() != models.size()) caches_.resize(models.size());
  std::vector<at::Tensor> logits;
  for (size_t i = 0; i < models.size(); ++i) {
    ForwardOptions options;
    options.positions = positions;
    if (mask) options.token_mask = *mask;
    if (kv_cache_) options.cache = &caches_[i];
    CausalLM& model = *models[i]->model;
    // Only the last position's logits are needed: the LM head runs on one row per sequence.
    at::Tensor h = model.hidden_states(ids.to(models[i]->device), options);
    logits.push_back(model.logits(h.select(1, -1)));
  }
  return fuse_rows(set_, logits, &route_);
}

FusedRows BatchDecoder::prefill(const at::Tensor& ids, const at::Tensor& mask) {
  for (auto& c : caches_) c.clear();
  caches_.clear();
  route_ = at::Tensor();  // a new batch: its rows are routed at this first step
  // Left padding: a row's first real token is at position 0 (padding positions are clamped to 0).
  const at::Tensor positions = (mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  next_position_ = mask.to(at::kLong).sum(1);
  ids_ = ids;
  mask_ = mask;
  positions_ = positions;
  return run(ids, mask, positions);
}

FusedRows BatchDecoder::step(const at::Tensor& tokens) {
  const at::Tensor column = tokens.to(at::kCPU).to(at::kLong).view({-1, 1});
  const at::Tensor position = next_position_.view({-1, 1});
  next_position_ = next_position_ + 1;
  if (kv_cache_) return run(column, std::nullopt, position);
  ids_ = at::cat({ids_, column}, 1);
  mask_ = at::cat({mask_, at::ones_like(column, at::kBool)}, 1);
  positions_ = at::cat({positions_, position}, 1);
  return run(ids_, mask_, positions_);
}

namespace {

struct RowState {
  int64_t key = 0;
  Completion completion;
  bool done = false;
};

// Decoded text of the row, and whether it now contains a stop string (text cut before the first one).
bool apply_stop_strings(RowState& row, const GenerateOptions& options) {
  if (!options.tokenizer) return false;
  row.completion.text = options.tokenizer->decode(row.completion.ids, /*skip_special_tokens=*/true);
  size_t first = std::string::npos;
  for (const auto& stop : options.stop) {
    if (stop.empty()) continue;
    first = std::min(first, row.completion.text.find(stop));
  }
  if (first == std::string::npos) return false;
  row.completion.text.resize(first);
  return true;
}

void decode_batch(ModelSet& set, const std::vector<std::vector<int64_t>>& prompts, int64_t begin, int64_t end,
                  const GenerateOptions& options, std::vector<Completion>& out) {
  const int64_t batch = end - begin;
  int64_t longest = 0;
  for (int64_t i = begin; i < end; ++i) longest = std::max<int64_t>(longest, prompts[i].size());
  at::Tensor ids = at::full({batch, longest}, options.pad_id, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::zeros({batch, longest}, at::TensorOptions().dtype(at::kBool));
  std::vector<RowState> rows(batch);
  for (int64_t r = 0; r < batch; ++r) {
    const auto& p = prompts[begin + r];
    if (p.empty()) throw InputError("prompt " + std::to_string(begin + r) + " has no tokens");
    const int64_t pad = longest - static_cast<int64_t>(p.size());
    ids[r].narrow(0, pad, p.size()).copy_(at::tensor(p, at::TensorOptions().dtype(at::kLong)));
    mask[r].narrow(0, pad, p.size()).fill_(true);
    rows[r].key = begin + r;
  }
  std::vector<int64_t> keys;
  for (const auto& r : rows) keys.push_back(r.key);

  BatchDecoder decoder(set, options.kv_cache);
  FusedRows fused = decoder.prefill(ids, mask);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const at::Tensor tokens = sample_tokens(fused.logits, options.sampling, keys, step);
    const int64_t* tok = tokens.data_ptr<int64_t>();
    if (options.trace) {
      TraceStep trace{step, keys, {}, tokens, &fused};
      for (const auto& r : rows) trace.active.push_back(!r.done);
      options.trace(trace);
    }
    bool all_done = true;
    for (int64_t r = 0; r < batch; ++r) {
      RowState& row = rows[r];
      if (row.done) continue;
      if (std::find(options.eos_ids.begin(), options.eos_ids.end(), tok[r]) != options.eos_ids.end()) {
        row.done = true;
        row.completion.finish_reason = "eos";
        continue;
      }
      row.completion.ids.push_back(tok[r]);
      if (!options.stop.empty() && apply_stop_strings(row, options)) {
        row.done = true;
        row.completion.finish_reason = "stop";
      } else if (static_cast<int64_t>(row.completion.ids.size()) >= options.max_new_tokens) {
        row.done = true;
        row.completion.finish_reason = "length";
      }
      all_done = all_done && row.done;
    }
    if (all_done) break;
    fused = decoder.step(tokens);
  }
  for (int64_t r = 0; r < batch; ++r) {
    Completion& c = rows[r].completion;
    if (c.finish_reason.empty()) c.finish_reason = "length";
    if (c.finish_reason != "stop" && options.tokenizer) c.text = options.tokenizer->decode(c.ids, true);
    out[begin + r] = std::move(c);
  }
}

}  // namespace

std::vector<Completion> generate(ModelSet& set, const std::vector<std::vector<int64_t>>& prompts,
                                 const GenerateOptions& options) {
  if (options.batch_size < 1 || options.max_new_tokens < 1) throw InputError("generate: batch_size and max_new_tokens must be >= 1");
  std::vector<Completion> out(prompts.size());
  const int64_t n = static_cast<int64_t>(prompts.size());
  for (int64_t begin = 0; begin < n; begin += options.batch_size)
    decode_batch(set, prompts, begin, std::min(n, begin + options.batch_size), options, out);
  return out;
}

}  // namespace lf
