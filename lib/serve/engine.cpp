#include "serve/engine.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <map>

#include "decode/sampling.h"
#include "tokenizer/tokenizer.h"

namespace lf::serve {

using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Where the first of `stops` (empty ones never match) begins in `text`, or npos.
size_t first_stop(const std::string& text, const std::vector<std::string>& stops) {
  size_t at = std::string::npos;
  for (const auto& s : stops)
    if (!s.empty()) at = std::min(at, text.find(s));
  return at;
}

// The longest prefix of `text` that ends on a UTF-8 character boundary at or before `end`.
size_t utf8_boundary(const std::string& text, size_t end) {
  while (end > 0 && end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return end;
}

}  // namespace

struct Engine::Row {
  std::shared_ptr<Request> request;
  std::vector<int64_t> ids;  // generated so far (without the EOS that ends a row)
  int64_t step = 0;          // tokens sampled so far
  int64_t pending = -1;      // the last sampled token, fed at the next step
  int64_t route = -1;        // fusion.multi_expert route: the row's expert once chosen
  size_t emitted = 0;        // bytes of the decoded text already sent
  size_t hold_back = 0;      // bytes a stop string could still be completing
  bool done = false;
  Clock::time_point last_token;
};

struct Engine::ScoreJob {
  uint64_t group = 0;  // the submit() call it came with: only its own prompts are scored with it
  std::vector<int64_t> ids;
  int64_t k = 0;
  RequestFusion fusion;
  std::promise<PromptLogprobs> result;
};

Event Event::error(std::string message) {
  Event e;
  e.kind = Kind::kError;
  e.text = std::move(message);
  return e;
}

Request::Request(GenerationParams params) : params_(std::move(params)) {}

std::optional<Event> Request::next(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, wait, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void Request::push(Event event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_all();
}

Engine::Engine(ModelSet& set, const Tokenizer& tokenizer, std::vector<int64_t> eos_ids, int64_t pad_id,
               EngineLimits limits, Metrics& metrics)
    : set_(set),
      tokenizer_(tokenizer),
      eos_ids_(std::move(eos_ids)),
      pad_id_(pad_id),
      limits_(limits),
      metrics_(metrics),
      batch_(std::make_unique<ContinuousBatch>(set)) {}

Engine::~Engine() = default;

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
}

Engine::Admission Engine::submit(const std::vector<std::shared_ptr<Request>>& requests,
                                 const std::vector<ScoreSpec>& scores, std::vector<std::future<PromptLogprobs>>& results) {
  std::vector<std::shared_ptr<ScoreJob>> jobs;
  results.clear();
  for (const auto& s : scores) {
    auto job = std::make_shared<ScoreJob>();
    job->ids = s.ids;
    job->k = s.k;
    job->fusion = s.fusion;
    results.push_back(job->result.get_future());
    jobs.push_back(std::move(job));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return Admission::kClosed;
    const int64_t n = static_cast<int64_t>(requests.size() + jobs.size());
    const int64_t queued = static_cast<int64_t>(waiting_.size() + scoring_.size());
    if (queued + n > std::max(limits_.max_queue, n)) return Admission::kQueueFull;
    for (const auto& r : requests) waiting_.push_back(r);
    ++score_groups_;
    for (auto& j : jobs) {
      j->group = score_groups_;
      scoring_.push_back(std::move(j));
    }
    metrics_.queue_length(static_cast<int64_t>(waiting_.size()));
  }
  wake_.notify_all();
  return Admission::kAccepted;
}

Engine::Admission Engine::submit(const std::shared_ptr<Request>& request) {
  std::vector<std::future<PromptLogprobs>> none;
  return submit({request}, {}, none);
}

void Engine::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
}

void Engine::wait_idle() {
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait(lock, [&] { return waiting_.empty() && scoring_.empty() && running_count_ == 0; });
}

void Engine::run() {
  c10::InferenceMode inference;
  // The prompts being scored (prompt logprobs: a teacher's, echo's), together, a piece per step like
  // a joining group.
  std::vector<std::shared_ptr<ScoreJob>> jobs;
  std::unique_ptr<PromptScorer> scorer;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !jobs.empty() || !waiting_.empty() || !scoring_.empty() || !rows_.empty() || !joining_.empty();
      });
      if (stopping_) break;
      // One group joins at a time: the next forms once this one is prefilled.
      const bool forming = joining_.empty();
      while (forming && !waiting_.empty() && static_cast<int64_t>(rows_.size() + joining_.size()) < limits_.max_batch) {
        if (!waiting_.front()->cancelled()) joining_.push_back(waiting_.front());
        waiting_.pop_front();
      }
      if (jobs.empty() && !scoring_.empty()) take_score_jobs(jobs);
      running_count_ = static_cast<int64_t>(rows_.size() + joining_.size() + jobs.size());
      metrics_.queue_length(static_cast<int64_t>(waiting_.size()));
    }
    if (!jobs.empty()) score_step(jobs, scorer);
    const auto start = Clock::now();
    try {
      drop_finished();
      if (!joining_.empty()) prefill();
      drop_finished();
      if (!rows_.empty()) step();
      drop_finished();
    } catch (const std::exception& e) {
      spdlog::error("serve: a decoding step failed, its requests get an error: {}", e.what());
      fail_all(e.what());
    }
    report_batch_counters();
    std::lock_guard<std::mutex> lock(mutex_);
    running_count_ = static_cast<int64_t>(rows_.size() + joining_.size() + jobs.size());
    metrics_.step(static_cast<int64_t>(rows_.size()), limits_.max_batch, static_cast<int64_t>(waiting_.size()),
                  seconds_since(start));
    if (jobs.empty() && rows_.empty() && joining_.empty() && waiting_.empty() && scoring_.empty()) idle_.notify_all();
  }
  fail_all("the server is shutting down");
  const auto shutting_down = std::make_exception_ptr(std::runtime_error("the server is shutting down"));
  for (auto& j : jobs) j->result.set_exception(shutting_down);
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& r : waiting_) r->push(Event::error("the server is shutting down"));
  waiting_.clear();
  for (auto& j : scoring_) j->result.set_exception(shutting_down);
  scoring_.clear();
  running_count_ = 0;
  idle_.notify_all();
}

void Engine::take_score_jobs(std::vector<std::shared_ptr<ScoreJob>>& jobs) {
  // The first waiting job and the others of its request (they share its fusion), up to a batch.
  // Prompts of different requests are never scored together: a request's logprobs then depend on
  // the request alone, bit for bit (a served teacher's cache equals its live answers).
  const uint64_t group = scoring_.front()->group;
  while (!scoring_.empty() && scoring_.front()->group == group && static_cast<int64_t>(jobs.size()) < limits_.max_batch) {
    jobs.push_back(scoring_.front());
    scoring_.pop_front();
  }
}

void Engine::score_step(std::vector<std::shared_ptr<ScoreJob>>& jobs, std::unique_ptr<PromptScorer>& scorer) {
  try {
    if (!scorer) {
      std::vector<std::vector<int64_t>> prompts;
      int64_t k = 0;
      for (const auto& j : jobs) {
        prompts.push_back(j->ids);
        k = std::max(k, j->k);
      }
      scorer = std::make_unique<PromptScorer>(set_, jobs.front()->fusion, std::move(prompts), k);
    }
    scorer->advance(limits_.prefill_tokens > 0 ? limits_.prefill_tokens : std::numeric_limits<int64_t>::max() / 2);
    if (scorer->done()) {
      std::vector<PromptLogprobs> results = scorer->result();
      for (size_t i = 0; i < jobs.size(); ++i) jobs[i]->result.set_value(std::move(results[i]));
    }
  } catch (...) {
    for (auto& j : jobs) j->result.set_exception(std::current_exception());
    scorer.reset();
  }
  if (!scorer || scorer->done()) {
    jobs.clear();
    scorer.reset();
  }
}

void Engine::prefill() {
  std::optional<BatchLogits> joined;
  try {
    if (!batch_->admitting()) {
      // Each joiner enters only the models its fusion reads.
      std::vector<std::vector<int64_t>> prompts;
      std::vector<std::vector<size_t>> uses;
      for (const auto& r : joining_) {
        prompts.push_back(r->params().prompt);
        uses.push_back(fusion_view(set_, r->params().fusion).inputs);
      }
      batch_->begin_admit(prompts, pad_id_, uses);
    }
    joined = batch_->prefill(limits_.prefill_tokens);
  } catch (const std::exception& e) {
    // The running rows are untouched (the joiners' caches were never appended): only joiners fail.
    batch_->abort_admit();
    for (auto& r : joining_) r->push(Event::error(e.what()));
    joining_.clear();
    return;
  }
  if (!joined) return;
  const size_t first = rows_.size();
  for (auto& r : joining_) {
    Row row;
    row.request = r;
    for (const auto& s : r->params().stop) row.hold_back = std::max(row.hold_back, s.empty() ? 0 : s.size() - 1);
    rows_.push_back(std::move(row));
    metrics_.tokens(static_cast<int64_t>(r->params().prompt.size()), 0);
  }
  joining_.clear();
  sample_and_emit(*joined, first, /*first_step=*/true);
}

void Engine::report_batch_counters() {
  const auto& run = batch_->tokens_run();
  auto models = set_.run();
  tokens_run_.resize(run.size(), 0);
  for (size_t i = 0; i < run.size(); ++i) {
    if (run[i] > tokens_run_[i]) metrics_.model_tokens(models[i]->name, run[i] - tokens_run_[i]);
    tokens_run_[i] = run[i];
  }
  const ContinuousBatch::ForwardSeconds& now = batch_->forward_seconds();
  for (auto [phase, told, total] : {std::make_tuple("prefill", &forward_told_.prefill, now.prefill),
                                    std::make_tuple("decode_layers", &forward_told_.layers, now.layers),
                                    std::make_tuple("decode_head", &forward_told_.head, now.head)}) {
    if (total > *told) metrics_.phase_seconds(phase, total - *told);
    *told = total;
  }
}

void Engine::step() {
  std::vector<int64_t> tokens;
  for (const auto& row : rows_) tokens.push_back(row.pending);
  sample_and_emit(batch_->step(tokens), 0, /*first_step=*/false);
}

void Engine::sample_and_emit(const BatchLogits& logits, size_t first_row, bool first_step) {
  const auto start = Clock::now();
  double emit_seconds = 0;  // of the time since start, emit()'s share
  // Rows with the same fusion are fused in one call.
  std::map<std::string, std::vector<int64_t>> groups;
  std::map<size_t, std::vector<int64_t>> leaves;  // per model: routed rows that stop running it
  for (int64_t j = 0; j < logits.rows; ++j) groups[rows_[first_row + j].request->params().fusion.key()].push_back(j);
  for (const auto& [key, members] : groups) emit_seconds += sample_group(logits, first_row, members, first_step, leaves);
  for (const auto& [model, rows] : leaves) batch_->leave(model, rows);
  metrics_.phase_seconds("sample", seconds_since(start) - emit_seconds);
  metrics_.phase_seconds("emit", emit_seconds);
}

double Engine::sample_group(const BatchLogits& logits, size_t first_row, const std::vector<int64_t>& members,
                            bool first_step, std::map<size_t, std::vector<int64_t>>& leaves) {
  const RequestFusion& fusion = rows_[first_row + members[0]].request->params().fusion;
  const FusionView view = fusion_view(set_, fusion);
  const bool routed = fusion.spec.strategy == "dynamic" && fusion.spec.multi_expert == "route" && view.set.experts.size() > 1;
  std::vector<at::Tensor> rows(logits.logits.size());
  // A routed row runs only its own expert after its first token; the experts it left read as the
  // base (no shift), which route's criterion never reads for that row (its α and fused logits come
  // from its own expert's terms alone).
  for (size_t k = 0; k < view.inputs.size(); ++k) {
    const size_t i = view.inputs[k];
    rows[i] = routed && k >= FusedOrder::kFirstExpert ? logits.of_or(i, members, view.inputs[FusedOrder::kBase])
                                                      : logits.of(i, members);
  }
  at::Tensor route;
  if (routed && !first_step) {
    std::vector<int64_t> chosen;
    for (int64_t j : members) chosen.push_back(rows_[first_row + j].route);
    route = at::tensor(chosen, at::TensorOptions().dtype(at::kLong));
  }
  const FusedRows fused = fuse_view(view, rows, &route);
  if (routed && first_step) {
    const at::Tensor chosen = route.to(at::kCPU);
    for (size_t m = 0; m < members.size(); ++m) {
      const int64_t expert = chosen[m].item<int64_t>();
      rows_[first_row + members[m]].route = expert;
      for (size_t e = 0; e < view.set.experts.size(); ++e)
        if (static_cast<int64_t>(e) != expert)
          leaves[view.inputs[FusedOrder::kFirstExpert + e]].push_back(static_cast<int64_t>(first_row) + members[m]);
    }
  }
  double emit_seconds = 0;
  at::Tensor greedy;  // the group's greedy tokens, found in one pass once a member needs them
  for (size_t m = 0; m < members.size(); ++m) {
    Row& row = rows_[first_row + members[m]];
    auto [token, lp] = pick_token(row, fused.logits, static_cast<int64_t>(m), greedy);
    const auto emitting = Clock::now();
    emit(row, token, std::move(lp));
    emit_seconds += seconds_since(emitting);
  }
  return emit_seconds;
}

std::pair<int64_t, std::optional<TokenLogprobs>> Engine::pick_token(Row& row, const at::Tensor& fused, int64_t m,
                                                                    at::Tensor& greedy) {
  const GenerationParams& p = row.request->params();
  const at::Tensor z = fused.narrow(0, m, 1);
  if (p.sampling.temperature == 0.0 && !greedy.defined()) greedy = greedy_tokens(fused);
  const int64_t token = p.sampling.temperature == 0.0 ? greedy.data_ptr<int64_t>()[m]
                                                      : sample_tokens(z, p.sampling, {0}, row.step).item<int64_t>();
  std::optional<TokenLogprobs> lp;
  if (p.top_logprobs >= 0) {
    const at::Tensor l = at::log_softmax(z.squeeze(0).to(at::kFloat), -1).to(at::kCPU);
    lp = TokenLogprobs{l[token].item<double>(), {}};
    if (p.top_logprobs > 0) {
      auto [values, ids] = l.topk(std::min<int64_t>(p.top_logprobs, l.size(0)));
      for (int64_t i = 0; i < values.size(0); ++i) lp->top.emplace_back(ids[i].item<int64_t>(), values[i].item<double>());
    }
  }
  return {token, std::move(lp)};
}

void Engine::emit(Row& row, int64_t token, std::optional<TokenLogprobs> logprobs) {
  const GenerationParams& p = row.request->params();
  const auto now = Clock::now();
  if (row.step == 0)
    metrics_.time_to_first_token(std::chrono::duration<double>(now - row.request->arrival).count());
  else
    metrics_.inter_token(std::chrono::duration<double>(now - row.last_token).count());
  row.last_token = now;
  ++row.step;
  if (!p.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end()) {
    if (logprobs) {
      Event event{Event::Kind::kToken, token, {}, std::move(logprobs), {}, 0};
      event.stop_token = true;
      row.request->push(std::move(event));
    }
    finish(row, "stop");
    return;
  }
  row.ids.push_back(token);
  metrics_.tokens(0, 1);
  const std::string text = tokenizer_.decode(row.ids, /*skip_special_tokens=*/true);
  const size_t stop_at = first_stop(text, p.stop);
  Event event{Event::Kind::kToken, token, {}, std::move(logprobs), {}, 0};
  if (stop_at != std::string::npos) {
    if (stop_at > row.emitted) event.text = text.substr(row.emitted, stop_at - row.emitted);
    row.emitted = std::max(row.emitted, stop_at);
    row.request->push(std::move(event));
    finish(row, "stop");
    return;
  }
  // Hold back what a stop string could still be completing, and a character whose bytes are not all
  // here yet (decoded as U+FFFD until they are).
  size_t visible = text.size() - std::min(text.size(), row.hold_back);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0) visible = std::min(visible, text.size() - 3);
  visible = utf8_boundary(text, visible);
  if (visible > row.emitted) {
    event.text = text.substr(row.emitted, visible - row.emitted);
    row.emitted = visible;
  }
  row.request->push(std::move(event));
  if (static_cast<int64_t>(row.ids.size()) >= p.max_tokens) {
    finish(row, "length");
    return;
  }
  row.pending = token;
}

void Engine::finish(Row& row, const std::string& reason) {
  Event event{Event::Kind::kFinish, -1, {}, {}, reason, static_cast<int64_t>(row.ids.size())};
  // Whatever was held back is final now, up to the first stop string (where a stop already cut the
  // text, `emitted` is at the cut and nothing follows).
  const std::string text = tokenizer_.decode(row.ids, true);
  const size_t end = std::min(text.size(), first_stop(text, row.request->params().stop));
  if (end > row.emitted) event.text = text.substr(row.emitted, end - row.emitted);
  row.done = true;
  metrics_.request_latency(seconds_since(row.request->arrival));
  row.request->push(std::move(event));
}

void Engine::drop_finished() {
  std::vector<int64_t> keep;
  for (size_t i = 0; i < rows_.size(); ++i)
    if (!rows_[i].done && !rows_[i].request->cancelled()) keep.push_back(static_cast<int64_t>(i));
  if (keep.size() == rows_.size()) return;
  batch_->keep(keep);
  std::vector<Row> kept;
  for (int64_t i : keep) kept.push_back(std::move(rows_[i]));
  rows_ = std::move(kept);
}

void Engine::fail_all(const std::string& message) {
  for (auto& row : rows_)
    if (!row.done) row.request->push(Event::error(message));
  for (auto& r : joining_) r->push(Event::error(message));
  rows_.clear();
  joining_.clear();
  report_batch_counters();
  batch_ = std::make_unique<ContinuousBatch>(set_);
  tokens_run_.assign(tokens_run_.size(), 0);
  forward_told_ = {};
}

}  // namespace lf::serve
